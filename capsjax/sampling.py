"""Markov chains in the routed model: Gibbs with routing, and its MH correction.

Blackjax's shape: a `ChainState` NamedTuple, `init(params, v, ...)`, and
kernels `step(key, state, params, ...) -> (state, ChainInfo)`. Nothing is
jitted here; the caller jits (the keyword options are static).

* `gibbs_step`: the paper's alternation (MODEL.md section 5): h ~ p(h|v;c),
  v' ~ p(v|h;c), then c' = c(v') if `reroute` else c. It does not leave the
  routed model p(v) of section 4 invariant when routing is on.
* `mh_step`: the same proposal, corrected by Metropolis-Hastings (section 6)
  so that the routed model's joint `exp(-E(v, h; c(v)))` is invariant.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from capsjax import energies
from capsjax import routing
from capsjax import validation


class ChainState(NamedTuple):
  v: jax.Array             # (..., Nv, Dv): the visible state (a sample)
  coefficients: jax.Array  # (..., Nv, Nh): the c used for the next step;
                           # (Nv, Nh) when shared by every chain (uniform
                           # routing, r = 1), which the steps keep shared


class ChainInfo(NamedTuple):
  hidden: jax.Array           # (..., Nh, Dh): the h drawn in this step
  visible_mean: jax.Array     # (..., Nv, Dv): mean of the proposal p(v|h;c)
  acceptance_rate: jax.Array  # (...,): MH acceptance probability (1 for Gibbs)
  is_accepted: jax.Array      # (...,): bool


def init(params, v: jax.Array, num_iterations: int, **route_kwargs
         ) -> ChainState:
  """A chain at `v` with its routing coefficients c(v)."""
  return ChainState(v, routing.route_visible(params, v, num_iterations,
                                             **route_kwargs))


def gibbs_step(key, state: ChainState, params, *, num_iterations: int,
               reroute: bool = True, visible: str = "bernoulli"
               ) -> tuple[ChainState, ChainInfo]:
  """One step of the paper's alternation (uncorrected)."""
  key_h, key_v = jax.random.split(key)
  h, _ = energies.sample_hidden(key_h, params, state.v, state.coefficients)
  v, mean = energies.sample_visible(key_v, params, h, state.coefficients,
                                    visible=visible)
  shared = jnp.ndim(state.coefficients) == 2
  if reroute and num_iterations == 1:
    # c(v) is uniform for every v: no routing, and shared coefficients
    # (Nv, Nh) stay shared (one matrix product per conditional).
    shape = state.coefficients.shape[-2:]
    c = jnp.full(shape if shared else v.shape[:-2] + shape,
                 1.0 / shape[-1], state.coefficients.dtype)
  elif reroute:
    c = routing.route_visible(params, v, num_iterations)
  elif shared:  # keep as is
    c = state.coefficients
  else:  # keep c, broadcast to the chain's batch shape (a static shape)
    c = jnp.broadcast_to(state.coefficients,
                         v.shape[:-2] + state.coefficients.shape[-2:])
  ones = jnp.ones(v.shape[:-2], v.dtype)
  return ChainState(v, c), ChainInfo(h, mean, ones, ones.astype(bool))


def mh_log_ratio(params, v, v_new, h, c, c_new, *, visible="bernoulli"):
  """log of the MH acceptance ratio of MODEL.md section 6, shape (...,).

  `-E(v',h;c') - E(v,h;c') + E(v,h;c) + E(v',h;c)` with the terms that
  cancel (a.v, b.h, and the Gaussian |v - a|^2 / 2) removed analytically:
  since `s(v; c)` is bilinear, it equals `h . s(v + v'; c' - c)`. One
  contraction instead of four, and no cancellation of large energies.
  """
  interaction = jnp.sum(
      h * energies.hidden_input(params, v + v_new, c_new - c), axis=(-2, -1))
  def log_z(c_):
    return energies.log_partition_given_hidden(params, h, c_, visible=visible)
  return interaction + log_z(c) - log_z(c_new)


def mh_step(key, state: ChainState, params, *, num_iterations: int,
            visible: str = "bernoulli") -> tuple[ChainState, ChainInfo]:
  """One Gibbs h-step and one MH-corrected v-step; exact for the routed model.

  `state.coefficients` must be c(state.v) (as `init` makes it).
  """
  key_h, key_v, key_u = jax.random.split(key, 3)
  v, c = state
  h, _ = energies.sample_hidden(key_h, params, v, c)
  proposal, mean = energies.sample_visible(key_v, params, h, c,
                                             visible=visible)
  # With one iteration c(v') = c(v) = uniform: every proposal is accepted.
  c_new = (c if num_iterations == 1 else
           routing.route_visible(params, proposal, num_iterations))
  log_ratio = mh_log_ratio(params, v, proposal, h, c, c_new, visible=visible)
  state, acceptance, accept = metropolis_accept(
      key_u, log_ratio, state, ChainState(proposal, c_new))
  return state, ChainInfo(h, mean, acceptance, accept)


def metropolis_accept(key, log_ratio, current: ChainState,
                      proposed: ChainState):
  """Accepts each chain's proposal with probability min(1, exp(log_ratio)).

  Returns (state, acceptance probability, accepted?).
  """
  # log u < log_ratio, not u < acceptance: exact also when the ratio overflows.
  accept = jnp.log(jax.random.uniform(key, log_ratio.shape,
                                      log_ratio.dtype)) < log_ratio
  def select(new, old):
    if new is old:  # e.g. shared coefficients that no proposal changes
      return old
    return jnp.where(accept[..., None, None], new, old)
  state = jax.tree.map(select, proposed, current)
  return state, jnp.exp(jnp.minimum(log_ratio, 0.0)), accept


class RunInfo(NamedTuple):
  acceptance_rate: jax.Array  # (num_steps, ...): per step
  is_accepted: jax.Array      # (num_steps, ...): per step
  last: ChainInfo             # the last step's full info


def run(key, state: ChainState, params, num_steps: int, *, num_iterations: int,
        mh: bool = False, reroute: bool = True, visible: str = "bernoulli"
        ) -> tuple[ChainState, RunInfo]:
  """`num_steps` steps under `lax.scan`: the last state and a `RunInfo`.

  Only the per-step acceptance is stacked; the hidden samples and visible
  means are kept for the last step alone, so long chains use no more
  memory than one step.
  """
  num_steps = validation.positive_int("num_steps", num_steps)
  if mh:
    step = lambda k, s: mh_step(k, s, params, num_iterations=num_iterations,
                                visible=visible)
  else:
    step = lambda k, s: gibbs_step(k, s, params, num_iterations=num_iterations,
                                   reroute=reroute, visible=visible)

  def body(s, k):
    s, info = step(k, s)
    return s, (info.acceptance_rate, info.is_accepted)

  keys = jax.random.split(key, num_steps)
  state, (rates, accepted) = jax.lax.scan(body, state, keys[:-1])
  state, last = step(keys[-1], state)
  return state, RunInfo(
      jnp.concatenate([rates, last.acceptance_rate[None]]),
      jnp.concatenate([accepted, last.is_accepted[None]]), last)
