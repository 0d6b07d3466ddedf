"""squash, predictions and route against Procedure 1 written as plain loops."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

import capsjax
from capsjax import Routing
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
    got = capsjax.route(jnp.asarray(u, jnp.float32), Routing(r)).coefficients
    expected = np.stack([reference.route(x, r) for x in u])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)

  def test_x64_matches_procedure_1_tightly(self):
    with jax.enable_x64(True):
      u = np.array(np.random.default_rng(3).normal(size=(3, 5, 4, 6)))
      got = capsjax.route(jnp.asarray(u), Routing(4)).coefficients
      assert got.dtype == jnp.float64
      expected = np.stack([reference.route(x, 4) for x in u])
      np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-13)

  def test_outputs_are_squashed_inputs(self):
    u = _votes(0, (2, 5, 3, 4))
    res = capsjax.route(u, Routing(3))
    s = jnp.einsum("bij,bijk->bjk", res.coefficients, u)
    np.testing.assert_allclose(res.inputs, s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.outputs, capsjax.squash(s), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(res.coefficients,
                               jax.nn.softmax(res.logits, axis=-1), rtol=1e-6)

  def test_coefficients_sum_to_one(self):
    c = capsjax.route(_votes(1, (8, 10, 7, 4), 3.0), Routing(5)).coefficients
    np.testing.assert_allclose(jnp.sum(c, axis=-1), 1.0, rtol=1e-6)
    assert jnp.all(c >= 0)

  def test_one_iteration_is_uniform(self):
    c = capsjax.route(_votes(2, (3, 4, 6, 5), 5.0), Routing(1)).coefficients
    np.testing.assert_allclose(c, 1.0 / 6.0, rtol=1e-7)

  def test_examples_are_independent(self):
    u = _votes(3, (5, 4, 3, 2), 2.0)
    batched = capsjax.route(u, Routing(3)).coefficients
    for b in range(5):
      alone = capsjax.route(u[b], Routing(3)).coefficients
      np.testing.assert_allclose(batched[b], alone, rtol=1e-6, atol=1e-7)
    # Changing the other examples changes nothing for example 0.
    u2 = u.at[1:].set(_votes(4, (4, 4, 3, 2), 2.0))
    np.testing.assert_array_equal(capsjax.route(u2, Routing(3)).coefficients[0],
                                  batched[0])

  def test_jit_and_vmap(self):
    u = _votes(5, (6, 4, 3, 2))
    eager = capsjax.route(u, Routing(3)).coefficients
    jitted = jax.jit(capsjax.route, static_argnums=1)(u, Routing(3))
    jitted = jitted.coefficients
    mapped = jax.vmap(lambda x: capsjax.route(x, Routing(3)))(u).coefficients
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mapped, eager, rtol=1e-6, atol=1e-7)

  @pytest.mark.slow
  def test_check_grads(self):
    with jax.enable_x64(True):
      u = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4, 2)))
      @jax.jit
      def f(u):
        res = capsjax.route(u, Routing(3))
        return res.coefficients, res.outputs
      check_grads(f, (u,), order=2, modes=("fwd", "rev"))

  def test_stop_inner_gradients(self):
    u = _votes(6, (3, 4, 2))
    def coeff_sum(u, stop):
      c = capsjax.route(u, Routing(3), stop_inner_gradients=stop).coefficients
      return jnp.sum(c * jnp.arange(4.0))
    assert jnp.any(jax.grad(coeff_sum)(u, False) != 0)
    np.testing.assert_array_equal(jax.grad(coeff_sum)(u, True), 0.0)
    # The values themselves do not change.
    np.testing.assert_array_equal(
        capsjax.route(u, Routing(3), stop_inner_gradients=True).coefficients,
        capsjax.route(u, Routing(3)).coefficients)

  def test_no_recompilation_across_values(self):
    """New values, and a `Routing` rebuilt with the same options, reuse the
    trace; other options trace anew. Traces are counted by a Python side
    effect, which runs only while jit traces."""
    traces = []

    @functools.partial(jax.jit, static_argnums=1)
    def f(u, routing):
      traces.append(routing)
      return capsjax.route(u, routing).coefficients

    f(_votes(0, (2, 3, 4, 5)), Routing(3))
    f(_votes(1, (2, 3, 4, 5)), Routing(3))
    f(_votes(1, (2, 3, 4, 5)), Routing(num_iterations=3, temperature=1.0,
                                        rule="sabour"))
    assert len(traces) == 1
    f(_votes(1, (2, 3, 4, 5)), Routing(3, temperature=2.0))
    assert len(traces) == 2

  @pytest.mark.parametrize("t", [0.5, 4.0])
  def test_temperature_matches_procedure_1(self, t):
    u = np.array(_votes(8, (4, 6, 3, 5)), np.float64)
    got = capsjax.route(jnp.asarray(u, jnp.float32),
                        Routing(3, temperature=t)).coefficients
    expected = np.stack([reference.route(x, 3, t) for x in u])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # The model's temperature is part of its static Routing and reaches
    # route_visible under jit; params hold W, a, b only.
    W = np.array(_votes(9, (3, 2, 4, 5)), np.float64)
    v = np.array(_votes(10, (6, 3, 5)), np.float64)
    params = {"W": jnp.asarray(W, jnp.float32), "a": jnp.zeros((3, 5)),
              "b": jnp.zeros((2, 4))}
    c = jax.jit(capsjax.route_visible, static_argnums=2)(
        params, jnp.asarray(v, jnp.float32), Routing(3, temperature=t))
    expected = np.stack([reference.route(reference.predictions(W, x), 3, t)
                         for x in v])
    np.testing.assert_allclose(c, expected, rtol=1e-4, atol=1e-6)
    # route_from_visible: the full result, the same coefficients.
    res = jax.jit(capsjax.route_from_visible, static_argnums=2)(
        params, jnp.asarray(v, jnp.float32), Routing(3, temperature=t))
    np.testing.assert_allclose(res.coefficients, expected, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(
        res.outputs,
        capsjax.route(capsjax.predictions(params, jnp.asarray(v, jnp.float32)),
                      Routing(3, temperature=t)).outputs, rtol=1e-5, atol=1e-6)

  def test_temperature_limits_and_errors(self):
    u = _votes(11, (2, 3, 4, 5), 3.0)
    np.testing.assert_allclose(
        capsjax.route(u, Routing(3, temperature=1e6)).coefficients, 0.25,
        rtol=1e-4)
    np.testing.assert_array_equal(
        capsjax.route(u, Routing(3, temperature=1.0)).coefficients,
        capsjax.route(u, Routing(3)).coefficients)
    for bad in (0, 0.0, -1.0, float("nan"), float("inf"), True, "1.0"):
      with pytest.raises(ValueError, match="temperature"):
        Routing(3, temperature=bad)
    # Not an array: the temperature is a static option, not a parameter.
    with pytest.raises(ValueError, match="temperature"):
      Routing(3, temperature=jnp.ones(2))
    with pytest.raises(ValueError, match="temperature"):
      Routing(3, temperature=jnp.float32(2.0))

  def test_temperature_is_an_option_not_a_parameter(self):
    """0.1 kept the temperature in params (a leaf with zero gradient); 0.2
    keeps it in the static Routing. The gradient has exactly W, a, b, and
    the temperature changes it."""
    W = _votes(12, (3, 2, 4, 5))
    params = {"W": W, "a": jnp.zeros((3, 5)), "b": jnp.zeros((2, 4))}
    v = _votes(13, (6, 3, 5))
    grad = jax.jit(jax.grad(
        lambda p, r: jnp.sum(capsjax.routed_free_energy(p, v, r))),
                   static_argnums=1)
    hot = grad(params, Routing(3, temperature=2.0))
    assert set(hot) == {"W", "a", "b"} and jnp.any(hot["W"] != 0)
    cold = grad(params, Routing(3))
    assert not np.allclose(hot["W"], cold["W"], rtol=1e-3)

  def test_routing_is_a_frozen_hashable_value(self):
    r = Routing(3, temperature=2.0)
    assert r == Routing(num_iterations=3, temperature=2.0, rule="sabour")
    assert hash(r) == hash(Routing(3, 2.0))
    assert r != Routing(3) and r != Routing(2, temperature=2.0)
    # Canonical types: numpy scalars and ints compare and hash as Python's.
    assert Routing(np.int64(3), np.float32(2.0)) == r
    assert hash(Routing(np.int64(3), 2)) == hash(r)
    assert type(Routing(np.int64(3)).num_iterations) is int
    assert Routing(1).routed is False and Routing(2).routed is True
    assert Routing() == Routing(3, 1.0, "sabour")
    with pytest.raises(dataclasses.FrozenInstanceError):
      r.num_iterations = 2

  def test_entropy(self):
    nh = 5
    u = _votes(7, (2, 3, nh, 4))
    h = capsjax.routing_entropy(capsjax.route(u, Routing(1)).coefficients)
    np.testing.assert_allclose(h, np.log(nh), rtol=1e-6)
    hard = jax.nn.one_hot(jnp.array([0, 3]), nh)
    np.testing.assert_allclose(capsjax.routing_entropy(hard), 0.0, atol=1e-7)


class TestRules:
  """The scale-free agreement rules against the numpy loop."""

  @pytest.mark.parametrize("rule", ["cosine", "normalized"])
  @pytest.mark.parametrize("r,t", [(2, 1.0), (3, 0.2), (4, 1.0)])
  def test_match_the_loop(self, rule, r, t):
    u = np.array(_votes(20 + r, (4, 6, 3, 5), 2.0), np.float64)
    u[:, 1] = 0.0  # a blank patch: its votes are 0 and it routes uniformly
    routing = Routing(r, temperature=t, rule=rule)
    got = capsjax.route(jnp.asarray(u, jnp.float32), routing)
    expected = np.stack([reference.route(x, r, t, rule) for x in u])
    np.testing.assert_allclose(got.coefficients, expected, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(got.coefficients[:, 1], 1.0 / 3.0, rtol=1e-6)
    # inputs stay the weighted sum of the votes themselves, not of unit ones.
    s = np.einsum("bij,bijk->bjk", expected, u)
    np.testing.assert_allclose(got.inputs, s, rtol=1e-4, atol=1e-5)

  @pytest.mark.parametrize("rule", ["cosine", "normalized"])
  def test_scale_free(self, rule):
    """Scaling the votes leaves c unchanged, unlike Sabour's u.o."""
    u = _votes(30, (5, 8, 4, 6))
    routing = Routing(3, rule=rule)
    small = capsjax.route(u, routing).coefficients
    large = capsjax.route(100.0 * u, routing).coefficients
    np.testing.assert_allclose(large, small, rtol=1e-4, atol=1e-6)
    sabour = [capsjax.route(x, Routing(3)).coefficients for x in (u, 100 * u)]
    assert np.max(np.abs(sabour[0] - sabour[1])) > 0.1

  @pytest.mark.parametrize("rule", ["cosine", "normalized"])
  def test_route_visible_and_jit(self, rule):
    W = np.array(_votes(31, (3, 2, 4, 5)), np.float64)
    v = np.array(jax.random.bernoulli(jax.random.key(32), 0.5, (7, 3, 5)),
                 np.float64)
    params = {"W": jnp.asarray(W, jnp.float32), "a": jnp.zeros((3, 5)),
              "b": jnp.zeros((2, 4))}
    routing = Routing(3, temperature=0.5, rule=rule)
    c = jax.jit(capsjax.route_visible, static_argnums=2)(
        params, jnp.asarray(v, jnp.float32), routing)
    expected = np.stack([reference.route(reference.predictions(W, x), 3, 0.5,
                                         rule) for x in v])
    np.testing.assert_allclose(c, expected, rtol=1e-4, atol=1e-6)

  @pytest.mark.slow
  @pytest.mark.parametrize("rule", ["cosine", "normalized"])
  def test_check_grads(self, rule):
    with jax.enable_x64(True):
      u = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 4, 2)))
      @jax.jit
      def f(u):
        res = capsjax.route(u, Routing(3, temperature=0.5, rule=rule))
        return res.coefficients, res.outputs
      check_grads(f, (u,), order=2, modes=("fwd", "rev"))

  @pytest.mark.parametrize("rule", ["cosine", "normalized"])
  @pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
  def test_half_precision_blank_patch(self, rule, dtype):
    """Zero votes (a blank patch) route uniformly in half precision too,
    with a finite gradient: the norms are computed in float32."""
    u = np.array(_votes(33, (2, 4, 3, 5)), np.float32)
    u[:, 1] = 0.0
    routing = Routing(3, temperature=0.5, rule=rule)
    res = capsjax.route(jnp.asarray(u, dtype), routing)
    expected = capsjax.route(jnp.asarray(u), routing).coefficients
    np.testing.assert_allclose(np.asarray(res.coefficients, np.float32),
                               expected, atol=2e-2)
    np.testing.assert_allclose(np.asarray(res.coefficients[:, 1], np.float32),
                               1.0 / 3.0, atol=1e-3)
    g = jax.grad(lambda x: jnp.sum(
        capsjax.route(x, routing).outputs.astype(jnp.float32)))(
            jnp.asarray(u, dtype))
    assert jnp.all(jnp.isfinite(g))

  def test_unknown_rule_is_refused(self):
    with pytest.raises(ValueError, match="Routing.rule must be one of"):
      Routing(3, rule="em")


