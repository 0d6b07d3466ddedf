"""One training update, jitted over the device mesh: binarize the grey
batch through the front end, one CD-k step, the step's monitors and
finiteness flags (`check_finite` raises DivergenceError)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import capsjax
from experiments.runner import data as data_io
from experiments.runner import factories
from experiments.runner import sharding as sharding_lib
from experiments.runner import state as state_lib
from experiments.runner import visible
from experiments.runner.errors import DivergenceError


def batch_capsules(config, front_end: visible.FrontEnd, grey_batch, key,
                   sharding):
  """`visible.to_capsules` of a batch split by `sharding` over an explicit
  mesh axis (sharding.py), split the same way. The front ends (an autoencoder's
  convolutions, a lower layer's pass) are not all written for explicit
  axes: they run with the axis automatic."""
  return jax.sharding.auto_axes(
      functools.partial(visible.to_capsules, front_end, config.binarize),
      out_sharding=sharding)(
          grey_batch, key)


def make_update(config, front_end: visible.FrontEnd, optimizer,
                shardings: sharding_lib.Shardings, k=None):
  """The jitted update: binarize the grey batch, then one CD-k step (k:
  config.k unless given; each k compiles its own).

  `update(state, grey_batch)` takes the batch as made by `train_batch` and
  a state on any devices (it is moved to `shardings.state` first, a no-op
  when it is there); it returns the new state in `shardings.state`, the
  step's `capsjax.CDMonitors` (replicated scalars, from the parameters the
  step started from) and the finiteness flags.
  """
  keys = state_lib.keys(config)
  options = factories.cd_options(config, k)
  kernel = options["kernel"]
  step_fn = functools.partial(capsjax.train_step, optimizer=optimizer,
                              **options)

  def update(state, grey_batch):
    v = batch_capsules(config, front_end, grey_batch,
                       jax.random.fold_in(keys["binarize"], state.step),
                       shardings.batch)
    if config.shard_weights:
      # FSDP: W (split along Nh over the batch's axis) is gathered for the
      # step; the update is split again like the state (out_shardings).
      state = state._replace(params=jax.sharding.reshard(
          state.params, jax.sharding.PartitionSpec()))
    new_state, info = step_fn(keys["train"], state, v)
    # Every update's monitors are logged (means over log_every_steps).
    monitors = capsjax.cd_monitors(state.params, v, info, kernel=kernel)
    finite = {name: jnp.all(jnp.isfinite(x))
              for name, x in new_state.params.items()}
    finite["free_energy_gap"] = jnp.isfinite(monitors.free_energy_gap)
    return new_state, monitors, finite

  # No buffer donation: an asynchronous checkpoint may still read the state.
  jitted = jax.jit(update, in_shardings=(shardings.state, shardings.batch),
                   out_shardings=(shardings.state, shardings.replicated,
                                  shardings.replicated))

  compiled = False

  def placed_update(state, grey_batch):
    nonlocal compiled
    state = sharding_lib.place(state, shardings.state)
    with jax.set_mesh(shardings.mesh):
      if not compiled and jax.process_count() > 1:
        # Compile (into jit's cache) on every process, then wait for all:
        # a process that starts the first collective while another still
        # compiles can time out (gloo's 30 s on CPUs).
        jitted.lower(state, grey_batch).compile()
        sharding_lib.barrier("capsjax: update compiled")
      compiled = True
      return jitted(state, grey_batch)

  return placed_update


def train_batch(config, train_grey, step: int,
                shardings: sharding_lib.Shardings) -> jax.Array:
  """The grey images of `step`, split over the data devices."""
  return sharding_lib.global_batch(
      train_grey, data_io.batch_indices(config, len(train_grey), step),
      shardings.batch)


def check_finite(finite: dict, step: int) -> None:
  """Raises when an update produced NaN or inf (one small host transfer)."""
  bad = [name for name, ok in jax.device_get(finite).items() if not ok]
  if bad:
    raise DivergenceError(
        f"training diverged at update {step}: non-finite {', '.join(bad)}; "
        "the last checkpoint before it is kept. Lower config.learning_rate "
        "(or see BUILD_NOTES.md on routed training)")
