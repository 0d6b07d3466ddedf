"""Parallel tempering: a ladder of tempered chains with swaps, as a kernel.

Rung l samples `p_l(v, h) ∝ exp(-beta_l E(v, h; c(v)))` (AIS's path with
a uniform base model: `capsjax.likelihood`, module comment), the last rung
(beta = 1) the routed model itself. Each step moves every rung with the
exact tempered transition (`tempered_mh_step`: Gibbs for an unrouted
layer, MH-corrected for a routed one), then proposes to swap the states of
adjacent rungs, alternately the pairs (0, 1), (2, 3), ... and (1, 2),
(3, 4), ... (the deterministic even-odd scheme; Okabe et al. 2001, Syed et
al. 2019). A swap of x_l and x_{l+1} is accepted with probability

  min(1, exp(f_l(x_{l+1}) + f_{l+1}(x_l) - f_l(x_l) - f_{l+1}(x_{l+1}))),

`f_l(v) = beta_l a.v + sum_jk softplus(beta_l (b_jk + s_jk(v; c(v))))` the
rung's visible marginal. c(v) is routed with the untempered weights, so a
state carries its coefficients to any rung. The ladder leaves the product
of the rungs' distributions invariant, so its last rung samples the routed
model exactly (Desjardins et al. 2010 and Cho et al. 2010 train RBMs with
such persistent ladders).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from capsjax import energies
from capsjax import likelihood
from capsjax import routing as routing_lib
from capsjax import sampling
from capsjax import validation


class TemperingState(NamedTuple):
  ladder: sampling.ChainState  # (L, ..., Nv, Dv) / (L, ..., Nv, Nh): rung l
                               # at betas[l]; the last rung is the model's
  parity: jax.Array            # (): int32, which pairs swap next (0 or 1)

  @property
  def v(self) -> jax.Array:
    """The model's chains (beta = 1), (..., Nv, Dv)."""
    return self.ladder.v[-1]

  @property
  def coefficients(self) -> jax.Array:
    return self.ladder.coefficients[-1]


class TemperingInfo(NamedTuple):
  hidden: jax.Array           # (..., Nh, Dh): the model rung's h
  visible_mean: jax.Array     # (..., Nv, Dv): the model rung's proposal mean
  acceptance_rate: jax.Array  # (...,): the model rung's MH acceptance
  is_accepted: jax.Array      # (...,)
  swap_rate: jax.Array        # (L - 1, ...): acceptance probability of the
                              # swap of rungs l and l + 1 (NaN if not tried)


def _betas(betas) -> tuple[float, ...]:
  try:
    b = tuple(float(x) for x in betas)
  except TypeError as e:
    raise ValueError("betas must be a sequence of Python floats; got "
                     f"{betas!r}") from e
  if len(b) < 2 or b[-1] != 1.0 or b[0] <= 0 or np.any(np.diff(b) <= 0):
    raise ValueError("betas must increase strictly from a value > 0 to "
                     f"exactly 1, with at least 2 rungs; got {b}")
  return b


