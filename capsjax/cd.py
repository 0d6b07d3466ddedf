"""Contrastive divergence with routing, and the optax training step.

docs/model.md section 5. `cd_gradient` returns the gradient of
`mean F(v_data; c_data) - mean F(v_model; c_model)` with the samples (and,
unless `through_routing`, the coefficients) held constant: a descent
direction to hand to any optax transformation as if it were a loss gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from capsjax import centering as centering_lib
from capsjax import energies
from capsjax import routing as routing_lib
from capsjax import sampling
from capsjax import validation


class CDInfo(NamedTuple):
  chain: sampling.ChainState   # the negative chain's end: feed it back for PCD
  data_coefficients: jax.Array   # (..., Nv, Nh): c_data = c(v_data)
  negative: jax.Array            # (..., Nv, Dv): v_model of the statistics
  negative_coefficients: jax.Array  # (..., Nv, Nh): c_model of the statistics
  acceptance_rate: jax.Array     # (): mean MH acceptance over the k steps


class CDMonitors(NamedTuple):
  reconstruction_error: jax.Array  # mean squared error per visible neuron
  # mean F(v_data; c_data) - mean F(v_model; c_model)
  free_energy_gap: jax.Array
  # mean MH acceptance over the k steps (1 for Gibbs)
  acceptance_rate: jax.Array
  # mean entropy (nats) of c_data per lower capsule
  routing_entropy: jax.Array


def _flat(x, trailing):
  return x.reshape((-1,) + x.shape[-trailing:])


def _cd_grads(params, positive, negative):
  """Hand-written `d(mean F(v+) - mean F(v-))/dtheta` (docs/model.md
  section 5) of two `ChainState`s (v, c and, when known, s = s(v; c); c
  may be one shared (Nv, Nh) matrix).

  With shared c the two weight statistics are one product over both
  batches (the negative's probabilities negated, each side scaled by its
  own batch size, since PCD may run more chains than the batch has
  examples): one matrix product and one transposition into W's layout
  instead of two.
  """
  def probs(state):
    s = state.inputs
    if s is None:
      s = energies.hidden_input(params, state.v, state.coefficients)
    return jax.nn.sigmoid(params["b"] + s)

  def mean(x):
    return jnp.mean(_flat(x, 2), axis=0)

  p_pos, p_neg = probs(positive), probs(negative)
  v_pos, v_neg = _flat(positive.v, 2), _flat(negative.v, 2)
  p_pos_n = _flat(p_pos, 2) / v_pos.shape[0]
  p_neg_n = _flat(p_neg, 2) / v_neg.shape[0]
  c = positive.coefficients
  if c.ndim == 2:  # shared: one product over both batches
    stats = energies.interaction_statistics(
        jnp.concatenate([v_pos, v_neg]), jnp.concatenate([p_pos_n, -p_neg_n]),
        c)
  else:  # per example: two, so that one c-scaled operand (the size of
    # the votes) exists at a time
    stats = (energies.interaction_statistics(v_pos, p_pos_n,
                                             _flat(c, 2))
             - energies.interaction_statistics(
                 v_neg, p_neg_n, _flat(negative.coefficients, 2)))
  # dF/da is -v (Bernoulli) or -(v - a) (Gaussian): a cancels either way.
  return {"W": -stats, "a": -(mean(positive.v) - mean(negative.v)),
          "b": -(mean(p_pos) - mean(p_neg))}


def cd_gradient(key, params, v, *, kernel: sampling.Kernel, k: int = 1,
                chain: Optional[sampling.ChainState] = None,
                through_routing: bool = False,
                mean_field_negative: bool = False) -> tuple[Any, CDInfo]:
  """The CD-k (or PCD-k) gradient of the routed capsule layer.

  Args:
    key: a `jax.random` key.
    params: {"W": (Nv, Nh, Dh, Dv), "a": (Nv, Dv), "b": (Nh, Dh)}.
    v: a minibatch of data, (B, Nv, Dv) (any leading batch shape).
    kernel: the negative phase's Markov kernel (`capsjax.gibbs`,
      `capsjax.mh` or `capsjax.tempering`); its `routing` and `visible` are
      the model's.
    k: kernel steps in the negative phase.
    chain: a persistent chain state (PCD) to continue instead of starting
      at `v` (made by `kernel.init`; any number of chains, independent of
      the batch size); its state after k steps is returned in
      `info.chain`. It is rerouted under the current parameters first
      (`kernel.refresh`).
    through_routing: differentiate `F(v; c(v; theta))` through the routing
      (docs/model.md section 5). Needs a kernel that samples the routed model
      exactly (`kernel.exact`).
    mean_field_negative: use the last step's mean `p(v | h; c)` (rerouted
      unless the kernel keeps c) instead of its sample for the negative
      statistics. Gibbs kernels only (an MH or tempering state must be a
      sample).

  Returns:
    `(grads, info)`: the gradient of `mean F(v_data; c_data) - mean
    F(v_model; c_model)` with the structure of `params` (a descent
    direction for optax); a `CDInfo` (`cd_monitors` turns it into
    monitors).
  """
  k = validation.positive_int("k", k)
  kernel = sampling.check_kernel(kernel)
  routing, visible = kernel.routing, kernel.visible
  validation.visible(params, v)
  if through_routing and not kernel.exact:
    raise ValueError(
        "through_routing=True needs a kernel that samples the routed model "
        "exactly (capsjax.mh(routing)); got a Gibbs kernel with routing "
        f"{routing}")
  if mean_field_negative and kernel.name != "gibbs":
    raise ValueError("mean_field_negative needs a Gibbs kernel; a "
                     f"{kernel.name!r} kernel's state must be a sample")
  if chain is not None:
    validation.visible(params, chain.v, "chain.v")

  # The data's c(v) and, routed, s(v; c(v)) (the hidden input, reused).
  data = jax.lax.stop_gradient(sampling.chain_at(params, v, routing))
  c_data = data.coefficients
  # A persistent chain's c was routed under the previous parameters: route
  # it anew (MH needs c = c(v); without `reroute`, c is then fixed for the
  # k steps of this update, as it is for chains started at the data).
  if chain is not None:
    start = jax.lax.stop_gradient(kernel.refresh(params, chain))
  elif kernel.name == "tempering":  # a ladder, every rung at the data
    start = jax.lax.stop_gradient(kernel.init(params, v))
  else:
    start = data
  end, infos = sampling.run_chain(key, kernel, start, params, k)
  v_neg, c_neg = end.v, end.coefficients
  s_neg = getattr(end, "inputs", None)  # a tempering ladder carries none
  if mean_field_negative:
    v_neg = infos.last.visible_mean
    if routing.routed and kernel.step.reroute:  # a Gibbs kernel's option
      _, c_neg, s_neg = sampling.chain_at(params, v_neg, routing)
    else:
      s_neg = None
  v_neg, c_neg, s_neg = jax.lax.stop_gradient((v_neg, c_neg, s_neg))

  # Without routing nothing depends on c: the hand-written statistics are
  # the gradient through it too. Uniform routing uses one shared (Nv, Nh)
  # matrix (one RBM matrix product per statistic; same values).
  if through_routing and routing.routed:
    def objective(p):
      def mean_f(x):
        return jnp.mean(energies.routed_free_energy(p, x, routing,
                                                    visible=visible))
      return mean_f(v) - mean_f(v_neg)
    grads = jax.grad(objective)(params)
  else:
    positive = data
    negative = sampling.ChainState(v_neg, c_neg, s_neg)
    if not routing.routed:
      shared = sampling.shared_uniform(params, c_data.dtype)
      positive = positive._replace(coefficients=shared)
      negative = negative._replace(coefficients=shared)
    grads = _cd_grads(params, positive, negative)
  info = CDInfo(chain=end, data_coefficients=c_data, negative=v_neg,
                negative_coefficients=c_neg,
                acceptance_rate=jnp.mean(infos.acceptance_rate))
  return grads, info


def cd_monitors(params, v, info: CDInfo, *, kernel: sampling.Kernel
                ) -> CDMonitors:
  """Monitors of a CD step from `cd_gradient`'s inputs and `info`.

  One deterministic up-down pass from the data (reconstruction error), the
  free energies of the data and the negative samples (their gap, which
  with `through_routing` is the objective differentiated), the MH
  acceptance and the data's routing entropy. About a fifth of an unrouted
  CD-1 step: leave it out of the step where speed matters.
  """
  kernel = sampling.check_kernel(kernel)
  visible = kernel.visible
  c = c_neg = info.data_coefficients
  entropy = jnp.mean(routing_lib.routing_entropy(c))
  if kernel.routing.routed:
    c_neg = info.negative_coefficients
  else:  # the step's shared (Nv, Nh) matrix, so XLA reuses its products
    c = c_neg = sampling.shared_uniform(params, c.dtype)
  recon = energies.reconstruct(params, v, c, visible=visible)
  gap = (jnp.mean(energies.free_energy(params, v, c, visible=visible))
         - jnp.mean(energies.free_energy(params, info.negative, c_neg,
                                         visible=visible)))
  return CDMonitors(
      reconstruction_error=jnp.mean(jnp.square(v - recon)),
      free_energy_gap=gap,
      acceptance_rate=info.acceptance_rate,
      routing_entropy=entropy)


# --------------------------------------------------------------------------
# The optax training step.


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  chain: Optional[sampling.ChainState]  # persistent chain for PCD, else None
  step: jax.Array                       # number of updates done
  offsets: Optional[centering_lib.Offsets] = None  # centering, else None


def momentum_schedule(initial: float = 0.5, final: float = 0.9,
                      switch_step: int = 0) -> optax.Schedule:
  """Hinton's practical guide: momentum `initial`, then `final` from
  `switch_step`."""
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


def init_train_state(params, optimizer: optax.GradientTransformation, *,
                     chain: Optional[sampling.ChainState] = None,
                     offsets: Optional[centering_lib.Offsets] = None
                     ) -> TrainState:
  """A fresh `TrainState`; a `chain` (e.g. `kernel.init(params, v0)`, any
  number of chains) enables PCD; `offsets` (`init_offsets`) are the
  centering offsets a `train_step(..., centering=)` needs."""
  validation.param_shapes(params)
  if chain is not None:
    validation.visible(params, chain.v, "chain.v")
    chain = sampling.without_inputs(chain)
  return TrainState(params, optimizer.init(params), chain,
                    jnp.zeros((), jnp.int32), offsets)


def train_step(key, state: TrainState, batch, *,
               optimizer: optax.GradientTransformation,
               kernel: sampling.Kernel, k: int = 1,
               through_routing: bool = False,
               mean_field_negative: bool = False,
               centering: Optional[centering_lib.Centering] = None
               ) -> tuple[TrainState, CDInfo]:
  """One CD (or PCD, when `state.chain` is set) update through `optimizer`.

  The step's randomness is `fold_in(key, state.step)`, so a resumed run
  needs only the base key. Jit it with the keywords static, e.g.
  `jax.jit(functools.partial(train_step, optimizer=opt, kernel=kernel))`.
  The other keywords are `cd_gradient`'s, and `centering`: take the
  centered step (`centered_gradient` with `state.offsets`, which then
  move towards the batch's means; unrouted Bernoulli layers only).
  """
  if (centering is None) != (state.offsets is None):
    raise ValueError("centering needs state.offsets (init_train_state(..., "
                     "offsets=init_offsets(...))) and offsets need centering")
  if centering is not None and (sampling.check_kernel(kernel).routing.routed
                                or kernel.visible != "bernoulli"):
    raise ValueError("centering needs an unrouted layer with Bernoulli "
                     f"visible units; got {kernel.routing}, visible="
                     f"{kernel.visible!r}")
  step_key = jax.random.fold_in(key, state.step)
  grads, info = cd_gradient(step_key, state.params, batch, kernel=kernel, k=k,
                            chain=state.chain, through_routing=through_routing,
                            mean_field_negative=mean_field_negative)
  offsets = state.offsets
  if centering is not None:
    grads = centering_lib.centered_gradient(
        grads, offsets, weight_scale=centering.weight_scale)
    offsets = centering_lib.update_offsets(offsets, state.params, batch,
                                           centering.rate)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  chain = None if state.chain is None else sampling.without_inputs(info.chain)
  return TrainState(params, opt_state, chain, state.step + 1, offsets), info


# --------------------------------------------------------------------------
# The effective-weight parameterization (docs/model.md section 5).


def effective_weights(optimizer: optax.GradientTransformation,
                      scale: float) -> optax.GradientTransformation:
  """`optimizer` applied to `U = W / scale` instead of `W`.

  The model and `params` keep the energy's `W`; the wrapped optimizer sees
  the parameters `{"W": W / scale, "a", "b"}` and the gradient
  `dL/dU = scale dL/dW` (chain rule), and its updates of U are mapped back
  to W. With `scale = Nh` the effective interaction weights `c_ij W_ij ~ U_ij`
  under near-uniform routing, so an RBM's initialization and step sizes
  carry over; with plain SGD it equals scaling the W learning rate by
  `scale^2`. Everything inside the wrapped optimizer acts on U: weight
  decay decays U (the effective weights), gradient clipping clips the
  gradient of U, Adam's statistics are U's. The model family is unchanged.
  Initialize W at a given effective scale with `init_params(...,
  weight_scale=scale)`.
  """
  if not (isinstance(scale, (int, float)) and scale > 0):
    raise ValueError(f"scale must be a number > 0; got {scale!r}")

  def to_u(tree):
    return None if tree is None else {**tree, "W": tree["W"] / scale}

  def init(params):
    return optimizer.init(to_u(params))

  def update(grads, state, params=None):
    u_grads = {**grads, "W": grads["W"] * scale}
    u_updates, state = optimizer.update(u_grads, state, to_u(params))
    return {**u_updates, "W": u_updates["W"] * scale}, state

  return optax.GradientTransformation(init, update)


class ParamsEMAState(NamedTuple):
  inner: Any  # the wrapped optimizer's state
  ema: Any    # the moving average of the parameters, like params


def params_ema(optimizer: optax.GradientTransformation,
               decay: float) -> optax.GradientTransformation:
  """`optimizer`, keeping an exponential moving average of the parameters.

  After each update, `ema <- decay * ema + (1 - decay) * new_params`
  (starting at the initial parameters); the updates are the wrapped
  optimizer's, unchanged. Read the average with `ema_params(opt_state)`.
  Averaging the iterates of a decaying-rate stochastic optimization (Polyak
  & Juditsky 1992) reduces the noise of the final parameters, which for an
  RBM's CD/PCD training shows as test log-likelihood. Wrap it outside
  `effective_weights`, so that it averages the energy's `W`.
  """
  if not 0 < decay < 1:
    raise ValueError(f"decay must be in (0, 1); got {decay!r}")

  def init(params):
    return ParamsEMAState(optimizer.init(params), params)

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("params_ema needs the params in update()")
    updates, inner = optimizer.update(grads, state.inner, params)
    new = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                       state.ema, new)
    return updates, ParamsEMAState(inner, ema)

  return optax.GradientTransformation(init, update)


def ema_params(opt_state):
  """The parameter average of a `params_ema` optimizer's state."""
  return optax.tree_utils.tree_get(opt_state, "ema")


def init_params(key, num_visible_capsules: int, visible_dim: int,
                num_hidden_capsules: int, hidden_dim: int, *,
                weight_std: float = 0.01, weight_scale: float = 1.0,
                data: Optional[jax.Array] = None, visible: str = "bernoulli",
                dtype=jnp.float32) -> dict:
  """Parameters initialized after Hinton's practical guide.

  `W = weight_scale * N(0, weight_std^2)`: effective weights `W /
  weight_scale` of standard deviation `weight_std` (pair with
  `effective_weights(optimizer, weight_scale)`); hidden biases 0; visible
  biases from the data marginals when `data` (..., Nv, Dv) is given
  (`visible_bias_from_data`), else 0.
  """
  shape = (num_visible_capsules, num_hidden_capsules, hidden_dim, visible_dim)
  for name, n in zip(("num_visible_capsules", "num_hidden_capsules",
                      "hidden_dim", "visible_dim"), shape):
    validation.positive_int(name, n)
  visible = validation.visible_type(visible)
  W = weight_scale * weight_std * jax.random.normal(key, shape, dtype)
  if data is None:
    a = jnp.zeros((num_visible_capsules, visible_dim), dtype)
  else:
    validation.check_trailing("data", data,
                              (num_visible_capsules, visible_dim),
                              "= (..., Nv, Dv)")
    a = visible_bias_from_data(data, visible).astype(dtype)
  return {"W": W, "a": a, "b": jnp.zeros((num_hidden_capsules, hidden_dim),
                                        dtype)}


def visible_bias_from_data(data: jax.Array, visible: str = "bernoulli",
                           eps: float = 1e-3) -> jax.Array:
  """Hinton's practical guide, section 8: `a = log(p / (1 - p))` of the data
  marginals (Bernoulli), or the data mean (Gaussian). Shape (Nv, Dv)."""
  mean = jnp.mean(data, axis=tuple(range(data.ndim - 2)))
  if validation.visible_type(visible) == "gaussian":
    return mean
  p = jnp.clip(mean, eps, 1.0 - eps)
  return jnp.log(p) - jnp.log1p(-p)
