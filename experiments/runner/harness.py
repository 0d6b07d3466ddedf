"""What the three trainers (CD layer, autoencoder, classifier) and every
command share: the workdir and its config record, Orbax checkpoint writing,
the SIGTERM flag, and `exit_on_error`, which turns the known errors into a
one-line `SystemExit("error: ...")`."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import threading
from typing import Callable, Iterable, Mapping

from absl import flags
import jax
import orbax.checkpoint as ocp

from capsjax import data as data_lib
from experiments.runner import errors
from experiments.runner import lock
from experiments.runner.errors import CheckpointError
from experiments.runner.errors import ConfigError

# Errors that end a command with their message alone: bad configs, workdirs
# and data, divergence, failed checkpoint writes, a dataset not found.
KNOWN_ERRORS = (errors.ConfigError, errors.DataError, errors.DivergenceError,
                errors.CheckpointError, errors.LockError,
                data_lib.DatasetNotFoundError)


def exit_on_error(*extra: type[BaseException]) -> Callable:
  """Decorates a command's `main(argv)`: KNOWN_ERRORS (and `extra`) become
  `SystemExit("error: MESSAGE")`, a message rather than a traceback."""
  caught = KNOWN_ERRORS + tuple(extra)

  def decorate(main: Callable) -> Callable:
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
      try:
        return main(*args, **kwargs)
      except caught as e:
        raise SystemExit(f"error: {e}") from None
    return wrapped
  return decorate


def parse_flags(argv):
  """`app.run`'s flags parser: a bad flag value, an unknown or mistyped
  config field (with ml_collections' suggestion) or a config file that does
  not load ends the command with one line, not a traceback."""
  try:
    argv = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
      # ml_collections defers a config file's load error to the first use.
      flags.FLAGS["config"].value.keys()
    return argv
  except flags.Error as e:
    message = str(e)
  except (AttributeError, KeyError) as e:  # ml_collections: unknown field
    text = str(e)
    field = re.search(r"'(\w+)", text)
    message = f"unknown config field {field.group(1) if field else text}"
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    if suggestion:
      message += f': did you mean "{suggestion.group(1)}"?'
  except OSError as e:  # a config file that does not exist
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    message = f"cannot load the config file: {lines[-1]}"
  except (ValueError, TypeError, SyntaxError, ImportError) as e:
    message = " ".join(f"{type(e).__name__}: {e}".split())
  raise SystemExit(f"error: {message} (see --helpfull)")


@contextlib.contextmanager
def sole_writer(workdir: str):
  """The block as the workdir's one writer: creates the workdir, takes its
  lock (lock.py; process 0 of a multi-host run) and checks it is writable.
  A second writer raises LockError, having written nothing."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable: "
                      f"{e.strerror or e}") from None
  with lock.workdir_lock(workdir, enabled=jax.process_index() == 0):
    make_workdir(workdir)
    yield


def make_workdir(workdir: str) -> None:
  """Creates the workdir and checks that it is writable, before any work."""
  try:
    os.makedirs(workdir, exist_ok=True)
    # One probe per process: processes sharing the workdir must not race.
    probe = os.path.join(workdir, f".write_test{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable: "
                      f"{e.strerror or e}") from None


def check_workdir_config(workdir: str, now: Iterable, *,
                         load_saved: Callable[[str], Mapping],
                         resumable: Iterable[str], record: str,
                         error: type[Exception] = ConfigError) -> None:
  """Records the config in a new workdir (`record`: its JSON), or checks the
  items `now` against the record (`load_saved(workdir)`): every field but
  the `resumable` ones must be equal."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    saved = load_saved(workdir)
    resumable = set(resumable)
    diffs = [f"{k}: {saved.get(k)!r} in the workdir, {v!r} now"
             for k, v in now if k not in resumable and saved.get(k) != v]
    if diffs:
      raise error(
          f"workdir {workdir} was written by an incompatible config ("
          + "; ".join(diffs) + "): use a new --workdir or the same values")
  elif jax.process_index() == 0:
    # Renamed into place: another process never reads a half-written file.
    with open(path + ".tmp", "w") as f:
      f.write(record)
    os.replace(path + ".tmp", path)


def checkpoint_manager(config, workdir: str, *, create: bool = True
                       ) -> ocp.CheckpointManager:
  """The workdir's manager; `create=False` for readers (sample, evaluate)."""
  # The writer removes the temporary folder of a write that a crash cut
  # short (Orbax commits a checkpoint by renaming it, so such a folder is
  # never mistaken for a checkpoint, but it would accumulate).
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(
          config.keep_checkpoints),
      create=create, cleanup_tmp_directories=create)
  # The handler named up front, so that a checkpoint's metadata (its tree,
  # read before restoring: restore_latest) is readable before any save.
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"), options=options,
      item_handlers=ocp.StandardCheckpointHandler())


def _checkpoint_error(mngr: ocp.CheckpointManager,
                      error: Exception) -> CheckpointError:
  # Orbax reports a failed asynchronous write at the next save or wait, so
  # the message lists the complete checkpoints rather than guess which write
  # failed.
  mngr.reload()
  kept = mngr.all_steps()
  return CheckpointError(
      f"a checkpoint could not be written to {mngr.directory} "
      f"({type(error).__name__}: {error}); the complete checkpoints are kept "
      f"(updates {', '.join(map(str, kept)) or 'none'}): fix the cause and "
      "re-run the same command to resume from the latest")


def save_checkpoint(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Starts writing `state` as checkpoint `step` (asynchronously)."""
  try:
    mngr.save(step, args=ocp.args.StandardSave(state))
  except Exception as e:  # pylint: disable=broad-except
    raise _checkpoint_error(mngr, e) from e


def finish_checkpoints(mngr: ocp.CheckpointManager) -> None:
  """Waits for pending writes; a failed one is a CheckpointError."""
  try:
    mngr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _checkpoint_error(mngr, e) from e


@contextlib.contextmanager
def sigterm_flag():
  """Yields an event that SIGTERM (preemption) sets; checked once per update.

  The previous handler is restored on exit. Signals reach the main thread
  only, so elsewhere the event is never set.
  """
  flag = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: flag.set())
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)
