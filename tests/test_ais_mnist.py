"""AIS at MNIST scale against an exact log Z (issue 17).

A 784 -> 20 unrouted layer (49 capsules of 4x4 pixels -> 1 capsule of 20
neurons) trained briefly on the embedded MNIST subset has an exact log Z by
enumerating its 2^20 hidden states (`exact_log_z(over="hidden")`). AIS with
the schedule `experiments.evaluate --ais=full` uses (14,500 betas,
piecewise linear, from the data-marginal base model; 25 runs instead of
100 to save time) must agree with it within 0.5 nats.

The suite compiles at LLVM -O0 (conftest.py); these programs run for
seconds, so they are compiled at the default level (-O2), which makes them
about 5x faster here.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import capsjax
from capsjax import data as data_lib
from experiments.runner.evaluation import likelihood

ROUTING = capsjax.Routing(1)
OPTIMIZED = {"xla_backend_optimization_level": 2}


def _optimized(f, *args):
  """`f(*args)` compiled at -O2 (see the module docstring)."""
  return jax.jit(f).lower(*args).compile(compiler_options=OPTIMIZED)(*args)


def _embedded_subset():
  """The embedded subset's images, without TFDS (the package's npz)."""
  with data_lib.SMALL_NPZ.open("rb") as f, np.load(f) as npz:
    return (npz["train_images"].astype(np.float32) / 255.0,
            npz["test_images"].astype(np.float32) / 255.0)


@pytest.mark.slow
def test_ais_matches_hidden_enumeration_at_784_visible_neurons():
  train, test = _embedded_subset()
  train_v = data_lib.images_to_capsules(train, 4)
  test_v = data_lib.binarize(jax.random.key(9), data_lib.images_to_capsules(
      test, 4), "stochastic")
  params = capsjax.init_params(jax.random.key(0), 49, 16, 1, 20,
                               weight_std=0.01, data=train_v)
  kernel = capsjax.gibbs(ROUTING)
  opt = capsjax.sgd(0.05, momentum=0.5)
  state = capsjax.init_train_state(params, opt)
  key = jax.random.key(1)

  def epoch(state, e):  # 50 CD-1 updates of 100 digits
    def update(state, i):
      v = data_lib.binarize(jax.random.fold_in(key, e * 50 + i),
                            jax.lax.dynamic_slice_in_dim(train_v, i * 100, 100),
                            "stochastic")
      return capsjax.train_step(key, state, v, optimizer=opt,
                                kernel=kernel)[0], None
    return jax.lax.scan(update, state, jnp.arange(50))[0]

  train_v = jnp.asarray(train_v)
  step = jax.jit(epoch).lower(state, 0).compile(compiler_options=OPTIMIZED)
  for e in range(10):
    state = step(state, e)
  params = state.params
  assert float(jnp.std(params["W"])) > 0.05  # it learned something

  exact = _optimized(functools.partial(capsjax.exact_log_z, routing=ROUTING,
                                       over="hidden"), params)
  num_betas, _ = likelihood.AIS_PRESETS["full"]
  num_runs = 25
  result = _optimized(
      lambda key, p, base: capsjax.ais(key, p, ROUTING, num_betas=num_betas,
                                       num_runs=num_runs, base_bias=base),
      jax.random.key(2), params, capsjax.base_rate_bias(train_v))
  assert abs(float(result.log_z) - float(exact)) < 0.5, (result.log_z, exact)
  assert float(result.ess) > capsjax.ess_threshold(num_runs)
  log_p = capsjax.log_prob(params, test_v, ROUTING, exact)
  assert -250 < float(jnp.mean(log_p)) < -100  # a trained model, not noise
