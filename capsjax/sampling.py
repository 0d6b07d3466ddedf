"""Markov chains in the routed model: kernels as values (blackjax's shape).

A kernel is a `Kernel` NamedTuple: `init(params, v) -> ChainState`,
`step(key, state, params) -> (ChainState, ChainInfo)`, and the `routing` and
`visible` it was built with, so that a function that takes a kernel needs
nothing else about the model. Nothing is jitted here; the caller jits (a
kernel is hashable, a static argument).

* `gibbs(routing, ...)`: the paper's alternation (docs/model.md section 5):
  h ~ p(h|v;c), v' ~ p(v|h;c), then c' = c(v') if `reroute` else c. It does
  not leave the routed model p(v) of section 4 invariant when routing is on.
* `mh(routing, ...)`: the same proposal, corrected by Metropolis-Hastings
  (section 6) so that the routed model's joint `exp(-E(v, h; c(v)))` is
  invariant.

With one routing iteration c is uniform for every v: both kernels are then
exact block Gibbs sampling of an RBM, and internally use one (Nv, Nh)
matrix for the whole batch (one matrix product per conditional).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from capsjax import energies
from capsjax import routing as routing_lib
from capsjax import validation


class ChainState(NamedTuple):
  v: jax.Array             # (..., Nv, Dv): the visible state (a sample)
  coefficients: jax.Array  # (..., Nv, Nh): the c used for the next step
  # (..., Nh, Dh): s(v; c) = hidden_input(params, v, c), or None. Routing
  # computes it with c (`RoutingResult.inputs`), so the kernels of a routed
  # layer carry it and their next h-step needs no contraction. A step keeps
  # whichever the state had (an array or None: a scan's carry keeps its
  # type); like c, it belongs to the parameters it was made with.
  inputs: Optional[jax.Array] = None


class ChainInfo(NamedTuple):
  hidden: jax.Array           # (..., Nh, Dh): the h drawn in this step
  visible_mean: jax.Array     # (..., Nv, Dv): mean of the proposal p(v|h;c)
  acceptance_rate: jax.Array  # (...,): MH acceptance probability (1 for Gibbs)
  is_accepted: jax.Array      # (...,): bool


class Kernel(NamedTuple):
  """A Markov kernel of the routed model and the options it was built with.

  A state has fields or properties `v` and `coefficients`: the chains of
  the model itself (for a tempering ladder, those at inverse temperature 1).
  """
  init: Callable    # (params, v) -> state
  step: Callable    # (key, state, params) -> (state, info)
  routing: routing_lib.Routing
  visible: str
  name: str         # "gibbs", "mh" or "tempering"
  exact: bool       # leaves the routed model p(v) of docs/model.md section 4
                    # invariant (MH, or any kernel of the unrouted layer)
  refresh: Callable  # (params, state) -> state: the coefficients recomputed
                     # under new parameters (a persistent chain's, in PCD)


# The kernels' functions are frozen dataclasses, not closures, so that two
# kernels built with the same options are equal and hash alike: a kernel is
# a static argument under jit and must not recompile when rebuilt.


def chain_at(params, v, routing: routing_lib.Routing) -> ChainState:
  """A chain state at `v`: c(v) and, for a routed layer, s(v; c(v))."""
  if not routing.routed:  # nothing to reuse: s is one shared-c matmul
    return ChainState(v, routing_lib.route_visible(params, v, routing))
  result = routing_lib.route_from_visible(params, v, routing)
  return ChainState(v, result.coefficients, result.inputs)


def _like(state: ChainState, new: ChainState) -> ChainState:
  """`new` with `state`'s kind of `inputs` (an array or None)."""
  return new._replace(inputs=None) if state.inputs is None else new


def without_inputs(state):
  """A persistent chain as training stores it: without the carried s,
  which the next update's `refresh` recomputes under the new parameters
  (so checkpoints keep the shape (v, c))."""
  if isinstance(state, ChainState):
    return state._replace(inputs=None)
  return state


