"""The NNX module: initialization and agreement with the functional API."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import capsjax


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
  model = capsjax.CapsulePoE(4, 3, 5, 2, rngs=nnx.Rngs(3), num_iterations=3,
                             init_scale=1.0)
  v = jax.random.bernoulli(jax.random.key(4), 0.5, (7, 4, 3)).astype(
      jnp.float32)
  p = model.params()
  c = capsjax.route(capsjax.predictions(p, v), 3).coefficients
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
  step = jax.jit(functools.partial(capsjax.train_step, optimizer=opt))
  for _ in range(3):
    state, _ = step(state, jax.random.key(7), v)
  model.set_params(state.params)
  np.testing.assert_array_equal(model.W[...], state.params["W"])
  # The module round-trips through nnx.split / nnx.merge.
  graphdef, params = nnx.split(model)
  clone = nnx.merge(graphdef, params)
  np.testing.assert_array_equal(clone.free_energy(v), model.free_energy(v))


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_hidden_capsules"):
    capsjax.CapsulePoE(4, 3, 0, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="data must have shape"):
    capsjax.CapsulePoE(4, 3, 2, 2, rngs=nnx.Rngs(0), data=jnp.zeros((5, 3, 4)))
  with pytest.raises(ValueError, match="visible must be one of"):
    capsjax.CapsulePoE(4, 3, 2, 2, rngs=nnx.Rngs(0), visible="binary")
