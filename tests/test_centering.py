"""Centering: the mapped gradient is the centered parameterization's step
(checked by autodiff of the centered free energy, written here from its
definition), the offsets are a sliding average (a plain loop), and the
training step composes them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import capsjax
from capsjax import Routing
from tests import reference

NV, DV, NH, DH = 3, 3, 2, 3


def _params(seed):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"W": jax.random.normal(k[0], (NV, NH, DH, DV)),
          "a": 0.5 * jax.random.normal(k[1], (NV, DV)),
          "b": 0.5 * jax.random.normal(k[2], (NH, DH))}


def _offsets(seed):
  k = jax.random.split(jax.random.key(seed + 100), 2)
  return capsjax.Offsets(jax.random.uniform(k[0], (NV, DV)),
                         jax.random.uniform(k[1], (NH, DH)))


def _centered_free_energy(theta, v, offsets, kappa):
  """F_c(v) of E_c = -kappa (h - lam)^T U (v - mu) - a_c.(v - mu)
  - b_c.(h - lam), summed out over binary h."""
  mu, lam = offsets
  x = theta["b"] + kappa * jnp.einsum("ijkl,...il->...jk", theta["U"], v - mu)
  return (-jnp.sum(theta["a"] * (v - mu), axis=(-1, -2))
          + jnp.sum(lam * x, axis=(-1, -2))
          - jnp.sum(jax.nn.softplus(x), axis=(-1, -2)))


def _to_centered(params, offsets, scale):
  mu, lam = offsets
  kappa = scale / NH
  u = params["W"] / scale
  return {"U": u,
          "a": params["a"] + kappa * jnp.einsum("ijkl,jk->il", u, lam),
          "b": params["b"] + kappa * jnp.einsum("ijkl,il->jk", u, mu)}


def _from_centered(theta, offsets, scale):
  mu, lam = offsets
  kappa = scale / NH
  u = theta["U"]
  return {"W": u * scale,
          "a": theta["a"] - kappa * jnp.einsum("ijkl,jk->il", u, lam),
          "b": theta["b"] - kappa * jnp.einsum("ijkl,il->jk", u, mu)}


@pytest.mark.parametrize("scale", [1.0, float(NH), 5.0])
def test_centered_step_is_the_centered_parameterizations_step(scale):
  jax.config.update("jax_enable_x64", True)
  try:
    params = jax.tree.map(lambda x: x.astype(jnp.float64), _params(0))
    params["W"] = params["W"] * scale
    offsets = jax.tree.map(lambda x: x.astype(jnp.float64), _offsets(0))
    data = jnp.asarray(reference.bars_and_stripes(3), jnp.float64)
    model = jax.random.bernoulli(jax.random.key(1), 0.4,
                                 data.shape).astype(jnp.float64)
    c = jnp.full((NV, NH), 1.0 / NH)

    def ordinary(p):  # the CD objective of the ordinary parameters
      return (jnp.mean(capsjax.free_energy(p, data, c))
              - jnp.mean(capsjax.free_energy(p, model, c)))

    # The ordinary step of an effective_weights(sgd, scale) optimizer.
    eta = 0.3
    g = capsjax.centered_gradient(jax.grad(ordinary)(params), offsets,
                                  weight_scale=scale)
    step = optax.apply_updates(params, jax.tree.map(
        lambda x: -eta * x, {**g, "W": g["W"] * scale ** 2}))

    kappa = scale / NH
    theta = _to_centered(params, offsets, scale)
    gap = (_centered_free_energy(theta, data, offsets, kappa)
           - capsjax.free_energy(params, data, c))  # one model: a constant
    np.testing.assert_allclose(gap, jnp.full_like(gap, gap[0]), atol=1e-10)

    def centered(t):
      return (jnp.mean(_centered_free_energy(t, data, offsets, kappa))
              - jnp.mean(_centered_free_energy(t, model, offsets, kappa)))

    theta = jax.tree.map(lambda t, d: t - eta * d, theta,
                         jax.grad(centered)(theta))
    want = _from_centered(theta, offsets, scale)
    for name in ("W", "a", "b"):
      np.testing.assert_allclose(step[name], want[name], rtol=1e-10,
                                 atol=1e-12, err_msg=name)
  finally:
    jax.config.update("jax_enable_x64", False)


def test_zero_offsets_leave_the_weight_gradient_and_center_nothing():
  grads = _params(3)
  zero = capsjax.Offsets(jnp.zeros((NV, DV)), jnp.zeros((NH, DH)))
  out = capsjax.centered_gradient(grads, zero, weight_scale=2.0)
  for name in ("W", "a", "b"):
    np.testing.assert_allclose(out[name], grads[name], rtol=1e-6)


def test_offsets_are_a_sliding_average_of_the_batch_means():
  params = _params(4)
  offsets = capsjax.init_offsets(params)
  rate = 0.25
  want_v, want_h = np.full((NV, DV), 0.5), np.full((NH, DH), 0.5)
  c = jnp.full((NV, NH), 1.0 / NH)
  for i in range(4):
    v = jax.random.bernoulli(jax.random.key(i), 0.3, (6, NV, DV)).astype(
        jnp.float32)
    offsets = capsjax.update_offsets(offsets, params, v, rate)
    p = np.asarray(capsjax.hidden_probs(params, v, c))
    want_v = (1 - rate) * want_v + rate * np.asarray(v).mean(0)
    want_h = (1 - rate) * want_h + rate * p.mean(0)
  np.testing.assert_allclose(offsets.visible, want_v, rtol=1e-5)
  np.testing.assert_allclose(offsets.hidden, want_h, rtol=1e-5)


def test_init_offsets_at_the_data_means():
  data = jnp.asarray(reference.bars_and_stripes(3), jnp.float32)
  offsets = capsjax.init_offsets(_params(0), data)
  np.testing.assert_allclose(offsets.visible, np.asarray(data).mean(0))
  np.testing.assert_array_equal(offsets.hidden, 0.5)


def test_train_step_takes_the_centered_step_and_moves_the_offsets():
  params = _params(5)
  data = jnp.asarray(reference.bars_and_stripes(3), jnp.float32)
  kernel = capsjax.gibbs(Routing(num_iterations=1))
  centering = capsjax.Centering(rate=0.1, weight_scale=float(NH))
  opt = capsjax.effective_weights(optax.sgd(0.05, momentum=0.5), float(NH))
  state = capsjax.init_train_state(
      params, opt, chain=kernel.init(params, data),
      offsets=capsjax.init_offsets(params, data))
  key = jax.random.key(7)
  step = jax.jit(functools.partial(capsjax.train_step, optimizer=opt,
                                   kernel=kernel, k=2, centering=centering))
  new, _ = step(key, state, data)

  grads, info = capsjax.cd_gradient(jax.random.fold_in(key, 0), params, data,
                                    kernel=kernel, k=2, chain=state.chain)
  grads = capsjax.centered_gradient(grads, state.offsets,
                                    weight_scale=float(NH))
  updates, _ = opt.update(grads, state.opt_state, params)
  want = optax.apply_updates(params, updates)
  for name in ("W", "a", "b"):
    np.testing.assert_allclose(new.params[name], want[name], rtol=1e-5,
                               atol=1e-6)
  want_offsets = capsjax.update_offsets(state.offsets, params, data, 0.1)
  np.testing.assert_allclose(new.offsets.hidden, want_offsets.hidden,
                             rtol=1e-6)
  np.testing.assert_allclose(new.chain.v, info.chain.v)


def test_centering_refuses_routed_and_gaussian_layers_and_missing_offsets():
  params = _params(6)
  data = jnp.asarray(reference.bars_and_stripes(3), jnp.float32)
  opt = optax.sgd(0.1)
  with_offsets = capsjax.init_train_state(
      params, opt, offsets=capsjax.init_offsets(params))
  centering = capsjax.Centering()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="unrouted layer"):
    capsjax.train_step(key, with_offsets, data, optimizer=opt,
                       kernel=capsjax.gibbs(Routing(3)), centering=centering)
  with pytest.raises(ValueError, match="Bernoulli"):
    capsjax.train_step(key, with_offsets, data, optimizer=opt,
                       kernel=capsjax.gibbs(Routing(1), visible="gaussian"),
                       centering=centering)
  with pytest.raises(ValueError, match="needs state.offsets"):
    capsjax.train_step(key, capsjax.init_train_state(params, opt), data,
                       optimizer=opt, kernel=capsjax.gibbs(Routing(1)),
                       centering=centering)
  with pytest.raises(ValueError, match="rate must be in"):
    capsjax.Centering(rate=0.0)
