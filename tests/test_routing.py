"""squash, predictions and route against Procedure 1 written as plain loops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import capsjax
from tests import reference


def _votes(seed, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.key(seed), shape)


class TestSquash:

  def test_matches_formula(self):
    s = np.array(_votes(0, (5, 7)), np.float64)
    expected = np.stack([reference.squash(x) for x in s])
    np.testing.assert_allclose(capsjax.squash(jnp.asarray(s)), expected,
                               rtol=1e-5, atol=1e-6)

  def test_axis(self):
    s = _votes(1, (3, 4, 5))
    np.testing.assert_allclose(
        capsjax.squash(s, axis=1),
        jnp.moveaxis(capsjax.squash(jnp.moveaxis(s, 1, -1)), -1, 1),
        rtol=1e-6)

  def test_finite_value_and_gradient_at_zero(self):
    z = jnp.zeros((3, 4))
    assert jnp.all(capsjax.squash(z) == 0)
    g = jax.jacobian(capsjax.squash)(jnp.zeros(4))
    assert jnp.all(jnp.isfinite(g))
    g = jax.grad(lambda s: jnp.sum(capsjax.squash(s)))(z)
    assert jnp.all(jnp.isfinite(g))

  def test_check_grads(self):
    with jax.enable_x64(True):
      s = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
      check_grads(jax.jit(capsjax.squash), (s,), order=2, modes=("fwd", "rev"))
      # At 0 the eps inside the square root makes squash smooth.
      check_grads(capsjax.squash, (jnp.zeros(4),), order=1,
                  modes=("fwd", "rev"), eps=1e-8)

  @pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
  def test_finite_at_zero_in_half_precision(self, dtype):
    z = jnp.zeros((2, 4), dtype)
    assert jnp.all(capsjax.squash(z) == 0)
    g = jax.grad(lambda s: jnp.sum(capsjax.squash(s)))(z)
    assert jnp.all(jnp.isfinite(g))

  def test_norm_below_one(self):
    n = jnp.linalg.norm(capsjax.squash(_votes(2, (100, 8), 10.0)), axis=-1)
    assert jnp.all(n < 1.0)


class TestPredictions:

  def test_matches_loop(self):
    W = np.array(_votes(0, (3, 2, 4, 5)), np.float64)
    v = np.array(_votes(1, (6, 3, 5)), np.float64)
    params = {"W": jnp.asarray(W), "a": jnp.zeros((3, 5)),
              "b": jnp.zeros((2, 4))}
    got = capsjax.predictions(params, jnp.asarray(v, jnp.float32))
    expected = np.stack([reference.predictions(W, x) for x in v])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


class TestRoute:

  @pytest.mark.parametrize("r", [1, 2, 3, 5])
  def test_matches_procedure_1(self, r):
    u = np.array(_votes(r, (4, 6, 3, 5)), np.float64)
    got = capsjax.route(jnp.asarray(u, jnp.float32), r).coefficients
    expected = np.stack([reference.route(x, r) for x in u])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)

  def test_x64_matches_procedure_1_tightly(self):
    with jax.enable_x64(True):
      u = np.array(np.random.default_rng(3).normal(size=(3, 5, 4, 6)))
      got = capsjax.route(jnp.asarray(u), 4).coefficients
      assert got.dtype == jnp.float64
      expected = np.stack([reference.route(x, 4) for x in u])
      np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-13)

  def test_outputs_are_squashed_inputs(self):
    u = _votes(0, (2, 5, 3, 4))
    res = capsjax.route(u, 3)
    s = jnp.einsum("bij,bijk->bjk", res.coefficients, u)
    np.testing.assert_allclose(res.inputs, s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.outputs, capsjax.squash(s), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(res.coefficients,
                               jax.nn.softmax(res.logits, axis=-1), rtol=1e-6)

  def test_coefficients_sum_to_one(self):
    c = capsjax.route(_votes(1, (8, 10, 7, 4), 3.0), 5).coefficients
    np.testing.assert_allclose(jnp.sum(c, axis=-1), 1.0, rtol=1e-6)
    assert jnp.all(c >= 0)

  def test_one_iteration_is_uniform(self):
    c = capsjax.route(_votes(2, (3, 4, 6, 5), 5.0), 1).coefficients
    np.testing.assert_allclose(c, 1.0 / 6.0, rtol=1e-7)

  def test_examples_are_independent(self):
    u = _votes(3, (5, 4, 3, 2), 2.0)
    batched = capsjax.route(u, 3).coefficients
    for b in range(5):
      alone = capsjax.route(u[b], 3).coefficients
      np.testing.assert_allclose(batched[b], alone, rtol=1e-6, atol=1e-7)
    # Changing the other examples changes nothing for example 0.
    u2 = u.at[1:].set(_votes(4, (4, 4, 3, 2), 2.0))
    np.testing.assert_array_equal(capsjax.route(u2, 3).coefficients[0],
                                  batched[0])

  def test_jit_and_vmap(self):
    u = _votes(5, (6, 4, 3, 2))
    eager = capsjax.route(u, 3).coefficients
    jitted = jax.jit(capsjax.route, static_argnums=1)(u, 3).coefficients
    mapped = jax.vmap(lambda x: capsjax.route(x, 3))(u).coefficients
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mapped, eager, rtol=1e-6, atol=1e-7)

  @pytest.mark.slow
  def test_check_grads(self):
    with jax.enable_x64(True):
      u = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4, 2)))
      @jax.jit
      def f(u):
        res = capsjax.route(u, 3)
        return res.coefficients, res.outputs
      check_grads(f, (u,), order=2, modes=("fwd", "rev"))

  def test_stop_inner_gradients(self):
    u = _votes(6, (3, 4, 2))
    def coeff_sum(u, stop):
      c = capsjax.route(u, 3, stop_inner_gradients=stop).coefficients
      return jnp.sum(c * jnp.arange(4.0))
    assert jnp.any(jax.grad(coeff_sum)(u, False) != 0)
    np.testing.assert_array_equal(jax.grad(coeff_sum)(u, True), 0.0)
    # The values themselves do not change.
    np.testing.assert_array_equal(
        capsjax.route(u, 3, stop_inner_gradients=True).coefficients,
        capsjax.route(u, 3).coefficients)

  def test_no_recompilation_across_values(self):
    f = jax.jit(functools.partial(capsjax.route, num_iterations=3))
    f(_votes(0, (2, 3, 4, 5)))
    before = f._cache_size()
    f(_votes(1, (2, 3, 4, 5)))
    assert f._cache_size() == before

  @pytest.mark.parametrize("t", [0.5, 4.0])
  def test_temperature_matches_procedure_1(self, t):
    u = np.array(_votes(8, (4, 6, 3, 5)), np.float64)
    got = capsjax.route(jnp.asarray(u, jnp.float32), 3,
                        temperature=t).coefficients
    expected = np.stack([reference.route(x, 3, t) for x in u])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # The model's temperature lives in params and reaches route_visible,
    # also as a traced array under jit.
    W = np.array(_votes(9, (3, 2, 4, 5)), np.float64)
    v = np.array(_votes(10, (6, 3, 5)), np.float64)
    params = {"W": jnp.asarray(W, jnp.float32), "a": jnp.zeros((3, 5)),
              "b": jnp.zeros((2, 4)), "routing_temperature": jnp.float32(t)}
    c = jax.jit(capsjax.route_visible, static_argnums=2)(
        params, jnp.asarray(v, jnp.float32), 3)
    expected = np.stack([reference.route(reference.predictions(W, x), 3, t)
                         for x in v])
    np.testing.assert_allclose(c, expected, rtol=1e-4, atol=1e-6)

  def test_temperature_limits_and_errors(self):
    u = _votes(11, (2, 3, 4, 5), 3.0)
    np.testing.assert_allclose(
        capsjax.route(u, 3, temperature=1e6).coefficients, 0.25, rtol=1e-4)
    np.testing.assert_array_equal(
        capsjax.route(u, 3, temperature=1.0).coefficients,
        capsjax.route(u, 3).coefficients)
    for bad in (0.0, -1.0, float("nan"), True):
      with pytest.raises(ValueError, match="temperature"):
        capsjax.route(u, 3, temperature=bad)
    with pytest.raises(ValueError, match="scalar"):
      capsjax.route(u, 3, temperature=jnp.ones(2))

  def test_temperature_is_not_trained(self):
    W = _votes(12, (3, 2, 4, 5))
    params = {"W": W, "a": jnp.zeros((3, 5)), "b": jnp.zeros((2, 4)),
              "routing_temperature": jnp.float32(2.0)}
    v = _votes(13, (6, 3, 5))
    g = jax.grad(lambda p: jnp.sum(capsjax.routed_free_energy(p, v, 3)))(
        params)
    assert g["routing_temperature"] == 0.0 and jnp.any(g["W"] != 0)

  def test_entropy(self):
    nh = 5
    u = _votes(7, (2, 3, nh, 4))
    h = capsjax.routing_entropy(capsjax.route(u, 1).coefficients)
    np.testing.assert_allclose(h, np.log(nh), rtol=1e-6)
    hard = jax.nn.one_hot(jnp.array([0, 3]), nh)
    np.testing.assert_allclose(capsjax.routing_entropy(hard), 0.0, atol=1e-7)
