"""Energy, free energy and conditionals of one capsule layer, c held fixed.

MODEL.md section 3. Every function takes the coefficients `c` (..., Nv, Nh)
as an argument; the routed model's `c(v)` comes from
`capsjax.routing.route_visible`. Visible units are Bernoulli by default,
unit-variance Gaussian with `visible="gaussian"`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from capsjax import routing
from capsjax import validation


def hidden_input(params, v: jax.Array, c: jax.Array) -> jax.Array:
  """`s_j = sum_i c_ij W_ij v_i`, shape (..., Nh, Dh): the capsule input."""
  validation.check_batch(v=validation.visible(params, v),
                         c=validation.coefficients(params, c))
  return jnp.einsum("...ij,ijkl,...il->...jk", c, params["W"], v)


def visible_input(params, h: jax.Array, c: jax.Array) -> jax.Array:
  """`x_i = sum_j c_ij W_ij^T h_j`, shape (..., Nv, Dv)."""
  validation.check_batch(h=validation.hidden(params, h),
                         c=validation.coefficients(params, c))
  return jnp.einsum("...ij,ijkl,...jk->...il", c, params["W"], h)


def _visible_term(params, v, visible):
  """The part of -E (and -F) that involves the visible units alone."""
  a = params["a"]
  if validation.visible_type(visible) == "bernoulli":
    return jnp.sum(a * v, axis=(-2, -1))
  return -0.5 * jnp.sum(jnp.square(v - a), axis=(-2, -1))


def energy(params, v: jax.Array, h: jax.Array, c: jax.Array, *,
           visible: str = "bernoulli") -> jax.Array:
  """`E(v, h; c)`, shape (...,)."""
  validation.check_batch(v=validation.visible(params, v),
                         h=validation.hidden(params, h))
  s = hidden_input(params, v, c)
  interaction = jnp.sum(h * s, axis=(-2, -1))
  hidden_bias = jnp.sum(params["b"] * h, axis=(-2, -1))
  return -(interaction + hidden_bias + _visible_term(params, v, visible))


def free_energy(params, v: jax.Array, c: jax.Array, *,
                visible: str = "bernoulli") -> jax.Array:
  """`F(v; c) = -log sum_h exp(-E(v, h; c))`, shape (...,)."""
  s = hidden_input(params, v, c)
  experts = jnp.sum(jax.nn.softplus(params["b"] + s), axis=(-2, -1))
  return -(experts + _visible_term(params, v, visible))


def routed_free_energy(params, v: jax.Array, num_iterations: int, *,
                       visible: str = "bernoulli", **route_kwargs) -> jax.Array:
  """`F~(v) = F(v; c(v))`, the routed model's free energy (MODEL.md section 4).

  Differentiable through the routing (gradients flow into `c`).
  """
  c = routing.route_visible(params, v, num_iterations, **route_kwargs)
  return free_energy(params, v, c, visible=visible)


def hidden_probs(params, v: jax.Array, c: jax.Array) -> jax.Array:
  """`p(h = 1 | v; c) = sigmoid(b + s)`, shape (..., Nh, Dh)."""
  return jax.nn.sigmoid(params["b"] + hidden_input(params, v, c))


def visible_probs(params, h: jax.Array, c: jax.Array, *,
                  visible: str = "bernoulli") -> jax.Array:
  """`p(v = 1 | h; c)` (Bernoulli) or the mean of `v | h; c` (Gaussian)."""
  pre = params["a"] + visible_input(params, h, c)
  if validation.visible_type(visible) == "bernoulli":
    return jax.nn.sigmoid(pre)
  return pre


def reconstruct(params, v: jax.Array, c: jax.Array, *,
                visible: str = "bernoulli") -> jax.Array:
  """One deterministic up-down pass: `visible_probs(hidden_probs(v; c); c)`."""
  return visible_probs(params, hidden_probs(params, v, c), c, visible=visible)


def log_partition_given_hidden(params, h: jax.Array, c: jax.Array, *,
                               visible: str = "bernoulli") -> jax.Array:
  """`log Z_h(c) = log sum_v exp(-E(v, h; c))`, shape (...,).

  Needed by the Metropolis-Hastings correction (MODEL.md section 6). For
  Gaussian units the integral's constant `Nv Dv log(2 pi) / 2` is dropped:
  it cancels in every ratio this is used for.
  """
  x = visible_input(params, h, c)
  hidden_bias = jnp.sum(params["b"] * h, axis=(-2, -1))
  a = params["a"]
  if validation.visible_type(visible) == "bernoulli":
    return hidden_bias + jnp.sum(jax.nn.softplus(a + x), axis=(-2, -1))
  return hidden_bias + jnp.sum(a * x + 0.5 * jnp.square(x), axis=(-2, -1))


def sample_hidden(key, params, v, c):
  """Draws `h ~ p(h | v; c)`; returns (sample, probabilities)."""
  p = hidden_probs(params, v, c)
  return jax.random.bernoulli(key, p).astype(p.dtype), p


def sample_visible(key, params, h, c, *, visible: str = "bernoulli"):
  """Draws `v ~ p(v | h; c)`; returns (sample, mean)."""
  mean = visible_probs(params, h, c, visible=visible)
  if validation.visible_type(visible) == "bernoulli":
    return jax.random.bernoulli(key, mean).astype(mean.dtype), mean
  return mean + jax.random.normal(key, mean.shape, mean.dtype), mean