def moved_keeping_coefficients(params, state: ChainState, v, c
                               ) -> ChainState:
  """`state` moved to `v` with its coefficients kept (whatever their
  shape, broadcast to v's batch) and, if it carries s, s(v; c) for the
  conditionals' `c` (for uniform routing the shared matrix)."""
  new = ChainState(v, jnp.broadcast_to(
      state.coefficients, v.shape[:-2] + state.coefficients.shape[-2:]))
  if state.inputs is not None:
    new = new._replace(inputs=energies.hidden_input(params, v, c))
  return new


def state_input(params, state: ChainState, c) -> jax.Array:
  """`s(state.v; c)`: the carried `state.inputs`, or computed."""
  if state.inputs is not None:
    return state.inputs
  return energies.hidden_input(params, state.v, c)


@dataclasses.dataclass(frozen=True)
class _Init:
  routing: routing_lib.Routing

  def __call__(self, params, v) -> ChainState:
    """A chain at `v` with its routing coefficients c(v)."""
    validation.visible(params, v)
    return chain_at(params, v, self.routing)


@dataclasses.dataclass(frozen=True)
class _Refresh:
  routing: routing_lib.Routing

  def __call__(self, params, state: ChainState) -> ChainState:
    return _like(state, chain_at(params, state.v, self.routing))


def conditional_coefficients(params, state, routing):
  """The c a step's conditionals use: the state's, or for uniform routing
  one (Nv, Nh) matrix shared by every chain (one RBM matrix product per
  conditional instead of per-example contractions; same values)."""
  if routing.routed:
    return state.coefficients
  return shared_uniform(params, state.coefficients.dtype)


def shared_uniform(params, dtype) -> jax.Array:
  """c = 1 / Nh as one (Nv, Nh) matrix shared by a whole batch."""
  return jnp.full(params["W"].shape[:2], 1.0 / params["W"].shape[1], dtype)


def gibbs_info(h, mean, v) -> ChainInfo:
  """The `ChainInfo` of a step whose proposal is always accepted."""
  ones = jnp.ones(v.shape[:-2], v.dtype)
  return ChainInfo(h, mean, ones, ones.astype(bool))


@dataclasses.dataclass(frozen=True)
class _GibbsStep:
  routing: routing_lib.Routing
  visible: str
  reroute: bool

  def __call__(self, key, state: ChainState, params
               ) -> tuple[ChainState, ChainInfo]:
    """One step of the paper's alternation (uncorrected)."""
    key_h, key_v = jax.random.split(key)
    c = conditional_coefficients(params, state, self.routing)
    h, _ = energies.sample_hidden_from_input(
        key_h, params, state_input(params, state, c))
    v, mean = energies.sample_visible(key_v, params, h, c,
                                      visible=self.visible)
    if self.reroute and self.routing.routed:
      new = _like(state, chain_at(params, v, self.routing))
    else:  # c is unchanged (or uniform)
      new = moved_keeping_coefficients(params, state, v, c)
    return new, gibbs_info(h, mean, v)


@dataclasses.dataclass(frozen=True)
class _MHStep:
  routing: routing_lib.Routing
  visible: str
  block_fraction: float = 1.0

  def __call__(self, key, state: ChainState, params
               ) -> tuple[ChainState, ChainInfo]:
    """One Gibbs h-step and one MH-corrected v-step; exact for the routed
    model. `state.coefficients` must be c(state.v) (as `init` makes it)."""
    if not self.routing.routed:  # every proposal is accepted: plain Gibbs
      return _GibbsStep(self.routing, self.visible, True)(key, state, params)
    return mh_transition(key, state, params, self.routing,
                         visible=self.visible,
                         block_fraction=self.block_fraction)


def gibbs(routing: routing_lib.Routing, *, visible: str = "bernoulli",
          reroute: bool = True) -> Kernel:
  """The paper's alternation (docs/model.md section 5) as a kernel.

  `reroute`: recompute c = c(v') after each visible sample; if False, c
  stays the chain's initial coefficients. Exact only for the unrouted
  layer (`routing.num_iterations == 1`).
  """
  routing_lib.check_routing(routing)
  visible = validation.visible_type(visible)
  return Kernel(_Init(routing), _GibbsStep(routing, visible, bool(reroute)),
                routing, visible, "gibbs", exact=not routing.routed,
                refresh=_Refresh(routing))


