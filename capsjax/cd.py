"""Contrastive divergence with routing, and the optax training step.

MODEL.md section 5. `cd_gradient` returns the gradient of
`mean F(v_data; c_data) - mean F(v_model; c_model)` with the samples (and,
unless `through_routing`, the coefficients) held constant: a descent
direction to hand to any optax transformation as if it were a loss gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from capsjax import energies
from capsjax import routing
from capsjax import sampling
from capsjax import validation


class CDInfo(NamedTuple):
  chain: sampling.ChainState     # the negative chain's end: feed it back for PCD
  reconstruction_error: jax.Array  # mean squared error per visible neuron
  free_energy_gap: jax.Array     # mean F(v_data; c_data) - mean F(v_model; c_model)
  acceptance_rate: jax.Array     # mean MH acceptance over the k steps (1 without MH)
  routing_entropy: jax.Array     # mean entropy (nats) of c_data per lower capsule


def _free_energy_stats(params, v, c, visible, monitors=True):
  """Hand-written `dF/dtheta` averaged over the batch, and mean F (NaN
  unless `monitors`)."""
  p = energies.hidden_probs(params, v, c)
  n = v.size // (v.shape[-1] * v.shape[-2])
  grads = {
      "W": -energies.interaction_statistics(v, p, c) / n,
      "a": -jnp.mean((v - params["a"]) if visible == "gaussian" else v,
                     axis=tuple(range(v.ndim - 2))),
      "b": -jnp.mean(p, axis=tuple(range(p.ndim - 2))),
  }
  if monitors:
    mean_f = jnp.mean(energies.free_energy(params, v, c, visible=visible))
  else:
    mean_f = jnp.full((), jnp.nan, p.dtype)
  return grads, mean_f


def cd_gradient(params, key, v, *, k: int = 1, num_iterations: int = 3,
                reroute: bool = True, mh: bool = False,
                through_routing: bool = False,
                chain: Optional[sampling.ChainState] = None,
                mean_field_negative: bool = False,
                visible: str = "bernoulli",
                monitors: bool = True) -> tuple[Any, CDInfo]:
  """The CD-k (or PCD-k) gradient of the routed capsule layer.

  Args:
    params: {"W": (Nv, Nh, Dh, Dv), "a": (Nv, Dv), "b": (Nh, Dh)}.
    key: a `jax.random` key.
    v: a minibatch of data, (B, Nv, Dv) (any leading batch shape).
    k: Gibbs (or MH) steps in the negative phase.
    num_iterations: routing iterations r; 1 is the unrouted ablation.
    reroute: recompute c after each visible sample (ignored when `mh`,
      which always reroutes).
    mh: Metropolis-Hastings-corrected chains (MODEL.md section 6).
    through_routing: differentiate `F(v; c(v; theta))` through the routing
      (MODEL.md section 5); pair it with `mh=True`.
    chain: a persistent chain (PCD) to continue instead of starting at `v`;
      its state after k steps is returned in `info.chain`. Only `chain.v`
      is read: the chain is rerouted under the current parameters.
    mean_field_negative: use the last step's mean `p(v | h; c)` (rerouted)
      instead of its sample for the negative statistics. Not with `mh`.
    visible: "bernoulli" or "gaussian".
    monitors: compute `info.reconstruction_error` and `info.free_energy_gap`
      (one up-down pass and two free energies: about a fifth of an
      unrouted CD-1 step, BUILD_NOTES.md "Performance"). If False both are
      NaN (the gap is still exact with `through_routing`).

  Returns:
    `(grads, info)`: grads with the structure of `params`; a `CDInfo`.
  """
  k = validation.positive_int("k", k)
  r = validation.num_iterations(num_iterations)
  validation.visible(params, v)
  visible = validation.visible_type(visible)
  if mean_field_negative and mh:
    raise ValueError("mean_field_negative is not compatible with mh=True: "
                     "the MH chain's state must be a sample")
  if chain is not None:
    validation.visible(params, chain.v, "chain.v")
    validation.coefficients(params, chain.coefficients, "chain.coefficients")

  # Uniform routing (r = 1): c is the same (Nv, Nh) matrix for every
  # example and every chain, so it is kept unbatched and each conditional is
  # one RBM matrix product (energies.py). Same values as routing each one.
  shared = r == 1
  if shared:
    dtype = jnp.result_type(params["W"], v)
    c_data = jnp.full(params["W"].shape[:2], 1.0 / params["W"].shape[1], dtype)
  else:
    c_data = jax.lax.stop_gradient(routing.route_visible(params, v, r))
  # A persistent chain's c was routed under the previous parameters: route
  # it anew (MH needs c = c(v); without `reroute`, c is then fixed for the
  # k steps of this update, as it is for chains started at the data).
  if chain is None or shared:
    start = sampling.ChainState(v if chain is None else chain.v, c_data)
  else:
    start = jax.lax.stop_gradient(sampling.init(params, chain.v, r))
  end, infos = sampling.run(key, start, params, k, num_iterations=r, mh=mh,
                            reroute=reroute or shared, visible=visible)
  v_neg, c_neg = end
  if mean_field_negative:
    v_neg = infos.last.visible_mean
    c_neg = (routing.route_visible(params, v_neg, r) if reroute and not shared
             else end.coefficients)
  v_neg, c_neg = jax.lax.stop_gradient((v_neg, c_neg))
  if shared:  # the returned chain has the batched shape of `init`'s
    end = sampling.ChainState(
        end.v, jnp.broadcast_to(end.coefficients,
                                end.v.shape[:-2] + end.coefficients.shape))

  # With r = 1 nothing depends on the routing: the hand-written statistics
  # are the gradient through it too.
  if through_routing and not shared:
    def objective(p):
      def mean_f(x):
        return jnp.mean(energies.routed_free_energy(p, x, r, visible=visible))
      return mean_f(v) - mean_f(v_neg)
    gap, grads = jax.value_and_grad(objective)(params)
  else:
    pos, f_pos = _free_energy_stats(params, v, c_data, visible, monitors)
    neg, f_neg = _free_energy_stats(params, v_neg, c_neg, visible, monitors)
    grads = jax.tree.map(jnp.subtract, pos, neg)
    # Keys beyond W, a, b (e.g. a routing temperature) are fixed: zero.
    grads = {name: grads[name] if name in grads else jnp.zeros_like(x)
             for name, x in params.items()}
    gap = f_pos - f_neg

  if monitors:
    # One deterministic up-down pass from the data, whatever the chain mode.
    recon = energies.reconstruct(params, v, c_data, visible=visible)
    recon_error = jnp.mean(jnp.square(v - recon))
  else:
    recon_error = jnp.full((), jnp.nan, gap.dtype)
  info = CDInfo(
      chain=end,
      reconstruction_error=recon_error,
      free_energy_gap=gap,
      acceptance_rate=jnp.mean(infos.acceptance_rate),
      routing_entropy=jnp.mean(routing.routing_entropy(c_data)),
  )
  return grads, info


# --------------------------------------------------------------------------
# The optax training step.


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  chain: Optional[sampling.ChainState]  # persistent chain for PCD, else None
  step: jax.Array                       # number of updates done


def momentum_schedule(initial: float = 0.5, final: float = 0.9,
                      switch_step: int = 0) -> optax.Schedule:
  """Hinton's practical guide: momentum `initial`, then `final` from `switch_step`."""
  return lambda count: jnp.where(count < switch_step, initial, final)


