"""One writer per workdir: an advisory lock on WORKDIR/lock naming its holder.

The lock is `fcntl.flock` on the file, which the kernel releases when the
holder exits in any way (SIGKILL included), so a lock left by a dead
process is free by construction; the file's content (host and PID) names
the holder for the error message, and the previous holder, when the file
still names one, for the take-over message. Readers (sample, evaluate)
take no lock. A multi-host run locks on process 0 only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from typing import Iterator, Optional

from absl import logging

from experiments.runner.errors import ConfigError
from experiments.runner.errors import LockError

LOCK_FILE = "lock"


def _holder(fd: int) -> Optional[dict]:
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    holder = json.loads(os.read(fd, 4096).decode() or "null")
  except (ValueError, UnicodeDecodeError):
    return None
  return holder if isinstance(holder, dict) else None


def _describe(holder: Optional[dict]) -> str:
  if not holder:
    return "another process"
  return f"PID {holder.get('pid')} on host {holder.get('host')}"


def _acquire(path: str) -> int:
  """An open descriptor of `path` holding its lock (retrying when the file
  was replaced between open and lock)."""
  while True:
    # No O_TRUNC: a writer that fails to lock must not touch the file.
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise ConfigError(f"workdir {os.path.dirname(path)} is not writable: "
                        f"{e.strerror or e}") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _holder(fd)
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise LockError(
            f"workdir {os.path.dirname(path)} is being written by "
            f"{_describe(holder)} (lock file {path}); wait for it to end or "
            "use another --workdir") from None
      raise
    try:
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:  # the holder released (removed) it meanwhile
      same = False
    if same:
      return fd
    os.close(fd)


@contextlib.contextmanager
def workdir_lock(workdir: str, *, enabled: bool = True) -> Iterator[None]:
  """Holds WORKDIR/lock for the duration of the block (`enabled=False`: a
  no-op, for the processes other than 0 of a multi-host run).

  Raises LockError, having written nothing, when another live process
  holds it. A lock file left by a process that is gone (killed, crashed)
  is taken over with a warning naming it.
  """
  if not enabled:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd = _acquire(path)
  try:
    stale = _holder(fd)
    if stale:
      logging.warning("Taking over the lock of %s in %s: that process is "
                      "gone", _describe(stale), workdir)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(me).encode())
    os.fsync(fd)
    yield
  finally:
    # Unlink before unlocking: a process waiting on this file's lock then
    # finds it replaced and opens the new one (the inode check above).
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
    os.close(fd)
