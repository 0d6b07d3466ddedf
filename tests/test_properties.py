"""Property tests of the public functions over random shapes and values.

Shapes come from small ranges (each new shape compiles), values from wide
ones. The number of examples and whether they are random come from the
hypothesis profile (tests/conftest.py, HYPOTHESIS_PROFILE): few and fixed
by default, for the 2-core budget; many and random under "nightly".
"""

from hypothesis import given
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import capsjax
from tests import reference


@st.composite
def layers(draw, max_neurons=6):
  """(params, v, h, routing): a small layer with float64 values of varied
  scale, 1 to 4 routing iterations and a routing temperature."""
  nv = draw(st.integers(1, 3))
  dv = draw(st.integers(1, max(1, max_neurons // nv)))
  nh = draw(st.integers(1, 3))
  dh = draw(st.integers(1, 2))
  scale = draw(st.sampled_from([0.0, 0.1, 1.0, 5.0]))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  params = {"W": scale * rng.normal(size=(nv, nh, dh, dv)),
            "a": rng.normal(size=(nv, dv)), "b": rng.normal(size=(nh, dh))}
  batch = draw(st.integers(1, 3))
  v = (rng.random((batch, nv, dv)) < 0.5).astype(np.float64)
  h = (rng.random((batch, nh, dh)) < 0.5).astype(np.float64)
  routing = capsjax.Routing(draw(st.integers(1, 4)),
                            temperature=draw(st.sampled_from([0.25, 1.0, 4.0])))
  return params, v, h, routing


@pytest.mark.slow
@given(layers())
def test_routing_and_conditionals_are_well_formed(layer):
  params, v, h, r = layer
  with jax.enable_x64(True):
    c = capsjax.route_visible(params, v, r)
    assert np.all(np.isfinite(c)) and np.all(c >= 0)
    np.testing.assert_allclose(np.sum(c, -1), 1.0, rtol=1e-12)
    for p in (capsjax.hidden_probs(params, v, c),
              capsjax.visible_probs(params, h, c)):
      assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    assert np.all(np.isfinite(capsjax.routed_free_energy(params, v, r)))


@pytest.mark.slow
@given(layers())
def test_free_energy_is_the_log_sum_over_hidden_states(layer):
  params, v, _, r = layer
  with jax.enable_x64(True):
    c = np.asarray(capsjax.route_visible(params, v, r))
    got = capsjax.free_energy(params, v, c)
    expected = [reference.free_energy(params, v[n], c[n])
                for n in range(len(v))]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=8))
def test_squash_is_finite_and_shorter_than_one(values):
  s = jnp.asarray(values, jnp.float32)
  out = capsjax.squash(s)
  assert np.all(np.isfinite(out))
  assert float(jnp.linalg.norm(out)) < 1.0 + 1e-6
  assert np.all(np.isfinite(jax.grad(lambda x: jnp.sum(capsjax.squash(x)))(s)))