def _decay_weights(weight_decay: float) -> optax.GradientTransformation:
  """L2 weight decay on W only (Hinton's guide: not on the biases)."""
  return optax.add_decayed_weights(
      weight_decay, mask=lambda params: {key: key == "W" for key in params})


def sgd(learning_rate, *, momentum=0.0, weight_decay: float = 0.0,
        ) -> optax.GradientTransformation:
  """SGD with (scheduled) momentum and L2 weight decay on W only.

  `learning_rate` and `momentum` may be floats or optax schedules, e.g.
  `momentum=momentum_schedule(0.5, 0.9, 5 * steps_per_epoch)`; both are
  visible in the state as `opt_state[-1].hyperparams`.
  """
  return optax.chain(
      _decay_weights(weight_decay),
      optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate,
                                          momentum=momentum))


def adam(learning_rate, *, weight_decay: float = 0.0
         ) -> optax.GradientTransformation:
  """Adam with L2 weight decay on W only (added to the CD gradient)."""
  return optax.chain(
      _decay_weights(weight_decay),
      optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate))


def _scale_weights(params, factor):
  return {**params, "W": params["W"] * factor}


def init_train_state(params, optimizer: optax.GradientTransformation, *,
                     persistent_chains: Optional[jax.Array] = None,
                     num_iterations: int = 3,
                     weight_scale: float = 1.0) -> TrainState:
  """A fresh `TrainState`; `persistent_chains` (visible states) enables PCD.

  `weight_scale` must be the one later passed to `train_step`.
  """
  chain = (None if persistent_chains is None else
           sampling.init(params, persistent_chains, num_iterations))
  opt_state = optimizer.init(_scale_weights(params, 1.0 / weight_scale))
  return TrainState(params, opt_state, chain, jnp.zeros((), jnp.int32))


def train_step(state: TrainState, key, batch, *,
               optimizer: optax.GradientTransformation,
               weight_scale: float = 1.0, **cd_kwargs
               ) -> tuple[TrainState, CDInfo]:
  """One CD (or PCD, when `state.chain` is set) update through `optimizer`.

  The step's randomness is `fold_in(key, state.step)`, so a resumed run
  needs only the base key. Jit it with `optimizer` and the keywords static,
  e.g. `jax.jit(functools.partial(train_step, optimizer=opt, k=1))`.

  `weight_scale` s optimizes `U = W / s` instead of `W` (the model and
  `state.params` still hold `W`). With `s = Nh` the effective weights
  `c_ij W_ij ~ U_ij` under near-uniform routing, so an RBM's initialization
  and step sizes carry over (MODEL.md section 5); with plain SGD it equals
  scaling the W learning rate by `s^2`.
  """
  step_key = jax.random.fold_in(key, state.step)
  grads, info = cd_gradient(state.params, step_key, batch, chain=state.chain,
                            **cd_kwargs)
  # Chain rule for W = s U: dL/dU = s dL/dW.
  u_params = _scale_weights(state.params, 1.0 / weight_scale)
  updates, opt_state = optimizer.update(_scale_weights(grads, weight_scale),
                                        state.opt_state, u_params)
  params = _scale_weights(optax.apply_updates(u_params, updates), weight_scale)
  chain = None if state.chain is None else info.chain
  return TrainState(params, opt_state, chain, state.step + 1), info