def mh(routing: routing_lib.Routing, *, visible: str = "bernoulli",
       block_fraction: float = 1.0) -> Kernel:
  """The Metropolis-Hastings-corrected kernel (docs/model.md section 6):
  exact.

  `block_fraction` in (0, 1]: each step proposes new states for a random
  subset of the lower capsules, each capsule independently with this
  probability, and keeps the others (docs/model.md section 6, blocked
  proposals). 1 proposes the whole image. The subset does not depend on
  the state, so every step is still exact; a smaller block is accepted
  more often (the acceptance ratio multiplies over fewer capsules) and
  moves less.
  """
  routing_lib.check_routing(routing)
  visible = validation.visible_type(visible)
  return Kernel(_Init(routing),
                _MHStep(routing, visible, check_block_fraction(block_fraction)),
                routing, visible, "mh", exact=True,
                refresh=_Refresh(routing))


def check_block_fraction(block_fraction) -> float:
  """`block_fraction` as a Python float in (0, 1], or a one-line error."""
  if (isinstance(block_fraction, bool)
      or not isinstance(block_fraction, (int, float, np.floating))
      or not 0 < block_fraction <= 1):
    raise ValueError("block_fraction must be a Python float in (0, 1]; got "
                     f"{block_fraction!r}")
  return float(block_fraction)


def check_kernel(kernel) -> Kernel:
  """Checks that `kernel` is a `Kernel` (`gibbs`, `mh`, `tempering`)."""
  if not isinstance(kernel, Kernel):
    raise ValueError("kernel must be a capsjax.gibbs(...), capsjax.mh(...) "
                     f"or capsjax.tempering(...) kernel; got "
                     f"{type(kernel).__name__}")
  return kernel


def mh_transition(key, state: ChainState, params, routing, *,
                  visible: str = "bernoulli", routing_params=None,
                  input_scale=1.0, block_fraction: float = 1.0
                  ) -> tuple[ChainState, ChainInfo]:
  """The routed MH step of docs/model.md section 6 for the layer `params`.

  The proposals are routed with `routing_params` (default `params`), whose
  s the carried `state.inputs` are; `input_scale` turns them into
  `params`' s. AIS passes its tempered parameters (`beta W`) as `params`,
  the model's as `routing_params`, and beta. `block_fraction` < 1 proposes
  a random subset of the lower capsules (`mh`). Costs one routing of the
  proposals and two c-scaled contractions, `x(h; c)` and `x(h; c')`
  (see `mh_log_ratio`).
  """
  if routing_params is None:
    routing_params = params
  if block_fraction < 1:
    key, key_block = jax.random.split(key)
  key_h, key_v, key_u = jax.random.split(key, 3)
  v, c = state.v, state.coefficients
  s = (energies.hidden_input(params, v, c) if state.inputs is None
       else input_scale * state.inputs)
  h, _ = energies.sample_hidden_from_input(key_h, params, s)
  x = energies.visible_input(params, h, c)
  proposal, mean = energies.sample_visible_from_input(key_v, params, x,
                                                      visible=visible)
  block = None
  if block_fraction < 1:  # (..., Nv, 1): 1 where the capsule is proposed
    block = jax.random.bernoulli(key_block, block_fraction,
                                 v.shape[:-1])[..., None].astype(v.dtype)
    proposal = v + block * (proposal - v)
  new = _like(state, chain_at(routing_params, proposal, routing))
  log_ratio = _log_ratio_from_inputs(
      params, v, proposal, h, x,
      energies.visible_input(params, h, new.coefficients), visible, block)
  state, acceptance, accept = metropolis_accept(key_u, log_ratio, state, new)
  return state, ChainInfo(h, mean, acceptance, accept)


def mh_log_ratio(params, v, v_new, h, c, c_new, *, visible="bernoulli"):
  """log of the MH acceptance ratio of docs/model.md section 6, shape (...,).

  `-E(v',h;c') - E(v,h;c') + E(v,h;c) + E(v',h;c)` with the terms that
  cancel (a.v, b.h, and the Gaussian |v - a|^2 / 2) removed analytically:
  since `s(v; c)` is bilinear, it equals `h . s(v + v'; c' - c)`, and
  `h . s(y; c) = y . x(h; c)` with `x = visible_input`: so the ratio needs
  only `x(h; c)` and `x(h; c')`, which the proposal and `log Z_h` need
  anyway.
  """
  return _log_ratio_from_inputs(params, v, v_new, h,
                                energies.visible_input(params, h, c),
                                energies.visible_input(params, h, c_new),
                                visible)