@dataclasses.dataclass(frozen=True)
class _Init:
  routing: routing_lib.Routing
  num_rungs: int

  def __call__(self, params, v) -> TemperingState:
    """Every rung at `v`."""
    validation.visible(params, v)
    c = routing_lib.route_visible(params, v, self.routing)
    def ladder(x):
      return jnp.broadcast_to(x, (self.num_rungs,) + x.shape)
    return TemperingState(sampling.ChainState(ladder(v), ladder(c)),
                          jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class _Refresh:
  routing: routing_lib.Routing

  def __call__(self, params, state: TemperingState) -> TemperingState:
    v = state.ladder.v
    c = routing_lib.route_visible(params, v, self.routing)
    return TemperingState(sampling.ChainState(v, c), state.parity)


def _rung_marginals(params, ladder, betas, routing):
  """`f_{l'}(x_l)` for l' in (l - 1, l, l + 1): three (L, ...) arrays."""
  c = sampling.conditional_coefficients(params, ladder, routing)
  s = params["b"] + energies.hidden_input(params, ladder.v, c)
  av = jnp.sum(params["a"] * ladder.v, axis=(-2, -1))
  def f(beta):
    bv = beta.reshape((-1,) + (1,) * (av.ndim - 1))
    bs = beta.reshape((-1,) + (1,) * (s.ndim - 1))
    return bv * av + jnp.sum(jax.nn.softplus(bs * s), axis=(-2, -1))
  b = jnp.asarray(betas, s.dtype)
  lower = jnp.concatenate([b[:1], b[:-1]])
  upper = jnp.concatenate([b[1:], b[-1:]])
  return f(lower), f(b), f(upper)


def _swap(key, ladder, parity, params, betas, routing):
  """The even-odd swap move; returns (ladder, swap acceptance (L-1, ...))."""
  num_rungs = len(betas)
  f_lower, f_same, f_upper = _rung_marginals(params, ladder, betas, routing)
  # Pair (l, l + 1): f_l(x_{l+1}) + f_{l+1}(x_l) - f_l(x_l) - f_{l+1}(x_{l+1}).
  log_ratio = f_lower[1:] + f_upper[:-1] - f_same[:-1] - f_same[1:]
  tried = (jnp.arange(num_rungs - 1) % 2) == parity
  tried = tried.reshape((-1,) + (1,) * (log_ratio.ndim - 1))
  u = jax.random.uniform(key, log_ratio.shape, log_ratio.dtype)
  accept = tried & (jnp.log(u) < log_ratio)  # (L - 1, ...)
  # Rung l takes its upper partner's state if pair (l, l+1) swaps, its lower
  # partner's if pair (l-1, l) swaps (pairs tried together never overlap).
  no = jnp.zeros_like(accept[:1])
  from_upper = jnp.concatenate([accept, no])
  from_lower = jnp.concatenate([no, accept])
  def select(x):
    m = (lambda a: a.reshape(a.shape + (1,) * (x.ndim - a.ndim)))
    up = jnp.concatenate([x[1:], x[-1:]])
    down = jnp.concatenate([x[:1], x[:-1]])
    return jnp.where(m(from_upper), up, jnp.where(m(from_lower), down, x))
  rate = jnp.where(tried, jnp.exp(jnp.minimum(log_ratio, 0.0)), jnp.nan)
  return jax.tree.map(select, ladder), rate


@dataclasses.dataclass(frozen=True)
class _Step:
  routing: routing_lib.Routing
  betas: tuple[float, ...]

  def __call__(self, key, state: TemperingState, params
               ) -> tuple[TemperingState, TemperingInfo]:
    key_move, key_swap = jax.random.split(key)
    base_bias = jnp.zeros_like(params["a"])
    keys = jax.random.split(key_move, len(self.betas))
    betas = jnp.asarray(self.betas, params["W"].dtype)
    ladder, info = jax.vmap(
        lambda k, s, beta: likelihood.tempered_mh_step(
            k, s, params, beta, base_bias, routing=self.routing)
    )(keys, state.ladder, betas)
    ladder, rate = _swap(key_swap, ladder, state.parity, params, self.betas,
                         self.routing)
    return (TemperingState(ladder, 1 - state.parity),
            TemperingInfo(info.hidden[-1], info.visible_mean[-1],
                          info.acceptance_rate[-1], info.is_accepted[-1],
                          rate))


def tempering(routing: routing_lib.Routing, betas, *,
              visible: str = "bernoulli") -> sampling.Kernel:
  """A parallel-tempering kernel over the inverse temperatures `betas`.

  Args:
    routing: the model's `Routing`.
    betas: increasing Python floats, the first > 0, the last exactly 1
      (the model), e.g. `tuple(np.linspace(0.5, 1, 10))`.
    visible: only "bernoulli" is supported.

  Returns:
    A `Kernel` named "tempering", exact for the routed model. Its state is
    a `TemperingState` (every rung's chains; `.v` and `.coefficients` are
    the model rung's), its info a `TemperingInfo`. Costs one transition
    per rung per step.
  """
  routing_lib.check_routing(routing)
  if validation.visible_type(visible) != "bernoulli":
    raise ValueError("tempering supports Bernoulli visible units only; got "
                     f"visible={visible!r}")
  betas = _betas(betas)
  return sampling.Kernel(_Init(routing, len(betas)), _Step(routing, betas),
                         routing, visible, "tempering", exact=True,
                         refresh=_Refresh(routing))
