"""exact_log_z and log_prob against the numpy enumeration of tests/reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import capsjax
from capsjax import Routing
from tests import reference


def _params(seed, nv=3, dv=2, nh=2, dh=3, scale=1.0):
  rng = np.random.default_rng(seed)
  return {"W": scale * rng.normal(size=(nv, nh, dh, dv)),
          "a": rng.normal(size=(nv, dv)), "b": rng.normal(size=(nh, dh))}


@pytest.mark.parametrize("r,temperature,rule", [
    (1, None, "sabour"), (3, None, "sabour"), (3, 3.0, "sabour"),
    (3, 0.2, "cosine"), (3, None, "normalized")])
@pytest.mark.parametrize("chunk_size", [5, 4096])  # 5: a masked last chunk
def test_exact_log_z_matches_enumeration(r, temperature, rule, chunk_size):
  with jax.enable_x64(True):
    params = _params(r)
    t = 1.0 if temperature is None else temperature
    states, log_p = reference.routed_log_probs(params, r, temperature=t,
                                               rule=rule)
    jparams = jax.tree.map(jnp.asarray, params)
    routing = (Routing(r, rule=rule) if temperature is None else
               Routing(r, temperature=temperature, rule=rule))
    log_z = capsjax.exact_log_z(jparams, routing, chunk_size=chunk_size)
    got = capsjax.log_prob(jparams, jnp.asarray(states), routing, log_z)
    np.testing.assert_allclose(got, log_p, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(jax.nn.logsumexp(got), 0.0, atol=1e-10)


def test_unrouted_log_z_is_the_rbm_with_scaled_weights():
  """r = 1: Z of the RBM whose weights are W / Nh, summed over v and h."""
  with jax.enable_x64(True):
    params = _params(7, nv=2, dv=2, nh=2, dh=2)
    nh = 2
    vs = reference.binary_states((2, 2))
    hs = reference.binary_states((2, 2))
    c = np.full((2, 2), 1.0 / nh)
    neg_e = np.array([[-reference.energy(params, v, h, c) for h in hs]
                      for v in vs])
    expected = np.log(np.sum(np.exp(neg_e)))
    got = capsjax.exact_log_z(jax.tree.map(jnp.asarray, params), Routing(1))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_too_many_neurons_is_refused():
  params = {"W": jnp.zeros((5, 2, 2, 5)), "a": jnp.zeros((5, 5)),
            "b": jnp.zeros((2, 2))}
  with pytest.raises(ValueError, match=r"2\^25 states, more than 2\^24"):
    capsjax.exact_log_z(params, Routing(3))


def test_temperature_changes_the_model():
  """The reference at T = 3 is not the one at T = 1: the parametrized test
  above would fail if the temperature did not reach exact_log_z/log_prob."""
  with jax.enable_x64(True):
    params = _params(3)
    _, log_p1 = reference.routed_log_probs(params, 3)
    _, log_p3 = reference.routed_log_probs(params, 3, temperature=3.0)
    assert np.max(np.abs(log_p1 - log_p3)) > 1e-2


def test_gaussian_routed_log_z_is_refused():
  """Enumerating v needs binary units: a routed Gaussian layer is refused
  with a message that names the unit type, not silently summed."""
  params = jax.tree.map(jnp.asarray, _params(0))
  with pytest.raises(ValueError, match=r"supports Bernoulli visible units "
                                       r"only; got visible='gaussian'"):
    capsjax.exact_log_z(params, Routing(3), visible="gaussian")
  with pytest.raises(ValueError, match="visible must be one of"):
    capsjax.exact_log_z(params, Routing(3), visible="binary")
