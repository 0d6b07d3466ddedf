"""What the config says the model and its training are: routing, Markov
kernels, the optimizer and its schedules, CD's options."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import capsjax


def weight_scale(config) -> float:
  return (1.0 if config.weight_scale == "none"
          else float(config.num_hidden_capsules))


def make_routing(config) -> capsjax.Routing:
  """The layer's routing options: part of the model, static under jit."""
  return capsjax.Routing(num_iterations=config.num_iterations,
                         temperature=config.routing_temperature,
                         rule=config.routing_rule)


def make_kernel(config) -> capsjax.Kernel:
  """The negative phase's Markov kernel: parallel tempering
  (config.tempering_rungs), MH-corrected (config.mh) or the paper's
  alternation (config.reroute)."""
  routing = make_routing(config)
  if config.tempering_rungs:
    return capsjax.tempering(routing, tempering_betas(config))
  if config.mh:
    return capsjax.mh(routing, block_fraction=config.mh_block_fraction)
  return capsjax.gibbs(routing, reroute=config.reroute)


def tempering_betas(config) -> tuple[float, ...]:
  """The ladder: tempering_rungs betas evenly spaced up to exactly 1."""
  betas = np.linspace(config.tempering_min_beta, 1.0, config.tempering_rungs)
  return tuple(float(b) for b in betas[:-1]) + (1.0,)


def cd_k(config, step: int) -> int:
  """The number of Gibbs steps of update `step` (k_ramp_every_steps)."""
  if not config.k_ramp_every_steps:
    return config.k
  return min(config.k, 1 + step // config.k_ramp_every_steps)


def lr_factor(config) -> optax.Schedule:
  """The learning rate's multiplier at each update count: the schedule
  relative to config.learning_rate, divided by the current k when
  k_ramp_divides_lr."""
  n, lr = config.num_steps, config.learning_rate
  if config.lr_schedule == "linear":
    decay = optax.linear_schedule(1.0, config.final_learning_rate / lr, n)
  elif config.lr_schedule == "cosine":
    decay = optax.cosine_decay_schedule(1.0, n,
                                        config.final_learning_rate / lr)
  elif config.lr_schedule == "step":
    decay = optax.exponential_decay(1.0, config.lr_decay_every_steps,
                                    config.lr_decay_factor, staircase=True)
  else:
    decay = lambda count: jnp.ones((), jnp.float32)
  if not (config.k_ramp_every_steps and config.k_ramp_divides_lr):
    return decay
  every = config.k_ramp_every_steps
  return lambda count: decay(count) / jnp.minimum(config.k,
                                                  1 + count // every)


def sampling_kernel(config, mh: bool = False) -> capsjax.Kernel:
  """The kernel of the model's sample chains (figures, Fréchet samples):
  rerouted Gibbs, or MH-corrected if `mh`, whatever the training used."""
  routing = make_routing(config)
  return capsjax.mh(routing) if mh else capsjax.gibbs(routing)


def base_optimizer(config) -> optax.GradientTransformation:
  """SGD with momentum or Adam on the CD gradient, with the optional
  gradient clipping (first) and learning-rate warm-up (last, so that it
  scales Adam's steps too). Without them the state has the structure of
  older checkpoints. It acts on the effective weights (`make_optimizer`).
  """
  if config.optimizer == "sgd":
    momentum = capsjax.momentum_schedule(config.momentum_initial,
                                         config.momentum_final,
                                         config.momentum_switch_step)
    base = capsjax.sgd(config.learning_rate, momentum=momentum,
                       weight_decay=config.weight_decay)
  else:
    base = capsjax.adam(config.learning_rate, weight_decay=config.weight_decay)
  schedule = (config.lr_schedule != "constant"
              or (config.k_ramp_every_steps and config.k_ramp_divides_lr))
  if not (config.grad_clip_norm or config.warmup_steps or schedule):
    return base
  parts = [base]
  if config.grad_clip_norm:
    parts.insert(0, optax.clip_by_global_norm(config.grad_clip_norm))
  if config.warmup_steps:
    n = config.warmup_steps
    parts.append(optax.scale_by_schedule(
        lambda count: jnp.minimum(1.0, (count + 1.0) / n)))
  if schedule:  # after the base, like warm-up: it scales Adam's steps too
    parts.append(optax.scale_by_schedule(lr_factor(config)))
  return optax.chain(*parts)


def make_optimizer(config) -> optax.GradientTransformation:
  """`base_optimizer` on the effective weights `W / weight_scale(config)`
  (`capsjax.effective_weights`; its state is the base optimizer's). Read
  the learning rate with `learning_rate(opt_state)`."""
  optimizer = capsjax.effective_weights(base_optimizer(config),
                                        weight_scale(config))
  if config.ema_decay:
    optimizer = capsjax.params_ema(optimizer, config.ema_decay)
  return optimizer


def model_params(config, state: capsjax.TrainState):
  """The parameters a run reports as its model: the moving average when
  config.ema_decay, else the last iterate."""
  if config.ema_decay:
    return capsjax.ema_params(state.opt_state)
  return state.params


def learning_rate(opt_state) -> jax.Array:
  """The (injected) learning rate of a `make_optimizer` state."""
  return optax.tree_utils.tree_get(opt_state, "learning_rate")


def cd_options(config, k=None) -> dict:
  """`capsjax.train_step`'s keywords besides the optimizer (k: config.k
  unless given)."""
  centering = (capsjax.Centering(rate=config.centering,
                                 weight_scale=weight_scale(config))
               if config.centering else None)
  return dict(kernel=make_kernel(config), k=config.k if k is None else k,
              through_routing=config.through_routing,
              mean_field_negative=config.mean_field_negative,
              centering=centering)
