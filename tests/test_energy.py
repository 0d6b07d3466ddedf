"""Energy, free energy and conditionals against enumeration of the states."""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

import capsjax
from tests import reference

NV, DV, NH, DH = 3, 2, 2, 3  # 6 visible, 6 hidden neurons: 64 states each


def _params(seed, scale=1.0, dtype=jnp.float64):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"W": scale * jax.random.normal(k[0], (NV, NH, DH, DV), dtype),
          "a": jax.random.normal(k[1], (NV, DV), dtype),
          "b": jax.random.normal(k[2], (NH, DH), dtype)}


def _coefficients(seed, batch=()):
  logits = 2 * jax.random.normal(jax.random.key(seed), batch + (NV, NH),
                                 jnp.float64)
  return jax.nn.softmax(logits, axis=-1)


def _binary(seed, shape):
  return jax.random.bernoulli(jax.random.key(seed), 0.5, shape).astype(
      jnp.float64)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_energy_matches_explicit_sums(visible):
  params = _params(0)
  c = _coefficients(1, (5,))
  v = (_binary(2, (5, NV, DV)) if visible == "bernoulli" else
       jax.random.normal(jax.random.key(2), (5, NV, DV), jnp.float64))
  h = _binary(3, (5, NH, DH))
  got = capsjax.energy(params, v, h, c, visible=visible)
  expected = [reference.energy(params, np.asarray(v[n]), np.asarray(h[n]),
                               np.asarray(c[n]), visible) for n in range(5)]
  np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_free_energy_is_log_sum_over_hidden(visible):
  params = _params(4)
  c = _coefficients(5, (4,))
  v = (_binary(6, (4, NV, DV)) if visible == "bernoulli" else
       jax.random.normal(jax.random.key(6), (4, NV, DV), jnp.float64))
  got = capsjax.free_energy(params, v, c, visible=visible)
  expected = [reference.free_energy(params, np.asarray(v[n]),
                                    np.asarray(c[n]), visible)
              for n in range(4)]
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def _boltzmann(params, c, visible_states, hidden_states):
  """exp(-E) on the grid of all (v, h), by the reference energy."""
  neg_e = np.array([[-reference.energy(params, v, h, c) for h in hidden_states]
                    for v in visible_states])
  return np.exp(neg_e - neg_e.max())


def test_conditionals_are_ratios_of_boltzmann_weights():
  params = _params(7)
  c = np.asarray(_coefficients(8))
  vs = reference.binary_states((NV, DV))
  hs = reference.binary_states((NH, DH))
  w = _boltzmann(params, c, vs, hs)  # (num v, num h)

  # p(h_jk = 1 | v) = sum_{h: h_jk = 1} w(v, h) / sum_h w(v, h)
  on_h = hs.reshape(len(hs), -1)
  expected_h = (w @ on_h) / w.sum(1, keepdims=True)
  got_h = capsjax.hidden_probs(params, jnp.asarray(vs), jnp.asarray(c))
  np.testing.assert_allclose(got_h.reshape(len(vs), -1), expected_h,
                             rtol=1e-10)

  on_v = vs.reshape(len(vs), -1)
  expected_v = (w.T @ on_v) / w.sum(0)[:, None]
  got_v = capsjax.visible_probs(params, jnp.asarray(hs), jnp.asarray(c))
  np.testing.assert_allclose(got_v.reshape(len(hs), -1), expected_v,
                             rtol=1e-10)


def test_log_partition_given_hidden_bernoulli():
  params = _params(9)
  c = np.asarray(_coefficients(10))
  vs = reference.binary_states((NV, DV))
  h = np.asarray(_binary(11, (NH, DH)))
  neg_e = np.array([-reference.energy(params, v, h, c) for v in vs])
  expected = neg_e.max() + np.log(np.sum(np.exp(neg_e - neg_e.max())))
  got = capsjax.log_partition_given_hidden(params, jnp.asarray(h),
                                           jnp.asarray(c))
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_gaussian_conditional_is_the_energy_ratio():
  """log p(v|h) - log p(v'|h) = E(v', h) - E(v, h) for the stated Normal."""
  params = _params(12)
  c = np.asarray(_coefficients(13))
  h = np.asarray(_binary(14, (NH, DH)))
  mean = np.asarray(capsjax.visible_probs(params, jnp.asarray(h),
                                          jnp.asarray(c), visible="gaussian"))
  rng = np.random.default_rng(0)
  for _ in range(5):
    v, v2 = rng.normal(size=(2, NV, DV))
    log_ratio = -0.5 * np.sum((v - mean) ** 2) + 0.5 * np.sum((v2 - mean) ** 2)
    e_diff = (reference.energy(params, v2, h, c, "gaussian") -
              reference.energy(params, v, h, c, "gaussian"))
    np.testing.assert_allclose(log_ratio, e_diff, rtol=1e-10)
  # And log Z_h is the Gaussian integral up to the dropped constant.
  got = capsjax.log_partition_given_hidden(params, jnp.asarray(h),
                                           jnp.asarray(c), visible="gaussian")
  v = rng.normal(size=(NV, DV))
  log_density = (-0.5 * np.sum((v - mean) ** 2)
                 - 0.5 * NV * DV * np.log(2 * np.pi))
  expected = (-reference.energy(params, v, h, c, "gaussian") - log_density
              - 0.5 * NV * DV * np.log(2 * np.pi))
  np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_check_grads_energy_and_free_energy(visible):
  params = _params(15, 0.5)
  c = _coefficients(16, (3,))
  v = jax.random.uniform(jax.random.key(17), (3, NV, DV), jnp.float64)
  h = jax.random.uniform(jax.random.key(18), (3, NH, DH), jnp.float64)
  e = jax.jit(lambda p, v, h, c: capsjax.energy(p, v, h, c, visible=visible))
  f = jax.jit(lambda p, v, c: capsjax.free_energy(p, v, c, visible=visible))
  check_grads(e, (params, v, h, c), order=2, modes=("fwd", "rev"))
  check_grads(f, (params, v, c), order=2, modes=("fwd", "rev"))


def test_routed_free_energy_check_grads():
  params = _params(19, 0.7)
  v = _binary(20, (2, NV, DV))
  f = jax.jit(lambda p: capsjax.routed_free_energy(p, v,
                                                    capsjax.Routing(3)))
  check_grads(f, (params,), order=1, modes=("fwd", "rev"))


def test_batch_vmap_and_jit_agree():
  params = _params(21)
  c = _coefficients(22, (6,))
  v = _binary(23, (6, NV, DV))
  h = _binary(24, (6, NH, DH))
  batched = capsjax.energy(params, v, h, c)
  mapped = jax.vmap(capsjax.energy, in_axes=(None, 0, 0, 0))(params, v, h, c)
  jitted = jax.jit(capsjax.energy)(params, v, h, c)
  np.testing.assert_allclose(mapped, batched, rtol=1e-12)
  np.testing.assert_allclose(jitted, batched, rtol=1e-12)
  # Unbatched coefficients broadcast over the batch.
  np.testing.assert_allclose(
      capsjax.free_energy(params, v, c[0]),
      capsjax.free_energy(params, v, jnp.broadcast_to(c[0], c.shape)),
      rtol=1e-12)


def test_float32_by_default():
  with jax.enable_x64(False):
    params = _params(25, dtype=jnp.float32)
    v = jnp.ones((2, NV, DV), jnp.float32)
    c = jnp.full((2, NV, NH), 1.0 / NH, jnp.float32)
    assert capsjax.free_energy(params, v, c).dtype == jnp.float32
    assert capsjax.hidden_probs(params, v, c).dtype == jnp.float32