def _log_ratio_from_inputs(params, v, v_new, h, x, x_new, visible,
                           block=None):
  """`mh_log_ratio` given `x = x(h; c)` and `x_new = x(h; c')`.

  With `block` (..., Nv, 1), 1 for the lower capsules the proposal drew
  and 0 for those it kept (v' = v there), the proposal density and its
  reverse are products over the block alone:
  `log r = sum_i [v_i . (x'_i - x_i)
                  + block_i (v'_i . (x'_i - x_i) + z_i(x) - z_i(x'))]`
  with `z_i` capsule i's part of `log Z_h` (the b.h parts cancel). A full
  block is the whole-image ratio above.
  """
  if block is None:
    interaction = jnp.sum((v + v_new) * (x_new - x), axis=(-2, -1))
    def log_z(x_):
      return energies.log_partition_from_input(params, h, x_,
                                               visible=visible)
    return interaction + log_z(x) - log_z(x_new)
  a = params["a"]
  if validation.visible_type(visible) == "bernoulli":
    def z(x_):  # per visible neuron
      return jax.nn.softplus(a + x_)
  else:
    def z(x_):
      return a * x_ + 0.5 * jnp.square(x_)
  dx = x_new - x
  return jnp.sum(v * dx + block * (v_new * dx + z(x) - z(x_new)),
                 axis=(-2, -1))


def metropolis_accept(key, log_ratio, current: ChainState,
                      proposed: ChainState):
  """Accepts each chain's proposal with probability min(1, exp(log_ratio)).

  Returns (state, acceptance probability, accepted?).
  """
  # log u < log_ratio, not u < acceptance: exact also when the ratio overflows.
  u = jax.random.uniform(key, log_ratio.shape, log_ratio.dtype)
  accept = jnp.log(u) < log_ratio
  state = jax.tree.map(lambda new, old: jnp.where(accept[..., None, None],
                                                  new, old),
                       proposed, current)
  return state, jnp.exp(jnp.minimum(log_ratio, 0.0)), accept


class RunInfo(NamedTuple):
  acceptance_rate: jax.Array  # (num_steps, ...): per step
  is_accepted: jax.Array      # (num_steps, ...): per step
  last: ChainInfo             # the last step's full info


def run_chain(key, kernel: Kernel, state: ChainState, params, num_steps: int
              ) -> tuple[ChainState, RunInfo]:
  """`num_steps` steps of `kernel` under `lax.scan`: the last state and a
  `RunInfo`.

  Only the per-step acceptance is stacked; the hidden samples and visible
  means are kept for the last step alone, so long chains use no more
  memory than one step.
  """
  num_steps = validation.positive_int("num_steps", num_steps)

  def body(s, k):
    s, info = kernel.step(k, s, params)
    return s, (info.acceptance_rate, info.is_accepted)

  keys = jax.random.split(key, num_steps)
  state, (rates, accepted) = jax.lax.scan(body, state, keys[:-1])
  state, last = kernel.step(keys[-1], state, params)
  return state, RunInfo(
      jnp.concatenate([rates, last.acceptance_rate[None]]),
      jnp.concatenate([accepted, last.is_accepted[None]]), last)


def sample_from_marginals(key, kernel: Kernel, params, marginals: jax.Array,
                          *, num_chains: int, num_steps: int
                          ) -> tuple[ChainState, RunInfo]:
  """`num_chains` chains of `kernel` started at independent
  `Bernoulli(marginals)` visible states (`marginals` (Nv, Dv): the data's
  mean visible states), run for `num_steps` steps: the final `ChainState`
  (`.v` the binary states) and the `RunInfo` (`.last.visible_mean` the last
  step's means)."""
  init_key, run_key = jax.random.split(key)
  v0 = jax.random.bernoulli(init_key, marginals,
                            (num_chains,) + marginals.shape)
  state = kernel.init(params, v0.astype(params["W"].dtype))
  return run_chain(run_key, kernel, state, params, num_steps)
