"""Exact log Z by enumerating hidden states, and reverse AIS (RAISE),
against enumeration (float64)."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import capsjax

R1 = capsjax.Routing(1)
R3 = capsjax.Routing(3)


def _params(key, nv, dv, nh, dh, std, bias_std=0.5):
  k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
  params = capsjax.init_params(k1, nv, dv, nh, dh, weight_std=std,
                               dtype=jnp.float64)
  params["a"] = bias_std * jax.random.normal(k2, params["a"].shape)
  params["b"] = bias_std * jax.random.normal(k3, params["b"].shape)
  return params


def _states(n, shape):
  return np.array(list(itertools.product([0.0, 1.0], repeat=n))).reshape(
      (-1,) + shape)


def test_hidden_enumeration_equals_visible_enumeration():
  with jax.enable_x64(True):
    params = _params(0, 3, 4, 2, 3, std=1.0)
    by_v = capsjax.exact_log_z(params, R1, over="visible")
    by_h = capsjax.exact_log_z(params, R1, over="hidden")
    np.testing.assert_allclose(by_h, by_v, rtol=1e-12)
    assert capsjax.exact_log_z(params, R1) == by_h  # auto: 6 hidden < 12


def test_hidden_enumeration_of_a_gaussian_layer_matches_quadrature():
  """Z = integral over v of exp(-F(v)), on a fine grid (2 Gaussian units)."""
  with jax.enable_x64(True):
    params = _params(1, 1, 2, 2, 2, std=0.8)
    log_z = capsjax.exact_log_z(params, R1, visible="gaussian")
    grid = np.linspace(-12.0, 12.0, 1201)
    step = grid[1] - grid[0]
    v = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)
    c = jnp.full((1, 2), 0.5)
    neg_f = -capsjax.free_energy(params, jnp.asarray(v), c, visible="gaussian")
    quadrature = jax.nn.logsumexp(neg_f) + 2 * np.log(step)
    np.testing.assert_allclose(log_z, quadrature, rtol=1e-9)


def test_hidden_enumeration_refuses_routing_and_large_layers():
  params = capsjax.init_params(jax.random.key(0), 3, 4, 2, 3)
  with pytest.raises(ValueError, match="unrouted layers only"):
    capsjax.exact_log_z(params, R3, over="hidden")
  with pytest.raises(ValueError, match="2\\^25 states"):
    capsjax.exact_log_z(capsjax.init_params(jax.random.key(0), 1, 2, 5, 5),
                        R1, over="hidden")
  with pytest.raises(ValueError, match="Bernoulli"):
    capsjax.exact_log_z(params, R3, visible="gaussian")


@pytest.fixture(scope="module")
def tiny_rbm():
  """A 4-visible, 3-hidden unrouted layer, its base biases and, by
  enumeration, the density q of forward AIS's annealing model with betas
  (0, 1): v_0 from the base model, then one Gibbs step of the model."""
  with jax.enable_x64(True):
    params = _params(2, 2, 2, 1, 3, std=2.0)
    base = jnp.array([[0.3, -0.2], [0.1, 0.4]])
    v = _states(4, (2, 2))
    h = _states(3, (1, 3))
    c = jnp.ones((2, 1))
    ph = np.asarray(capsjax.hidden_probs(params, jnp.asarray(v), c))
    pv = np.asarray(capsjax.visible_probs(params, jnp.asarray(h), c))
    h_given_v = np.prod(np.where(h[None] == 1, ph[:, None], 1 - ph[:, None]),
                        axis=(2, 3))
    v_given_h = np.prod(np.where(v[None] == 1, pv[:, None], 1 - pv[:, None]),
                        axis=(2, 3))
    base_p = jax.nn.sigmoid(np.asarray(base))
    p0 = np.prod(np.where(v == 1, base_p, 1 - base_p), axis=(1, 2))
    return params, base, v, p0 @ (h_given_v @ v_given_h)


def test_reverse_ais_is_unbiased_for_the_annealing_model(tiny_rbm):
  params, base, v, q = tiny_rbm
  n = 20000
  raise_ = jax.jit(functools.partial(capsjax.reverse_ais, routing=R1,
                                     num_betas=2))
  with jax.enable_x64(True):
    for i in (0, 6, 15):
      x = jnp.broadcast_to(jnp.asarray(v[i]), (n, 2, 2))
      w = np.exp(np.asarray(raise_(jax.random.key(i), params, x,
                                   base_bias=base).log_prob))
      stderr = np.std(w) / np.sqrt(n)
      assert abs(np.mean(w) - q[i]) < 4 * stderr, (i, np.mean(w), q[i])


def test_reverse_ais_of_a_routed_layer_is_close_and_conservative():
  """A long schedule: per example, log mean exp of 50 chains is within
  0.25 nats of the exact log p(v); the test-set mean of the log estimates
  is below the exact mean (Jensen) and within 0.2 nats of it."""
  with jax.enable_x64(True):
    params = _params(3, 3, 2, 2, 2, std=1.5, bias_std=0.0)
    v = jnp.asarray(_states(6, (3, 2)))
    exact = np.asarray(capsjax.log_prob(params, v, R3,
                                        capsjax.exact_log_z(params, R3)))
    result = jax.jit(functools.partial(capsjax.reverse_ais, routing=R3,
                                       num_betas=300))(
        jax.random.key(0), params, jnp.repeat(v, 50, axis=0))
    est = np.asarray(result.log_prob).reshape(64, 50)
    per_example = jax.nn.logsumexp(est, axis=1) - np.log(50)
    np.testing.assert_allclose(per_example, exact, atol=0.25)
    assert exact.mean() - 0.2 < est.mean() < exact.mean()
    assert 0.5 < float(result.acceptance_rate) < 1.0  # MH is exercised
