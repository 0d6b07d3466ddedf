"""Predictions, squash and routing-by-agreement (Sabour et al. 2017, Procedure 1).

MODEL.md section 2. Logits are per example and per (lower, upper) capsule
pair; the softmax runs over the upper capsules.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from capsjax import validation

# Inside the square root so that squash and its gradient are finite at s = 0.
SQUASH_EPS = 1e-12


def squash(s: jax.Array, axis: int = -1) -> jax.Array:
  """`|s|^2 / (1 + |s|^2) * s / |s|` over `axis`, finite (with gradient) at 0.

  Half-precision inputs are computed in float32 (the epsilon and the
  gradient of the norm at 0 do not fit in float16) and cast back.
  """
  x = s.astype(jnp.promote_types(s.dtype, jnp.float32))
  norm_sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  out = x * (norm_sq / (1.0 + norm_sq)) * lax.rsqrt(norm_sq + SQUASH_EPS)
  return out.astype(s.dtype)


def predictions(params, v: jax.Array) -> jax.Array:
  """Votes `u_hat[..., i, j, :] = W[i, j] @ v[..., i, :]`, shape (..., Nv, Nh, Dh)."""
  validation.visible(params, v)
  return jnp.einsum("ijkl,...il->...ijk", params["W"], v)


class RoutingResult(NamedTuple):
  coefficients: jax.Array  # (..., Nv, Nh): softmax(logits) over upper capsules
  logits: jax.Array        # (..., Nv, Nh): the logits that gave `coefficients`
  inputs: jax.Array        # (..., Nh, Dh): s_j = sum_i c_ij u_hat_ij
  outputs: jax.Array       # (..., Nh, Dh): squash(s_j)


def _weighted_votes(c, u_hat):
  return jnp.einsum("...ij,...ijk->...jk", c, u_hat)


def _agreement(u_hat, o):
  return jnp.einsum("...ijk,...jk->...ij", u_hat, o)


def route(u_hat: jax.Array, num_iterations: int, *,
          stop_inner_gradients: bool = False) -> RoutingResult:
  """Routing by agreement with a static number of iterations.

  Args:
    u_hat: votes, shape (..., Nv, Nh, Dh).
    num_iterations: r >= 1, a Python int. r = 1 gives uniform coefficients.
    stop_inner_gradients: if True, no gradient flows through the logits
      (the coefficients are treated as constants; `inputs` and `outputs`
      still depend on `u_hat` through the last weighted sum).

  Returns:
    A `RoutingResult`. The loop runs the r - 1 logit updates of Procedure 1
    and then computes c, s and o once more; Procedure 1's final logit update
    is skipped because nothing reads it.
  """
  r = validation.num_iterations(num_iterations)
  validation.check_floating("u_hat", u_hat)
  if jnp.ndim(u_hat) < 3:
    raise ValueError(
        f"u_hat must have shape (..., Nv, Nh, Dh); got {jnp.shape(u_hat)}")
  votes_for_logits = lax.stop_gradient(u_hat) if stop_inner_gradients else u_hat

  def update(_, logits):
    c = jax.nn.softmax(logits, axis=-1)
    o = squash(_weighted_votes(c, votes_for_logits))
    return logits + _agreement(votes_for_logits, o)

  logits = jnp.zeros(u_hat.shape[:-1], u_hat.dtype)
  if r == 1:
    # Uniform; written out because XLA would constant-fold softmax(zeros),
    # slowly for large batches.
    c = jnp.full(logits.shape, 1.0 / logits.shape[-1], u_hat.dtype)
  else:
    # Static trip count: lax lowers it to a scan, so reverse-mode AD works.
    logits = lax.fori_loop(0, r - 1, update, logits)
    c = jax.nn.softmax(logits, axis=-1)
  s = _weighted_votes(c, u_hat)
  return RoutingResult(coefficients=c, logits=logits, inputs=s,
                       outputs=squash(s))


def route_visible(params, v: jax.Array, num_iterations: int, **kwargs
                  ) -> jax.Array:
  """The coefficients c(v) of the routed model (MODEL.md section 4)."""
  return route(predictions(params, v), num_iterations, **kwargs).coefficients


def routing_entropy(c: jax.Array) -> jax.Array:
  """Entropy in nats of each lower capsule's coefficients, shape (..., Nv).

  log(Nh) for uniform routing, 0 for hard routing.
  """
  return -jnp.sum(jax.scipy.special.xlogy(c, c), axis=-1)