def _parse_loop(c, v, labels, num_classes, min_active=20, max_share=0.8):
  """routing_parse's definition as a plain loop over capsules and examples."""
  fractions, infos = [], []
  for i in range(c.shape[1]):
    rows = [b for b in range(c.shape[0]) if np.any(v[b, i] != 0)]
    if len(rows) < min_active:
      continue
    choices = [int(np.argmax(c[b, i])) for b in rows]
    modal = max(choices.count(j) for j in set(choices))
    fractions.append(float(modal < max_share * len(rows)))
    info = 0.0
    for k in range(num_classes):
      for j in range(c.shape[2]):
        n_kj = sum(1 for b, ch in zip(rows, choices)
                   if labels[b] == k and ch == j)
        if n_kj:
          n_k = sum(1 for b in rows if labels[b] == k)
          p, pk, pj = (n_kj / len(rows), n_k / len(rows),
                       choices.count(j) / len(rows))
          info += p * np.log(p / (pk * pj))
    infos.append(info)
  return np.mean(fractions), len(fractions), np.mean(infos)


class TestRoutingParse:

  def test_matches_the_loop(self):
    rng = np.random.default_rng(0)
    b, nv, nh, k = 200, 6, 4, 3
    labels = rng.integers(0, k, b)
    v = (rng.random((b, nv, 2)) < 0.4).astype(np.float32)
    v[:, 5] = 0.0  # never active: does not qualify
    logits = rng.normal(size=(b, nv, nh))
    logits[:, 0, 2] += 5.0                  # a fixed choice: does not parse
    logits[:, 1, :] = 0.0                   # choice follows the class:
    logits[np.arange(b), 1, labels] = 5.0   # parses, I = H(class)
    c = jax.nn.softmax(jnp.asarray(logits), axis=-1)
    got = capsjax.routing_parse(c, jnp.asarray(v), jnp.asarray(labels),
                                num_classes=k)
    fraction, count, info = _parse_loop(np.asarray(c), v, labels, k)
    assert int(got.num_qualifying) == count == 5
    np.testing.assert_allclose(got.parse_fraction, fraction, rtol=1e-6)
    np.testing.assert_allclose(got.class_information, info, rtol=1e-5)
    assert 0.0 < float(got.parse_fraction) < 1.0

  def test_fixed_partition_and_no_labels(self):
    v = jnp.ones((50, 3, 2))
    c = jnp.broadcast_to(jax.nn.one_hot(jnp.array([0, 2, 1]), 3), (50, 3, 3))
    labels = jnp.arange(50) % 10
    got = jax.jit(capsjax.routing_parse)(c, v, labels)
    assert float(got.parse_fraction) == 0.0
    assert float(got.class_information) == pytest.approx(0.0, abs=1e-7)
    unlabelled = capsjax.routing_parse(c, v)
    assert np.isnan(unlabelled.class_information)
    few = capsjax.routing_parse(c[:10], v[:10])  # none active 20 times
    assert int(few.num_qualifying) == 0 and np.isnan(few.parse_fraction)

  def test_bad_shapes_are_named(self):
    c, v = jnp.ones((5, 3, 2)) / 2, jnp.ones((5, 3, 4))
    with pytest.raises(ValueError, match=r"c must be \(B, Nv, Nh\)"):
      capsjax.routing_parse(c, v[:4])
    with pytest.raises(ValueError, match=r"labels must be \(B,\) = \(5,\)"):
      capsjax.routing_parse(c, v, jnp.zeros((5, 1), jnp.int32))
