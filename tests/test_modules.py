"""The NNX module: initialization and agreement with the functional API."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import capsjax
from capsjax import Routing


def test_initialization_follows_the_practical_guide():
  data = jax.random.bernoulli(jax.random.key(0), 0.2, (5000, 10, 4)).astype(
      jnp.float32)
  model = capsjax.CapsulePoE(10, 4, 30, 16, rngs=nnx.Rngs(1), data=data)
  W = np.asarray(model.W[...])
  assert W.shape == (10, 30, 16, 4)
  # 19,200 draws of N(0, 0.01^2): the sample std is within 2% of 0.01.
  assert abs(W.std() - 0.01) < 2e-4 and abs(W.mean()) < 2e-4
  marginals = np.asarray(data).mean(0)
  np.testing.assert_allclose(model.a[...], np.log(marginals / (1 - marginals)),
                             rtol=1e-4)
  np.testing.assert_array_equal(model.b[...], 0.0)


def test_constant_pixels_get_finite_biases():
  data = jnp.zeros((10, 2, 3)).at[:, 0].set(1.0)
  model = capsjax.CapsulePoE(2, 3, 2, 2, rngs=nnx.Rngs(0), data=data)
  assert np.all(np.isfinite(model.a[...]))
  assert np.all(model.a[...][0] > 0) and np.all(model.a[...][1] < 0)


def test_gaussian_visible_bias_is_the_data_mean():
  data = jax.random.normal(jax.random.key(2), (100, 3, 2)) + 3.0
  model = capsjax.CapsulePoE(3, 2, 2, 2, rngs=nnx.Rngs(0), data=data,
                             visible="gaussian")
  np.testing.assert_allclose(model.a[...], np.asarray(data).mean(0),
                             rtol=1e-5)


def test_methods_call_the_pure_functions():
  model = capsjax.CapsulePoE(4, 3, 5, 2, rngs=nnx.Rngs(3), routing=Routing(3),
                             init_scale=1.0)
  v = jax.random.bernoulli(jax.random.key(4), 0.5, (7, 4, 3)).astype(
      jnp.float32)
  p = model.params()
  c = capsjax.route(capsjax.predictions(p, v), Routing(3)).coefficients
  np.testing.assert_allclose(model.coefficients(v), c, rtol=1e-6)
  np.testing.assert_allclose(model.free_energy(v),
                             capsjax.free_energy(p, v, c), rtol=1e-6)
  np.testing.assert_allclose(model(v), capsjax.hidden_probs(p, v, c),
                             rtol=1e-6)


def test_training_loop_with_split_merge():
  model = capsjax.CapsulePoE(4, 3, 2, 2, rngs=nnx.Rngs(5))
  v = jax.random.bernoulli(jax.random.key(6), 0.3, (8, 4, 3)).astype(
      jnp.float32)
  opt = capsjax.sgd(0.05)
  state = capsjax.init_train_state(model.params(), opt)
  kernel = capsjax.gibbs(model.routing, visible=model.visible)
  step = jax.jit(functools.partial(capsjax.train_step, optimizer=opt,
                                   kernel=kernel))
  for _ in range(3):
    state, _ = step(jax.random.key(7), state, v)
  model.set_params(state.params)
  np.testing.assert_array_equal(model.W[...], state.params["W"])
  # The module round-trips through nnx.split / nnx.merge.
  graphdef, params = nnx.split(model)
  clone = nnx.merge(graphdef, params)
  np.testing.assert_array_equal(clone.free_energy(v), model.free_energy(v))


def test_routing_and_visible_are_static_attributes():
  """nnx.split puts the Routing and the unit type in the graphdef; the
  state holds the arrays W, a, b and nothing else."""
  routing = Routing(3, temperature=2.5)
  model = capsjax.CapsulePoE(4, 3, 2, 2, rngs=nnx.Rngs(8), routing=routing,
                             visible="gaussian")
  assert model.routing == routing and model.visible == "gaussian"
  graphdef, state = nnx.split(model)
  paths = sorted(path for path, _ in nnx.to_flat_state(state))
  assert paths == [("W",), ("a",), ("b",)]
  leaves = jax.tree.leaves(state)
  assert len(leaves) == 3 and all(isinstance(x, jax.Array) for x in leaves)
  # The options travel in the graphdef: graphdefs of equal options (other
  # weights) are equal and hash alike, other options give other graphdefs.
  def graphdef_of(**kwargs):
    options = dict(routing=routing, visible="gaussian") | kwargs
    return nnx.split(capsjax.CapsulePoE(4, 3, 2, 2, rngs=nnx.Rngs(9),
                                        **options))[0]
  assert graphdef_of() == graphdef and hash(graphdef_of()) == hash(graphdef)
  assert graphdef_of(routing=Routing(3)) != graphdef
  assert graphdef_of(visible="bernoulli") != graphdef
  clone = nnx.merge(graphdef, state)
  assert clone.routing == routing and clone.visible == "gaussian"
  # A jitted function of the split module sees the options as Python values.
  @jax.jit
  def free_energy(state, v):
    module = nnx.merge(graphdef, state)
    assert isinstance(module.routing, Routing)  # static: not traced
    return module.free_energy(v)
  v = jax.random.normal(jax.random.key(10), (5, 4, 3))
  np.testing.assert_allclose(
      free_energy(state, v),
      capsjax.routed_free_energy(model.params(), v, routing,
                                 visible="gaussian"), rtol=1e-5)


def test_route_uses_the_module_temperature():
  """0.1's CapsulePoE.route ignored the temperature; 0.2's uses it."""
  routing = Routing(3, temperature=2.5)
  model = capsjax.CapsulePoE(4, 3, 5, 2, rngs=nnx.Rngs(11), routing=routing,
                             init_scale=1.0)
  v = jax.random.bernoulli(jax.random.key(12), 0.5, (7, 4, 3)).astype(
      jnp.float32)
  p = model.params()
  expected = capsjax.route(capsjax.predictions(p, v), routing)
  got = model.route(v)
  for name in ("coefficients", "logits", "inputs", "outputs"):
    np.testing.assert_allclose(getattr(got, name), getattr(expected, name),
                               rtol=1e-5, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(model.coefficients(v), expected.coefficients,
                             rtol=1e-5, atol=1e-6)
  # The temperature matters on this layer: T = 1 routes differently.
  at_one = capsjax.route(capsjax.predictions(p, v), Routing(3)).coefficients
  assert np.max(np.abs(np.asarray(at_one - got.coefficients))) > 1e-2


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_hidden_capsules"):
    capsjax.CapsulePoE(4, 3, 0, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="data must have shape"):
    capsjax.CapsulePoE(4, 3, 2, 2, rngs=nnx.Rngs(0), data=jnp.zeros((5, 3, 4)))
  with pytest.raises(ValueError, match="visible must be one of"):
    capsjax.CapsulePoE(4, 3, 2, 2, rngs=nnx.Rngs(0), visible="binary")
  with pytest.raises(ValueError, match=r"routing must be a capsjax.Routing; "
                                       r"got 3 \(0.2 moved num_iterations"):
    capsjax.CapsulePoE(4, 3, 2, 2, rngs=nnx.Rngs(0), routing=3)
  with pytest.raises(TypeError, match="num_iterations"):
    capsjax.CapsulePoE(4, 3, 2, 2, rngs=nnx.Rngs(0), num_iterations=3)
