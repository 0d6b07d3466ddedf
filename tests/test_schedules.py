"""Training features of the field-standard recipe (issue 17): learning-rate
schedules, CD-k ramped over training, PCD with any number of chains, and
parallel tempering of the persistent chains, in the runner."""

import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import capsjax
from experiments.runner import config as config_lib
from experiments.runner import errors
from experiments.runner import factories
from experiments.runner import front_ends
from experiments.runner import loop
from tests.test_train import tiny_config


def _factor(config, counts):
  f = factories.lr_factor(config)
  return np.array([float(f(c)) for c in counts])


def test_learning_rate_schedules_against_their_formulas():
  counts = [0, 1, 37, 99, 100]
  base = dict(learning_rate=0.02, num_steps=100)
  linear = tiny_config("", lr_schedule="linear", final_learning_rate=0.0004,
                       **base)
  np.testing.assert_allclose(
      0.02 * _factor(linear, counts),
      [0.02 + (0.0004 - 0.02) * min(c, 100) / 100 for c in counts], rtol=1e-5)
  cosine = tiny_config("", lr_schedule="cosine", final_learning_rate=0.002,
                       **base)
  alpha = 0.1
  np.testing.assert_allclose(
      _factor(cosine, counts),
      [(1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(c, 100) / 100)) + alpha
       for c in counts], rtol=1e-5)
  step = tiny_config("", lr_schedule="step", lr_decay_every_steps=30,
                     lr_decay_factor=0.5, **base)
  np.testing.assert_allclose(_factor(step, counts),
                             [0.5 ** (c // 30) for c in counts], rtol=1e-6)
  constant = tiny_config("", **base)
  np.testing.assert_array_equal(_factor(constant, counts), 1.0)


def test_k_ramp_and_the_rate_divided_by_k():
  config = tiny_config("", k=3, k_ramp_every_steps=10, k_ramp_divides_lr=True,
                       lr_schedule="linear", final_learning_rate=0.0,
                       learning_rate=0.01, num_steps=40)
  steps = [0, 9, 10, 19, 20, 35]
  assert [factories.cd_k(config, s) for s in steps] == [1, 1, 2, 2, 3, 3]
  np.testing.assert_allclose(
      _factor(config, steps),
      [(1 - s / 40) / min(3, 1 + s // 10) for s in steps], rtol=1e-5)
  assert factories.cd_k(tiny_config("", k=5), 1000) == 5  # no ramp


def test_the_schedule_scales_each_sgd_update():
  """SGD without momentum: the update of update count n is
  -learning_rate * factor(n) * gradient."""
  config = tiny_config("", optimizer="sgd", momentum_initial=0.0,
                       momentum_final=0.0, weight_decay=0.0,
                       lr_schedule="step", lr_decay_every_steps=2,
                       lr_decay_factor=0.1, learning_rate=0.5)
  opt = factories.base_optimizer(config)
  params = {"W": jnp.ones((2, 1, 1, 1)), "a": jnp.zeros((2, 1)),
            "b": jnp.zeros((1, 1))}
  grads = jax.tree.map(jnp.ones_like, params)
  state = opt.init(params)
  for n, want in enumerate([0.5, 0.5, 0.05, 0.05, 0.005]):
    updates, state = opt.update(grads, state, params)
    np.testing.assert_allclose(updates["W"], -want, rtol=1e-6, err_msg=n)


@pytest.mark.parametrize("overrides, message", [
    (dict(lr_schedule="exp"), "lr_schedule"),
    (dict(lr_schedule="linear", final_learning_rate=1.0),
     "final_learning_rate"),
    (dict(lr_schedule="step"), "lr_decay_every_steps"),
    (dict(k_ramp_every_steps=-1), "k_ramp_every_steps"),
    (dict(num_chains=-3), "num_chains"),
    (dict(tempering_rungs=1), "tempering_rungs"),
    (dict(tempering_rungs=4, tempering_min_beta=1.0), "tempering_min_beta"),
    (dict(tempering_rungs=4, persistent=False), "tempering_rungs"),
    (dict(centering=1.5), "centering"),
    (dict(centering=0.01, num_iterations=3), "centering"),
])
def test_bad_values_are_rejected(overrides, message):
  with pytest.raises(errors.ConfigError, match=f"config.{message}"):
    config_lib.validate_config(tiny_config("", **overrides))


@pytest.mark.slow
def test_tempered_pcd_with_more_chains_than_the_batch_resumes_exactly(
    data_dir, tmp_path):
  """A centered run with a 3-rung ladder of 30 persistent chains (batch
  20), k ramped 1 -> 2 and a linear rate decay: the checkpointed state
  holds the ladder and the offsets, and the run resumed from its
  checkpoint at update 10 (the one at 20 removed) ends bit-identical to
  the uninterrupted run."""
  settings = dict(num_chains=30, tempering_rungs=3, tempering_min_beta=0.6,
                  k=2, k_ramp_every_steps=10, lr_schedule="linear",
                  final_learning_rate=0.001, centering=0.1)
  full = loop.train_and_evaluate(tiny_config(data_dir, **settings),
                                      str(tmp_path / "full"))
  assert full.chain.ladder.v.shape == (3, 30, 16, 49)
  assert full.offsets.hidden.shape == (4, 4)
  assert not np.allclose(full.offsets.hidden, 0.5)  # moved from the start
  np.testing.assert_allclose(
      full.chain.coefficients,
      capsjax.route_visible(full.params, full.chain.v, capsjax.Routing(1)))
  assert factories.tempering_betas(tiny_config(data_dir, **settings)) == (
      0.6, 0.8, 1.0)
  shutil.rmtree(tmp_path / "full" / "checkpoints" / "20")
  resumed = loop.train_and_evaluate(tiny_config(data_dir, **settings),
                                         str(tmp_path / "full"))
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(full),
                  strict=True):
    np.testing.assert_array_equal(x, y)


def test_a_schedule_over_num_steps_fixes_num_steps(data_dir, tmp_path):
  """Linear and cosine decay run over num_steps: a resumed run may not
  change it (it would change the rate of updates already done)."""
  workdir = str(tmp_path / "run")
  config = tiny_config(data_dir, lr_schedule="linear", num_steps=4,
                       checkpoint_every_steps=2)
  loop.train_and_evaluate(config, workdir)
  with pytest.raises(errors.ConfigError, match="num_steps"):
    loop.train_and_evaluate(tiny_config(
        data_dir, lr_schedule="linear", num_steps=6,
        checkpoint_every_steps=2), workdir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_params_ema_against_a_plain_loop():
  """capsjax.params_ema: the wrapped optimizer's updates unchanged, and
  ema_n = d ema_{n-1} + (1 - d) params_n from ema_0 = params_0."""
  decay = 0.8
  inner = capsjax.effective_weights(capsjax.sgd(0.1, momentum=0.5), 4.0)
  opt = capsjax.params_ema(inner, decay)
  rng = np.random.default_rng(0)
  params = {"W": jnp.asarray(rng.normal(size=(2, 3, 1, 2)), jnp.float32),
            "a": jnp.zeros((2, 2)), "b": jnp.ones((3, 1))}
  state, inner_state = opt.init(params), inner.init(params)
  plain, ema = params, jax.tree.map(np.asarray, params)
  for n in range(5):
    grads = jax.tree.map(
        lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    updates, state = opt.update(grads, state, params)
    want, inner_state = inner.update(grads, inner_state, plain)
    for name in params:
      np.testing.assert_array_equal(updates[name], want[name])
    params = plain = optax.apply_updates(params, updates)
    ema = {k: decay * ema[k] + (1 - decay) * np.asarray(params[k])
           for k in ema}
  for name in ema:
    np.testing.assert_allclose(capsjax.ema_params(state)[name], ema[name],
                               rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="decay"):
    capsjax.params_ema(inner, 1.0)


def test_the_moving_average_is_the_reported_model(data_dir, tmp_path):
  config = tiny_config(data_dir, ema_decay=0.9, num_steps=10)
  state = loop.train_and_evaluate(config, str(tmp_path / "run"))
  average = factories.model_params(config, state)
  assert not np.allclose(average["W"], state.params["W"])
  config2, restored = front_ends.load_run(str(tmp_path / "run"))
  for name in ("W", "a", "b"):
    np.testing.assert_array_equal(factories.model_params(config2, restored)
                                  [name], average[name])
  np.testing.assert_array_equal(
      factories.model_params(tiny_config(data_dir), state)["W"],
      state.params["W"])
