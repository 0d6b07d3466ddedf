"""Predictions, squash and routing-by-agreement (Sabour et al. 2017, Proc. 1).

docs/model.md section 2. Logits are per example and per (lower, upper) capsule
pair; the softmax runs over the upper capsules.

Performance (BUILD_NOTES.md, benchmarks/cd_benchmark.py): routing is
memory-bound on the vote tensor, which each iteration reads twice. The batch
is therefore routed in chunks (`lax.map`) small enough that a chunk's votes
stay in cache for all the iterations, and inside a chunk the votes are laid
out upper-capsule-major, (C, Nh, Nv, Dh), so that both the weighted sum and
the agreement are batched matrix products with the batch axes leading (the
layout XLA's CPU dot emitter takes without copies). `route_visible` computes
each chunk's votes from `v` itself, so the whole batch's votes never exist.
Chunking is for CPUs only: on a GPU or TPU the batch is routed at once.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from capsjax import _sharding
from capsjax import validation

# Inside the square root so that squash and its gradient are finite at s = 0.
SQUASH_EPS = 1e-12

# On a CPU a batch whose votes exceed CHUNK_ABOVE_BYTES is routed in chunks
# of about CHUNK_BYTES of votes, which stay in cache through the iterations.
# Below it one pass over the whole batch is faster (no lax.map loop, no
# padding). Measured (benchmarks/cd_benchmark.py, docs/results.md section
# 7.5) on a 2-core Xeon with 2 MB of L2 per core: 49x16 -> 32x16 at batch
# 100 (10 MB of votes) is fastest unchunked, at batch 1,000 (100 MB) and
# Sabour's 1152x8 -> 10x16 at batch 128 (90 MB) in 4-8 MB chunks, 1.5-2.3x
# faster than unchunked.
CHUNK_ABOVE_BYTES = 16 * 2 ** 20
CHUNK_BYTES = 8 * 2 ** 20


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
  """Votes `u_hat[..., i, j, :] = W[i, j] @ v[..., i, :]`, (..., Nv, Nh, Dh).
  """
  validation.visible(params, v)
  return jnp.einsum("ijkl,...il->...ijk", params["W"], v)


# Agreement rules (docs/model.md section 2). Any deterministic c(v) keeps
# the routed model a proper energy model, so the rule is a free choice.
RULES = ("sabour", "cosine", "normalized")


@dataclasses.dataclass(frozen=True)
class Routing:
  """The routing options of a capsule layer: static, hashable, in the model.

  c(v), hence p(v), depends on them, so every function that routes takes
  the same `Routing`, and it is a static argument under `jax.jit`.

  Attributes:
    num_iterations: r >= 1, Procedure 1's iterations. 1 gives uniform
      coefficients c = 1 / Nh: the unrouted layer, an RBM.
    temperature: T > 0; every softmax is `softmax(logits / T)`. T = 1 is
      Sabour et al.'s routing; T -> infinity tends to uniform routing. Not
      in the paper: a variant for the routed-training study.
    rule: the agreement added to the logits each iteration.
      "sabour": `u_hat_ij . o_j` (Procedure 1). It grows with the vote
        norms, so routing hardens as a product of experts learns.
      "cosine": `cos(u_hat_ij, o_j)`, in [-1, 1] whatever the weights; the
        temperature sets its sharpness (T = 0.2 is `5 cos`).
      "normalized": Procedure 1 on the unit votes `u_hat_ij / |u_hat_ij|`
        (the votes' directions decide c; the energy and `inputs` keep the
        votes themselves).
      Neither scale-free rule's logits can grow past r - 1 in magnitude.
  """
  num_iterations: int = 3
  temperature: float = 1.0
  rule: str = "sabour"

  def __post_init__(self):
    r = self.num_iterations
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
      raise ValueError(
          f"Routing.num_iterations must be a Python int >= 1; got {r!r}")
    t = self.temperature
    if (isinstance(t, bool) or not isinstance(t, (int, float, np.floating))
        or not 0 < t < float("inf")):
      raise ValueError(
          f"Routing.temperature must be a Python float > 0; got {t!r}")
    if self.rule not in RULES:
      raise ValueError(f"Routing.rule must be one of {RULES}; got "
                       f"{self.rule!r}")
    # Canonical Python types, so that equal options hash (and jit) alike.
    object.__setattr__(self, "num_iterations", int(r))
    object.__setattr__(self, "temperature", float(t))

  @property
  def routed(self) -> bool:
    """Whether c depends on v (False for one iteration: uniform routing)."""
    return self.num_iterations > 1


def check_routing(r) -> Routing:
  """Checks that r is a `Routing` (0.1 took a bare num_iterations)."""
  if not isinstance(r, Routing):
    hint = (f" (0.2 moved num_iterations into it: capsjax.Routing("
            f"num_iterations={r!r}); see CHANGELOG.md)"
            if isinstance(r, (int, np.integer)) and not isinstance(r, bool)
            else "")
    raise ValueError(f"routing must be a capsjax.Routing; got {r!r}{hint}")
  return r


class RoutingResult(NamedTuple):
  coefficients: jax.Array  # (..., Nv, Nh): softmax(logits) over upper capsules
  logits: jax.Array        # (..., Nv, Nh): coefficients = softmax(logits / T)
  inputs: jax.Array        # (..., Nh, Dh): s_j = sum_i c_ij u_hat_ij
  outputs: jax.Array       # (..., Nh, Dh): squash(s_j)


def _votes_by_upper(W, v):
  """Votes of a flat batch v (C, Nv, Dv), laid out (C, Nh, Nv, Dh).

  One batched product over the lower capsules i: (C, Dv) x (Dv, Nh Dh).
  """
  nv, nh, dh, dv = W.shape
  u = lax.dot_general(jnp.swapaxes(v, 0, 1), W.reshape(nv, nh * dh, dv),
                      (((2,), (2,)), ((0,), (0,))))  # (Nv, C, Nh Dh)
  return jnp.transpose(u.reshape(nv, -1, nh, dh), (1, 2, 0, 3))


def _weighted_votes(c, u):
  """`s_j = sum_i c_ij u_ij`: c (C, Nh, Nv), u (C, Nh, Nv, Dh) -> (C, Nh, Dh).
  """
  return lax.dot_general(c, u, (((2,), (2,)), ((0, 1), (0, 1))))


def _agreement(u, o):
  """`u_ij . o_j`: u (C, Nh, Nv, Dh), o (C, Nh, Dh) -> (C, Nh, Nv)."""
  return lax.dot_general(u, o, (((3,), (2,)), ((0, 1), (0, 1))))


def _inverse_norm(x):
  """`1 / |x|` over the last axis; 0 where x = 0 (a blank patch's votes,
  whose agreement is then 0: uniform routing), with gradient 0 there.

  Computed in at least float32, as `squash` (the caller casts the product
  back), and without an epsilon: the gradient of `x / sqrt(|x|^2 + eps)`
  at 0 is `1 / sqrt(eps)`, which overflows float16.
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  sq = jnp.sum(jnp.square(x), axis=-1)
  nonzero = sq > 0
  # The inner where keeps rsqrt's infinite gradient at 0 out of the chain.
  return jnp.where(nonzero, lax.rsqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def _route_chunk(u, routing, stop_inner_gradients):
  """Procedure 1 on votes laid out (C, Nh, Nv, Dh); returns (logits, c, s)."""
  votes_for_logits = lax.stop_gradient(u) if stop_inner_gradients else u
  t = routing.temperature
  if routing.rule == "normalized":
    votes_for_logits = (votes_for_logits * _inverse_norm(votes_for_logits)[
        ..., None]).astype(u.dtype)
  elif routing.rule == "cosine":
    inv_u = _inverse_norm(votes_for_logits)  # (C, Nh, Nv), computed once

  def coefficients(logits):
    if t == 1:
      return jax.nn.softmax(logits, axis=1)  # Sabour's routing, unchanged
    return jax.nn.softmax(logits / t, axis=1)

  def update(_, logits):
    s = _weighted_votes(coefficients(logits), votes_for_logits)
    if routing.rule == "cosine":
      # squash keeps directions: cos(u, o) = cos(u, s).
      return logits + (_agreement(votes_for_logits, s) * inv_u
                       * _inverse_norm(s)[..., None]).astype(logits.dtype)
    return logits + _agreement(votes_for_logits, squash(s))

  # Static trip count, unrolled: a rolled loop carries the votes through a
  # while loop, and XLA copies them into the loop's layout (measured 1.5x
  # slower at r = 3). zeros_like keeps the votes' sharding, so that the
  # logits have one type under explicit sharding.
  logits = lax.fori_loop(0, routing.num_iterations - 1, update,
                         jnp.zeros_like(u[..., 0]), unroll=True)
  c = coefficients(logits)
  return logits, c, _weighted_votes(c, u)


def _chunk_size(x, bytes_per_example):
  """Examples per chunk of the flat batch x, or None for no chunking.

  Chunking is a CPU cache trick: on a GPU or TPU `lax.map` would run the
  chunks one after another, so there the whole batch is routed at once.
  A batch sharded over a mesh's explicit axes is not chunked either (the
  reshape into chunks would have to re-shard it; each device's part is
  already smaller).
  """
  if (jax.default_backend() != "cpu" or _sharding.is_sharded(x)
      or x.shape[0] * bytes_per_example <= CHUNK_ABOVE_BYTES):
    return None
  return max(1, CHUNK_BYTES // max(1, bytes_per_example))


def _map_batch(f, x, bytes_per_example):
  """`f` over chunks of the flat batch x (B, ...) via `lax.map` (see
  `_chunk_size`).

  Chunks hold about `CHUNK_BYTES / bytes_per_example` examples, evened out
  (the batch is zero-padded to a whole number of chunks, then cut back).
  """
  max_chunk = _chunk_size(x, bytes_per_example)
  if max_chunk is None:
    return f(x)
  batch = x.shape[0]
  num_chunks = -(-batch // max_chunk)
  chunk = -(-batch // num_chunks)
  pad = num_chunks * chunk - batch
  if pad:
    x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
  out = lax.map(f, x.reshape((num_chunks, chunk) + x.shape[1:]))
  return jax.tree.map(
      lambda y: y.reshape((num_chunks * chunk,) + y.shape[2:])[:batch], out)


def _result(logits, c, s, batch_shape):
  """A `RoutingResult` from chunk-layout (B, Nh, Nv) / (B, Nh, Dh) arrays."""
  def unflat(x):
    return x.reshape(batch_shape + x.shape[1:])
  c = unflat(jnp.swapaxes(c, 1, 2))
  s = unflat(s)
  return RoutingResult(coefficients=c,
                       logits=unflat(jnp.swapaxes(logits, 1, 2)),
                       inputs=s, outputs=squash(s))


def route(u_hat: jax.Array, routing: Routing, *,
          stop_inner_gradients: bool = False) -> RoutingResult:
  """Routing by agreement with a static number of iterations.

  Args:
    u_hat: votes, shape (..., Nv, Nh, Dh).
    routing: a `Routing`; `num_iterations=1` gives uniform coefficients.
    stop_inner_gradients: if True, no gradient flows through the logits
      (the coefficients are treated as constants; `inputs` and `outputs`
      still depend on `u_hat` through the last weighted sum).

  Returns:
    A `RoutingResult`. The loop runs the r - 1 logit updates of Procedure 1
    and then computes c, s and o once more; Procedure 1's final logit update
    is skipped because nothing reads it.
  """
  check_routing(routing)
  validation.check_floating("u_hat", u_hat)
  if jnp.ndim(u_hat) < 3:
    raise ValueError(
        f"u_hat must have shape (..., Nv, Nh, Dh); got {jnp.shape(u_hat)}")
  if routing.num_iterations == 1:
    # Uniform; written out because XLA would constant-fold softmax(zeros),
    # slowly for large batches.
    nh = u_hat.shape[-2]
    c = jnp.zeros_like(u_hat[..., 0]) + 1.0 / nh
    s = jnp.sum(u_hat, axis=-3) / nh
    return RoutingResult(coefficients=c, logits=jnp.zeros_like(c), inputs=s,
                         outputs=squash(s))
  batch_shape = u_hat.shape[:-3]
  nv, nh, dh = u_hat.shape[-3:]
  flat = u_hat.reshape((-1, nv, nh, dh))
  out = _map_batch(
      lambda u: _route_chunk(jnp.transpose(u, (0, 2, 1, 3)), routing,
                             stop_inner_gradients),
      flat, nv * nh * dh * u_hat.dtype.itemsize)
  return _result(*out, batch_shape)


def route_visible(params, v: jax.Array, routing: Routing, *,
                  stop_inner_gradients: bool = False) -> jax.Array:
  """The coefficients c(v) of the routed model (docs/model.md section 4).

  Equal to `route(predictions(params, v), routing).coefficients`, but each
  chunk of the batch computes its own votes, so the whole batch's vote
  tensor is never materialized.
  """
  return route_from_visible(params, v, routing,
                            stop_inner_gradients=stop_inner_gradients
                            ).coefficients


def route_from_visible(params, v: jax.Array, routing: Routing, *,
                       stop_inner_gradients: bool = False) -> RoutingResult:
  """`route(predictions(params, v), routing)`, votes made chunk by chunk."""
  check_routing(routing)
  validation.visible(params, v)
  W = params["W"]
  nv, nh, dh, _ = W.shape
  if routing.num_iterations == 1:  # uniform: no votes needed for c
    s = jnp.einsum("...il,ijkl->...jk", v, W) / nh
    c = uniform_coefficients(W, v)
    return RoutingResult(coefficients=c, logits=jnp.zeros_like(c), inputs=s,
                         outputs=squash(s))
  batch_shape = v.shape[:-2]
  dtype = jnp.result_type(W, v)
  W = W.astype(dtype)
  flat = v.reshape((-1,) + v.shape[-2:]).astype(dtype)
  out = _map_batch(
      lambda x: _route_chunk(_votes_by_upper(W, x), routing,
                             stop_inner_gradients),
      flat, nv * nh * dh * dtype.itemsize)
  return _result(*out, batch_shape)


def uniform_coefficients(W, v) -> jax.Array:
  """`c = 1 / Nh` for every example of v (..., Nv, Dv): (..., Nv, Nh).

  Built from v (`zeros_like`), so that it has v's batch sharding.
  """
  nh = W.shape[1]
  dtype = jnp.result_type(W, v)
  return jnp.zeros_like(v[..., :1], dtype) + jnp.full(W.shape[:2], 1.0 / nh,
                                                      dtype)


def routing_entropy(c: jax.Array) -> jax.Array:
  """Entropy in nats of each lower capsule's coefficients, shape (..., Nv).

  log(Nh) for uniform routing, 0 for hard routing.
  """
  return -jnp.sum(jax.scipy.special.xlogy(c, c), axis=-1)


class RoutingParse(NamedTuple):
  """Whether routing parses images (`routing_parse`)."""
  parse_fraction: jax.Array     # share of qualifying capsules that parse
  num_qualifying: jax.Array     # lower capsules active often enough
  class_information: jax.Array  # nats, mean over qualifying capsules


def routing_parse(c: jax.Array, v: jax.Array, labels: jax.Array | None = None,
                  *, num_classes: int = 10, min_active: int = 20,
                  max_modal_share: float = 0.8) -> RoutingParse:
  """Does routing change with the image, or is it a fixed partition?

  Each example's lower capsule i chooses its upper capsule `argmax_j c_ij`;
  only examples in which capsule i is active (some `v_i != 0`; a blank
  patch routes uniformly) count. A capsule qualifies when it is active in
  at least `min_active` examples, and it *parses* when its most common
  choice takes less than `max_modal_share` of them.

  Args:
    c: coefficients (B, Nv, Nh) of B examples (e.g. 1,000 test digits).
    v: their visible states (B, Nv, Dv).
    labels: optional int classes (B,) in [0, num_classes).
    num_classes, min_active, max_modal_share: static under `jit` (pass
      them in `static_argnames`; `num_classes` sets a shape).

  Returns:
    A `RoutingParse`: the fraction of qualifying capsules that parse (0 for
    a fixed partition; NaN when none qualifies), their number, and the
    mutual information in nats between the class and the choice, over the
    examples where the capsule is active (the plug-in estimate, biased
    upward by about (classes - 1)(Nh - 1) / (2 n) for n examples; 0 for a
    fixed partition; NaN without labels or qualifying capsules), averaged
    over the qualifying capsules.
  """
  if c.ndim != 3 or v.ndim != 3 or c.shape[:2] != v.shape[:2]:
    raise ValueError(f"c must be (B, Nv, Nh) and v (B, Nv, Dv) with equal "
                     f"B and Nv; got {c.shape} and {v.shape}")
  if labels is not None and jnp.shape(labels) != c.shape[:1]:
    raise ValueError(f"labels must be (B,) = {c.shape[:1]}; got "
                     f"{jnp.shape(labels)}")
  active = jnp.any(v != 0, axis=-1).astype(jnp.float32)          # (B, Nv)
  choice = jax.nn.one_hot(jnp.argmax(c, axis=-1), c.shape[-1])   # (B, Nv, Nh)
  counts = jnp.einsum("bi,bij->ij", active, choice)              # (Nv, Nh)
  n = jnp.sum(counts, axis=-1)
  qualifying = n >= min_active
  num_qualifying = jnp.sum(qualifying)
  parses = jnp.max(counts, axis=-1) < max_modal_share * n

  def mean_over_qualifying(x):
    return jnp.where(num_qualifying > 0,
                     jnp.sum(jnp.where(qualifying, x, 0.0))
                     / jnp.maximum(num_qualifying, 1), jnp.nan)

  if labels is None:
    info = jnp.nan
  else:
    y = jax.nn.one_hot(labels, num_classes)                      # (B, K)
    joint = jnp.einsum("bi,bk,bij->ikj", active, y, choice)      # (Nv, K, Nh)
    p = joint / jnp.maximum(n, 1)[:, None, None]
    outer = jnp.sum(p, axis=2, keepdims=True) * jnp.sum(p, axis=1,
                                                        keepdims=True)
    ratio = jnp.where(p > 0, p / jnp.where(p > 0, outer, 1.0), 1.0)
    info = mean_over_qualifying(jnp.sum(p * jnp.log(ratio), axis=(1, 2)))
  return RoutingParse(
      parse_fraction=mean_over_qualifying(parses.astype(jnp.float32)),
      num_qualifying=num_qualifying,
      class_information=jnp.asarray(info, jnp.float32))
