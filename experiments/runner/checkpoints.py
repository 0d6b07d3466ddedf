"""The CD layer's checkpoints: the workdir's config record, restoring the
latest state (onto any devices; 0.1 checkpoints migrated; fields added to
TrainState since, such as `offsets`, absent) and the roll-back after a
divergence."""

from __future__ import annotations

import os
import sys

from absl import logging
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

import capsjax
from experiments.runner import config as config_lib
from experiments.runner import factories
from experiments.runner import harness
from experiments.runner import sharding as sharding_lib
from experiments.runner import state as state_lib
from experiments.runner import visible
from experiments.runner.errors import CheckpointError
from experiments.runner.errors import ConfigError


def check_workdir_config(config, workdir: str) -> None:
  """Records the config in a new workdir, or checks it against the record:
  only config.RESUMABLE_FIELDS may differ (and not num_steps when the
  learning rate decays over it)."""
  resumable = set(config_lib.RESUMABLE_FIELDS)
  if config.lr_schedule in ("linear", "cosine"):
    resumable.remove("num_steps")  # the decay runs over num_steps
  harness.check_workdir_config(
      workdir, config.items(), load_saved=config_lib.load_config,
      resumable=resumable, record=config.to_json(indent=2))


def restore_latest(config, front_end: visible.FrontEnd, workdir: str,
                   mngr: ocp.CheckpointManager, shardings=None):
  """The latest readable checkpoint's state, or None when there is none.

  The arrays are restored straight into `shardings` (a pytree like the
  state, e.g. `state.make_shardings(config, front_end).state`), whatever
  the devices that wrote them; by default onto this process's first device.
  A checkpoint written by capsjax 0.1 whose params hold the routing
  temperature is migrated (`_restore_with_temperature`).

  A checkpoint that cannot be read (corrupt, truncated, unreadable) is
  reported in one line and the next older one is tried; once one
  restores, the unreadable newer ones are set aside in
  WORKDIR/corrupt_checkpoints/ (moved, never deleted). When none restores
  nothing is moved and CheckpointError names each step and its cause.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    return None
  abstract = state_lib.abstract_state(config, front_end)
  if shardings is None:
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: one, abstract)
  unreadable = []
  _ignore_late_reads()
  for step in steps:
    logging.info("Restoring checkpoint of step %d from %s", step, workdir)
    try:
      state = _restore_step(config, workdir, mngr, step, abstract, shardings)
    except ConfigError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      cause = _one_line(e)
      logging.warning("Checkpoint %d in %s cannot be read (%s); trying the "
                      "previous one", step, workdir, cause)
      unreadable.append((step, cause))
      continue
    if unreadable:
      _set_aside(mngr, workdir, [s for s, _ in unreadable])
      logging.warning("Resumed from checkpoint %d: the unreadable newer "
                      "checkpoint(s) %s are set aside in %s", step,
                      ", ".join(str(s) for s, _ in unreadable),
                      os.path.join(workdir, CORRUPT_DIR))
    return state
  raise CheckpointError(
      f"no checkpoint in {workdir} can be read ("
      + "; ".join(f"step {s}: {c}" for s, c in unreadable) + ")")


# Where unreadable checkpoints go (outside checkpoints/, which Orbax lists).
CORRUPT_DIR = "corrupt_checkpoints"


def _restore_step(config, workdir, mngr, step, abstract, shardings):
  saved_params = mngr.item_metadata(step).tree["params"]
  if LEGACY_TEMPERATURE in saved_params:
    return _restore_with_temperature(
        config, workdir, mngr, step, abstract, shardings,
        saved_params[LEGACY_TEMPERATURE].dtype)
  return _restore_fields(mngr, step, abstract, shardings)


def _ignore_late_reads() -> None:
  """After a failed restore, Orbax's remaining asynchronous reads finish on
  its closed event loop. Python prints that RuntimeError with a traceback,
  after the failure was already reported in one line: as an ignored
  exception at exit (sys.unraisablehook), or, when a read's callback runs
  while the restore is failing, through sys.excepthook. Drop exactly those:
  a RuntimeError "Event loop is closed" raised inside asyncio's
  call_soon_threadsafe. Installed before the first restore, since the late
  reads can race the failure."""
  if getattr(sys.excepthook, "capsjax_late_reads", False):
    return

  def late_read(exc_type, exc_value, tb) -> bool:
    if not (exc_type is RuntimeError
            and str(exc_value) == "Event loop is closed"):
      return False
    while tb is not None:
      if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
        return True
      tb = tb.tb_next
    return False

  previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

  def unraisable_hook(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
      previous_unraisable(unraisable)

  def except_hook(exc_type, exc_value, tb):
    if not late_read(exc_type, exc_value, tb):
      previous_except(exc_type, exc_value, tb)

  except_hook.capsjax_late_reads = True
  sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook


def _one_line(error: Exception, limit: int = 200) -> str:
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ""
  if len(text) > limit:
    text = text[:limit] + "..."
  return f"{type(error).__name__}: {text}"


def _set_aside(mngr: ocp.CheckpointManager, workdir: str, steps) -> None:
  """Moves checkpoint folders to WORKDIR/corrupt_checkpoints/STEP (a
  numbered suffix when that exists); process 0 moves, every process then
  re-reads the listing."""
  if jax.process_index() == 0:
    target_dir = os.path.join(workdir, CORRUPT_DIR)
    os.makedirs(target_dir, exist_ok=True)
    for step in steps:
      target, n = os.path.join(target_dir, str(step)), 1
      while os.path.exists(target):
        target, n = os.path.join(target_dir, f"{step}.{n}"), n + 1
      os.replace(os.path.join(str(mngr.directory), str(step)), target)
  sharding_lib.barrier("capsjax: unreadable checkpoints set aside")
  mngr.reload()


def _restore_fields(mngr, step, abstract, shardings) -> capsjax.TrainState:
  """Restores the state's fields that the checkpoint holds; a field it
  lacks (one added to TrainState since, e.g. `offsets`) must be None."""
  saved = mngr.item_metadata(step).tree
  target = {name: getattr(abstract, name) for name in abstract._fields
            if name in saved or getattr(abstract, name) is not None}
  restored = mngr.restore(step, args=ocp.args.StandardRestore(
      sharding_lib.with_shardings(
          target, {name: getattr(shardings, name) for name in target})))
  return capsjax.TrainState(**{**dict.fromkeys(abstract._fields),
                               **restored})


# capsjax 0.1 stored a routing temperature T != 1 in the params (and so in
# every params-shaped tree of the optimizer state: momentum, Adam moments,
# all zero for it); 0.2 holds it in `capsjax.Routing` (config) alone.
LEGACY_TEMPERATURE = "routing_temperature"


def _is_params_tree(x) -> bool:
  return isinstance(x, dict) and set(x) == {"W", "a", "b"}


def _with_legacy_temperature(tree, leaf):
  """`tree` with `leaf` under LEGACY_TEMPERATURE in every params-shaped dict:
  the layout of a 0.1 checkpoint."""
  return jax.tree.map(
      lambda x: {**x, LEGACY_TEMPERATURE: leaf} if _is_params_tree(x) else x,
      tree, is_leaf=_is_params_tree)


def _without_legacy_temperature(tree):
  def is_legacy(x):
    return isinstance(x, dict) and LEGACY_TEMPERATURE in x
  return jax.tree.map(
      lambda x: ({k: v for k, v in x.items() if k != LEGACY_TEMPERATURE}
                 if is_legacy(x) else x), tree, is_leaf=is_legacy)


def _restore_with_temperature(config, workdir, mngr, step, abstract,
                              shardings, dtype) -> capsjax.TrainState:
  """Restores a 0.1 checkpoint holding params["routing_temperature"]: checks
  the value against config.routing_temperature and drops the key."""
  scalar = shardings.step  # a replicated scalar's sharding
  legacy = _restore_fields(
      mngr, step,
      _with_legacy_temperature(abstract, jax.ShapeDtypeStruct((), dtype)),
      _with_legacy_temperature(shardings, scalar))
  # Replicated: every process holds the value.
  saved = np.asarray(legacy.params[LEGACY_TEMPERATURE].addressable_data(0))
  if saved != np.asarray(config.routing_temperature, saved.dtype):
    raise ConfigError(
        f"config.routing_temperature = {config.routing_temperature!r}, but "
        f"checkpoint {step} in {workdir} (written by capsjax 0.1) was trained "
        f"with routing temperature {float(saved):g}: set routing_temperature "
        f"to {float(saved):g} in {os.path.join(workdir, 'config.json')} and "
        "in the command")
  logging.info("Migrated the 0.1 checkpoint of step %d: the routing "
               "temperature %g is config.routing_temperature", step,
               float(saved))
  return _without_legacy_temperature(legacy)


def rollback(config, front_end: visible.FrontEnd, workdir, mngr, state,
             train_grey, optimizer, shardings: sharding_lib.Shardings
             ) -> capsjax.TrainState:
  """The latest checkpoint (or the initial state) with the learning rate of
  `state` times `config.rollback_lr_factor`.

  The learning rate lives in the optimizer state (optax.inject_hyperparams),
  so it is checkpointed and a resumed run keeps the lowered value.
  """
  harness.finish_checkpoints(mngr)
  restored = restore_latest(config, front_end, workdir, mngr, shardings.state)
  if restored is None:
    restored = state_lib.initial_state(config, front_end, train_grey,
                                       optimizer)
  old_lr = factories.learning_rate(state.opt_state)
  new_lr = old_lr * config.rollback_lr_factor
  logging.warning("Diverged: rolled back to update %d, learning rate %.3g -> "
                  "%.3g", int(restored.step), float(old_lr), float(new_lr))
  return restored._replace(opt_state=optax.tree_utils.tree_set(
      restored.opt_state, learning_rate=new_lr))
