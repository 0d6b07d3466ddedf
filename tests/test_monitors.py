"""The routed-training study's runner options and monitors (issue 9):
the AIS likelihood monitor, the routing temperature, clipping and warm-up."""

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
from experiments.runner import monitors
from experiments.runner import state as state_lib
from experiments.runner import visible
from tests.test_train import tiny_config


def _layer(config, w_std, seed=0):
  nv, dv, nh, dh = state_lib.shapes(config, front_ends.get(config))
  rng = np.random.default_rng(seed)
  return {"W": jnp.asarray(w_std * rng.normal(size=(nv, nh, dh, dv)),
                           jnp.float32),
          "a": jnp.asarray(rng.normal(size=(nv, dv)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(nh, dh)), jnp.float32)}


def _binary(seed, n, config):
  nv, dv, _, _ = state_lib.shapes(config, front_ends.get(config))
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.random((n, nv, dv)) < 0.3, jnp.float32)


@pytest.mark.parametrize("r", [1, 3])
def test_ais_monitor_matches_independent_units(tmp_path, r):
  """W = 0: the model is independent Bernoulli(sigmoid(a)) pixels, whose
  log-likelihood numpy computes exactly; AIS from the data marginals must
  find it (routing is uniform too: every vote is 0)."""
  config = tiny_config(str(tmp_path), num_iterations=r,
                       monitor_ais_betas=300)
  train_v, test_v = _binary(1, 200, config), _binary(2, 50, config)
  # Biases near the base model's (the marginals), as after training from
  # the runner's initialization: a short schedule then suffices.
  params = _layer(config, w_std=0.0)
  params["a"] = (capsjax.base_rate_bias(train_v)
                 + 0.1 * params["a"]).astype(jnp.float32)
  out = monitors.make_evaluate(config)(params, train_v, test_v,
                                        jax.random.key(3))
  a = np.asarray(params["a"], np.float64)
  v = np.asarray(test_v, np.float64)
  exact = np.mean(np.sum(v * -np.logaddexp(0, -a)
                         + (1 - v) * -np.logaddexp(0, a), axis=(1, 2)))
  assert float(out["monitor_ais_ess"]) > 0.9 * config.monitor_ais_runs
  error = float(out["monitor_test_log_likelihood"]) - exact
  assert abs(error) < 3 * float(out["monitor_ais_log_z_std"]) + 0.01, error
  assert abs(error) < 0.5
  assert exact <= float(out["monitor_test_log_likelihood_upper_95"])
  np.testing.assert_allclose(out["monitor_ais_acceptance"], 1.0, atol=1e-6)


def test_ais_monitor_withholds_degenerate_estimates(tmp_path):
  """Two betas (plain importance sampling from the marginals) on a strongly
  coupled routed layer: the weights collapse and the estimate is NaN."""
  config = tiny_config(str(tmp_path), num_iterations=3, monitor_ais_betas=2)
  assert config.monitor_ais_runs == 16
  params = _layer(config, w_std=1.0)
  v = _binary(4, 50, config)
  out = monitors.make_evaluate(config)(params, v, v, jax.random.key(5))
  assert float(out["monitor_ais_ess"]) < capsjax.ess_threshold(
      config.monitor_ais_runs)
  assert np.isnan(out["monitor_test_log_likelihood"])
  assert np.isfinite(out["monitor_ais_log_z"])
  assert np.isfinite(out["monitor_test_log_likelihood_upper_95"])


def test_routing_temperature_is_part_of_the_trained_model(tmp_path):
  config = tiny_config(str(tmp_path), num_iterations=3,
                       routing_temperature=1e4)
  grey = np.random.default_rng(6).random((40, 28, 28)).astype(np.float32)
  optimizer = factories.make_optimizer(config)
  state = state_lib.initial_state(config, front_ends.get(config), grey,
                                  optimizer)
  # The temperature is in the routing options, not in the params.
  routing = factories.make_routing(config)
  assert routing == capsjax.Routing(3, temperature=1e4)
  assert factories.make_kernel(config).routing == routing
  assert set(state.params) == {"W", "a", "b"}
  # Checkpoints restore into this structure.
  assert (jax.tree.structure(state_lib.abstract_state(
      config, front_ends.get(config)))
          == jax.tree.structure(state))
  # Training with it moves W.
  step = jax.jit(lambda s, b: capsjax.train_step(
      jax.random.key(7), s, b, optimizer=optimizer,
      **factories.cd_options(config))[0])
  batch = visible.to_capsules(front_ends.get(config), config.binarize,
                              grey[:config.batch_size],
                                jax.random.key(8))
  new = step(step(state, batch), batch)
  assert set(new.params) == {"W", "a", "b"}
  assert not np.allclose(new.params["W"], state.params["W"])
  # Such a temperature routes (nearly) uniformly: c ~ 1/Nh.
  c = capsjax.route_visible(new.params, batch, routing)
  np.testing.assert_allclose(c, 1.0 / config.num_hidden_capsules, atol=1e-3)
  # The same structure at any temperature.
  routed = tiny_config(str(tmp_path), num_iterations=3)
  assert (jax.tree.structure(state_lib.abstract_state(
      routed, front_ends.get(routed))) == jax.tree.structure(state))


