"""Energy, free energy and conditionals of one capsule layer, c held fixed.

docs/model.md section 3. Every function takes the coefficients `c` (..., Nv, Nh)
as an argument; the routed model's `c(v)` comes from
`capsjax.route_visible`. Visible units are Bernoulli by default,
unit-variance Gaussian with `visible="gaussian"`.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

from capsjax import _sharding
from capsjax import routing as routing_lib
from capsjax import validation

# Layout (see BUILD_NOTES.md, "Performance"). Coefficients without batch
# axes, (Nv, Nh), are shared by the whole batch (uniform routing, r = 1):
# then c is folded into W and each contraction is one plain matrix product,
# (B, Nv Dv) x (Nv Dv, Nh Dh), an RBM's. Per-example coefficients (B, Nv, Nh)
# cannot be folded; the contractions then scale one operand by c (a tensor
# the size of the votes, which XLA's CPU backend cannot fuse into a dot) and
# run batched products with the batch axis leading and the contracted axes
# contiguous, the layout the CPU dot emitter takes without transposing.


def _flatten(x, batch_shape, trailing):
  """x broadcast to batch_shape + trailing, as (B, *trailing)."""
  x = jnp.broadcast_to(x, batch_shape + x.shape[-len(trailing):])
  return x.reshape((-1,) + tuple(trailing))


def _operands(params, x, c, batch_shape):
  """(W, x, c) in one dtype; x and c flattened to a (B, ...) batch."""
  dtype = jnp.result_type(params["W"], x, c)
  W = params["W"].astype(dtype)
  x = _flatten(x.astype(dtype), batch_shape, x.shape[-2:])
  c = _flatten(c.astype(dtype), batch_shape, c.shape[-2:])
  return W, x, c


def coefficient_weighted_visible(v, c):
  """`X[j, b, (i, l)] = c[b, i, j] v[b, i, l]`: v (B, Nv, Dv), c (B, Nv, Nh).

  The left operand of `hidden_input`'s batched product and of
  `interaction_statistics`'s: one expression, so XLA computes it once (CSE)
  when both ask for the same (v, c).
  """
  x = jnp.transpose(c, (2, 0, 1))[..., None] * v[None]
  return x.reshape(x.shape[:2] + (-1,))


def _shared_matrix(params, c):
  """The RBM weight matrix (Nv Dv, Nh Dh) of shared coefficients c (Nv, Nh).

  `hidden_input` multiplies by it and `visible_input` by its transpose
  (which XLA folds into the product), so a step that needs both builds
  it once (CSE).
  """
  W = params["W"]
  nv, nh, dh, dv = W.shape
  return jnp.transpose(c[:, :, None, None] * W, (0, 3, 1, 2)).reshape(
      nv * dv, nh * dh)


def hidden_input(params, v: jax.Array, c: jax.Array) -> jax.Array:
  """`s_j = sum_i c_ij W_ij v_i`, shape (..., Nh, Dh): the capsule input."""
  batch_shape = validation.check_batch(v=validation.visible(params, v),
                                       c=validation.coefficients(params, c))
  if jnp.ndim(c) == 2:
    nh, dh = params["W"].shape[1:3]
    s = jnp.matmul(v.reshape(v.shape[:-2] + (-1,)), _shared_matrix(params, c))
    return s.reshape(s.shape[:-1] + (nh, dh))
  W, v, c = _operands(params, v, c, batch_shape)
  nv, nh, dh, dv = W.shape
  w_by_upper = jnp.transpose(W, (1, 0, 3, 2)).reshape(nh, nv * dv, dh)
  s = lax.dot_general(coefficient_weighted_visible(v, c), w_by_upper,
                      (((2,), (1,)), ((0,), (0,))))  # (Nh, B, Dh)
  return jnp.swapaxes(s, 0, 1).reshape(batch_shape + (nh, dh))


def visible_input(params, h: jax.Array, c: jax.Array) -> jax.Array:
  """`x_i = sum_j c_ij W_ij^T h_j`, shape (..., Nv, Dv)."""
  batch_shape = validation.check_batch(h=validation.hidden(params, h),
                                       c=validation.coefficients(params, c))
  if jnp.ndim(c) == 2:
    nv, dv = params["W"].shape[0], params["W"].shape[3]
    x = jnp.matmul(h.reshape(h.shape[:-2] + (-1,)),
                   _shared_matrix(params, c).T)
    return x.reshape(x.shape[:-1] + (nv, dv))
  W, h, c = _operands(params, h, c, batch_shape)
  nv, nh, dh, dv = W.shape
  # Y[i, b, (j, k)] = c[b, i, j] h[b, j, k]; W is already (Nv, Nh Dh, Dv).
  y = (jnp.transpose(c, (1, 0, 2))[..., None] * h[None]).reshape(
      nv, -1, nh * dh)
  x = lax.dot_general(y, W.reshape(nv, nh * dh, dv),
                      (((2,), (1,)), ((0,), (0,))))  # (Nv, B, Dv)
  return jnp.swapaxes(x, 0, 1).reshape(batch_shape + (nv, dv))


def interaction_statistics(v: jax.Array, p: jax.Array, c: jax.Array
                           ) -> jax.Array:
  """`sum_batch c_ij p_j v_i^T`, shape (Nv, Nh, Dh, Dv): minus dE/dW summed.

  v (..., Nv, Dv), p (..., Nh, Dh) (hidden states or probabilities) and c
  (..., Nv, Nh) or an unbatched (Nv, Nh), with the same leading axes.
  """
  # A sum over the batch: under explicit sharding its result is replicated.
  out = _sharding.replicated(v)
  if jnp.ndim(c) == 2:
    return c[:, :, None, None] * jnp.einsum("...jk,...il->ijkl", p, v,
                                            out_sharding=out)
  batch_shape = v.shape[:-2]
  dtype = jnp.result_type(v, p, c)
  v = _flatten(v.astype(dtype), batch_shape, v.shape[-2:])
  p = _flatten(p.astype(dtype), batch_shape, p.shape[-2:])
  c = _flatten(c.astype(dtype), batch_shape, c.shape[-2:])
  nv, dv = v.shape[1:]
  nh, dh = p.shape[1:]
  g = lax.dot_general(jnp.transpose(p, (1, 2, 0)),
                      coefficient_weighted_visible(v, c),
                      (((2,), (1,)), ((0,), (0,))),
                      out_sharding=out)  # (Nh, Dh, Nv Dv)
  return jnp.transpose(g.reshape(nh, dh, nv, dv), (2, 0, 1, 3))


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


def routed_free_energy(params, v: jax.Array, routing: routing_lib.Routing, *,
                       visible: str = "bernoulli") -> jax.Array:
  """`F~(v) = F(v; c(v))`, the routed model's free energy (docs/model.md
  section 4).

  Differentiable through the routing (gradients flow into `c`).
  """
  c = routing_lib.route_visible(params, v, routing)
  return free_energy(params, v, c, visible=visible)


def hidden_probs(params, v: jax.Array, c: jax.Array) -> jax.Array:
  """`p(h = 1 | v; c) = sigmoid(b + s)`, shape (..., Nh, Dh)."""
  return jax.nn.sigmoid(params["b"] + hidden_input(params, v, c))


def visible_probs(params, h: jax.Array, c: jax.Array, *,
                  visible: str = "bernoulli") -> jax.Array:
  """`p(v = 1 | h; c)` (Bernoulli) or the mean of `v | h; c` (Gaussian)."""
  return visible_mean_from_input(params, visible_input(params, h, c),
                                 visible=visible)


def visible_mean_from_input(params, x: jax.Array, *,
                            visible: str = "bernoulli") -> jax.Array:
  """`visible_probs` given `x = visible_input(params, h, c)`."""
  pre = params["a"] + x
  if validation.visible_type(visible) == "bernoulli":
    return jax.nn.sigmoid(pre)
  return pre


def topdown_means(params, h: jax.Array, routing: routing_lib.Routing,
                  rounds: int) -> jax.Array:
  """`E[v | h; c]` of the Bernoulli visible units given the upper state `h`
  (..., Nh, Dh), with mean-field coupling coefficients.

  `c = c(v)` depends on the unknown `v` (docs/model.md section 4). The pass
  starts from uniform coefficients `c = 1/Nh` (the unrouted layer) and runs
  `rounds` mean-field rounds `c = c(m)`, `m = E[v | h; c]`: a fixed point of
  the alternation that generates the routed layer's own samples,
  deterministic, and exact when routing is off (r = 1: `c` is uniform
  whatever `v`). A stacked layer decodes its hidden states to the layer
  below with it.
  """
  nv, nh = params["W"].shape[:2]
  c = jnp.full(h.shape[:-2] + (nv, nh), 1.0 / nh, h.dtype)
  m = visible_probs(params, h, c)
  if routing.routed:
    for _ in range(rounds):
      c = routing_lib.route_visible(params, m, routing)
      m = visible_probs(params, h, c)
  return m


def reconstruct(params, v: jax.Array, c: jax.Array, *,
                visible: str = "bernoulli") -> jax.Array:
  """One deterministic up-down pass: `visible_probs(hidden_probs(v; c); c)`."""
  return visible_probs(params, hidden_probs(params, v, c), c, visible=visible)


def log_partition_given_hidden(params, h: jax.Array, c: jax.Array, *,
                               visible: str = "bernoulli") -> jax.Array:
  """`log Z_h(c) = log sum_v exp(-E(v, h; c))`, shape (...,).

  Needed by the Metropolis-Hastings correction (docs/model.md section 6). For
  Gaussian units the integral's constant `Nv Dv log(2 pi) / 2` is dropped:
  it cancels in every ratio this is used for.
  """
  return log_partition_from_input(params, h, visible_input(params, h, c),
                                  visible=visible)


def log_partition_from_input(params, h: jax.Array, x: jax.Array, *,
                             visible: str = "bernoulli") -> jax.Array:
  """`log_partition_given_hidden` given `x = visible_input(params, h, c)`."""
  hidden_bias = jnp.sum(params["b"] * h, axis=(-2, -1))
  a = params["a"]
  if validation.visible_type(visible) == "bernoulli":
    return hidden_bias + jnp.sum(jax.nn.softplus(a + x), axis=(-2, -1))
  return hidden_bias + jnp.sum(a * x + 0.5 * jnp.square(x), axis=(-2, -1))


def sample_hidden(key, params, v, c):
  """Draws `h ~ p(h | v; c)`; returns (sample, probabilities)."""
  return sample_hidden_from_input(key, params, hidden_input(params, v, c))


def sample_hidden_from_input(key, params, s):
  """`sample_hidden` given `s = hidden_input(params, v, c)`."""
  p = jax.nn.sigmoid(params["b"] + s)
  return jax.random.bernoulli(key, p).astype(p.dtype), p


def sample_visible(key, params, h, c, *, visible: str = "bernoulli"):
  """Draws `v ~ p(v | h; c)`; returns (sample, mean)."""
  return sample_visible_from_input(key, params, visible_input(params, h, c),
                                   visible=visible)


def sample_visible_from_input(key, params, x, *, visible: str = "bernoulli"):
  """`sample_visible` given `x = visible_input(params, h, c)`."""
  mean = visible_mean_from_input(params, x, visible=visible)
  if validation.visible_type(visible) == "bernoulli":
    return jax.random.bernoulli(key, mean).astype(mean.dtype), mean
  return mean + jax.random.normal(key, mean.shape, mean.dtype), mean
