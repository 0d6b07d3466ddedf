"""Centering (Melchior, Fischer & Wiskott 2016) of the unrouted layer's CD
gradient.

The centered energy of an RBM with effective weights `U` (Nv, Nh, Dh, Dv),

  E_c(v, h) = -sum_ij (h_j - lam_j)^T U_ij (v_i - mu_i)
              - a_c . (v - mu) - b_c . (h - lam),

is the ordinary energy with `a = a_c - sum_j U_ij^T lam_j` and `b = b_c -
sum_i U_ij mu_i` (plus a constant): the model family is unchanged, only
the gradient's geometry is. With the offsets `mu`, `lam` near the data
means of the units, the gradient of `U` is a covariance rather than a
second moment, which conditions the problem (Melchior et al. report
better and steadier likelihoods than plain CD/PCD).

capsjax keeps the ordinary parameters throughout: `centered_gradient`
maps the ordinary CD gradient to the ordinary-parameter step that a
centered SGD step (with or without momentum) takes, so the params pytree,
checkpoints, AIS and every other function see an ordinary layer. With
Adam, which scales coordinates separately, the mapped step is a
centering-preconditioned direction rather than the exact centered step.
The map needs the energy to be bilinear in v and h with fixed weights:
unrouted layers (every c_ij = 1/Nh) with Bernoulli visible units only.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from capsjax import energies
from capsjax import sampling
from capsjax import validation


@dataclasses.dataclass(frozen=True)
class Centering:
  """`train_step`'s centering options (static, hashable).

  rate: the offsets' sliding-average rate towards each minibatch's means
    (Melchior et al. use 0.01).
  weight_scale: the scale of the optimizer's `effective_weights` wrapper
    (1.0 without one): the parameters the centered step is taken in.
  """
  rate: float = 0.01
  weight_scale: float = 1.0

  def __post_init__(self):
    _check_rate(self.rate)
    if not (isinstance(self.weight_scale, (int, float))
            and self.weight_scale > 0):
      raise ValueError(f"weight_scale must be a number > 0; got "
                       f"{self.weight_scale!r}")


class Offsets(NamedTuple):
  visible: jax.Array  # (Nv, Dv): mu, the offset of the visible units
  hidden: jax.Array   # (Nh, Dh): lam, the offset of the hidden units


def init_offsets(params, data: Optional[jax.Array] = None) -> Offsets:
  """Offsets at the data's visible means (0.5 without `data`, (..., Nv,
  Dv)) and hidden means of 0.5, Melchior et al.'s initialization."""
  validation.param_shapes(params)
  dtype = params["W"].dtype
  if data is None:
    visible = jnp.full(params["a"].shape, 0.5, dtype)
  else:
    validation.visible(params, data, "data")
    visible = jnp.mean(data, axis=tuple(range(data.ndim - 2))).astype(dtype)
  return Offsets(visible, jnp.full(params["b"].shape, 0.5, dtype))


def update_offsets(offsets: Offsets, params, v: jax.Array,
                   rate: float) -> Offsets:
  """Moves the offsets a fraction `rate` towards the minibatch `v`'s means
  of the visible units and of the unrouted hidden probabilities."""
  rate = _check_rate(rate)
  axes = tuple(range(v.ndim - 2))
  p = energies.hidden_probs(params, v, sampling.shared_uniform(params,
                                                               v.dtype))
  return jax.tree.map(lambda old, new: old + rate * (new - old), offsets,
                      Offsets(jnp.mean(v, axis=axes), jnp.mean(p, axis=axes)))


def centered_gradient(grads, offsets: Offsets, *,
                      weight_scale: float = 1.0) -> dict:
  """Maps an unrouted layer's CD gradient (`cd_gradient`'s, descent sign)
  to the centered step, in the ordinary parameters.

  The optimizer moves `U = W / weight_scale` (`effective_weights(optimizer,
  weight_scale)`; 1 without it), and the RBM's weights are `kappa U` with
  `kappa = weight_scale / Nh` (1 with `weight_scale = Nh`). In U and the
  centered biases the gradient is, per block (i, j),

    g_U = grad_U - kappa (lam_j g_a_i^T + g_b_j mu_i^T),
    g_a = grad_a,   g_b = grad_b;

  a step `-eta (g_U, g_a, g_b)` of the centered parameters is, in the
  ordinary ones, `-eta (g_U, g_a - kappa g_U^T lam, g_b - kappa g_U mu)`,
  which this returns (the W entry mapped back from U). Linear in the
  gradient, so momentum accumulates centered steps too.
  """
  validation.param_shapes(grads)
  weight_scale = Centering(weight_scale=weight_scale).weight_scale
  kappa = weight_scale / grads["W"].shape[1]
  mu, lam = offsets
  g_u = grads["W"] * weight_scale - kappa * (
      jnp.einsum("jk,il->ijkl", lam, grads["a"])
      + jnp.einsum("jk,il->ijkl", grads["b"], mu))
  return {"W": g_u / weight_scale,
          "a": grads["a"] - kappa * jnp.einsum("ijkl,jk->il", g_u, lam),
          "b": grads["b"] - kappa * jnp.einsum("ijkl,il->jk", g_u, mu)}


def _check_rate(rate):
  if isinstance(rate, (int, float)) and not 0 < rate <= 1:
    raise ValueError(f"rate must be in (0, 1]; got {rate!r}")
  return rate