def _first_update(config, grads):
  """The first update of the optimizer of the effective weights."""
  opt = factories.base_optimizer(config)
  params = {"W": jnp.zeros(3), "a": jnp.zeros(2), "b": jnp.zeros(2)}
  updates, _ = opt.update(grads, opt.init(params), params)
  return updates


def test_warmup_and_clipping(tmp_path):
  grads = {"W": jnp.array([3.0, 0.0, 4.0]), "a": jnp.zeros(2),
           "b": jnp.zeros(2)}  # global norm 5
  base = tiny_config(str(tmp_path), weight_decay=0.0, learning_rate=0.1)
  plain = _first_update(base, grads)
  np.testing.assert_allclose(plain["W"], -0.1 * grads["W"], rtol=1e-6)
  # Warm-up over 4 updates: the first step is a quarter.
  warm = _first_update(tiny_config(str(tmp_path), weight_decay=0.0,
                                   learning_rate=0.1, warmup_steps=4), grads)
  np.testing.assert_allclose(warm["W"], -0.025 * grads["W"], rtol=1e-6)
  # Clipping to norm 1 divides this gradient by 5, for Adam too (whose
  # first step would otherwise be lr * sign, whatever the scale).
  clipped = _first_update(tiny_config(str(tmp_path), weight_decay=0.0,
                                      learning_rate=0.1, grad_clip_norm=1.0),
                          grads)
  np.testing.assert_allclose(clipped["W"], -0.02 * grads["W"], rtol=1e-6)
  adam_warm = _first_update(
      tiny_config(str(tmp_path), weight_decay=0.0, optimizer="adam",
                  learning_rate=0.1, warmup_steps=10), grads)
  np.testing.assert_allclose(adam_warm["W"], [-0.01, 0.0, -0.01], rtol=1e-4)
  # The runner's optimizer applies it to the effective weights W / Nh
  # (capsjax.effective_weights): their gradient is Nh dL/dW and W moves Nh
  # times their step, Nh^2 times plain SGD's step in all.
  nh = base.num_hidden_capsules
  opt = factories.make_optimizer(base)
  params = {"W": jnp.zeros(3), "a": jnp.zeros(2), "b": jnp.zeros(2)}
  scaled, _ = opt.update(grads, opt.init(params), params)
  np.testing.assert_allclose(scaled["W"], -0.1 * nh ** 2 * grads["W"],
                             rtol=1e-6)
  # The learning rate is found wherever it sits in the state.
  config = tiny_config(str(tmp_path), warmup_steps=4, grad_clip_norm=1.0)
  state = factories.make_optimizer(config).init(grads)
  np.testing.assert_allclose(factories.learning_rate(state),
                             config.learning_rate, rtol=1e-6)
  lowered = optax.tree_utils.tree_set(state, learning_rate=0.5)
  np.testing.assert_allclose(factories.learning_rate(lowered), 0.5)


@pytest.mark.parametrize("field, value, message", [
    ("routing_temperature", 0.0, "must be > 0"),
    ("grad_clip_norm", -1.0, "must be >= 0"),
    ("warmup_steps", -1, "must be an integer >= 0"),
    ("monitor_ais_betas", 1, "0 \\(off\\) or >= 2"),
    ("monitor_ais_runs", 0, "must be an integer >= 1"),
])
def test_bad_study_options_are_rejected(tmp_path, field, value, message):
  with pytest.raises(errors.ConfigError, match=f"config.{field}.*{message}"):
    config_lib.validate_config(tiny_config(str(tmp_path), **{field: value}))


def test_through_routing_needs_exact_chains(tmp_path):
  # capsjax refuses the gradient through routing with the uncorrected
  # alternation: the config says so before any work.
  with pytest.raises(errors.ConfigError,
                     match=r"config.through_routing = True: .*config.mh"):
    config_lib.validate_config(tiny_config(
        str(tmp_path), num_iterations=3, through_routing=True))
  for ok in (dict(num_iterations=3, mh=True), dict(num_iterations=1)):
    config_lib.validate_config(tiny_config(str(tmp_path), through_routing=True,
                                          **ok))
