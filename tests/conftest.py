"""Session-wide test settings.

A persistent XLA compilation cache shared by the test process, its xdist
workers and the runner subprocesses: the same small programs are compiled
by many tests, and compilation dominates their run time on 2 CPU cores.
Results do not depend on it.

XLA's CPU backend compiles at LLVM optimization level 0 here (unless
XLA_FLAGS already sets a level): the tests' programs are small and run for
milliseconds, and the default level took ~1.7x the compile time
(tests/test_cd.py and test_routing.py: 214 s of CPU against 126 s). XLA's
own graph optimizations and fusion still run and no level enables fast
math; only the machine code differs (float results can differ in the last
bits, e.g. where fused multiply-adds are formed: every tolerance covers
that, and the bit-for-bit comparisons compare runs made with the same
setting). Set XLA_FLAGS=--xla_backend_optimization_level=2 to test the
optimized code. The runner subprocesses inherit both settings.

Scheduling under `pytest -n 2`: tests marked `slow` start first, so that
the run does not end with one long test on one worker while the other
idles; the files in SHARED_FIXTURE_FILES go to one worker each, whole,
because their tests share expensive module-scoped fixtures (a trained
classifier, an autoencoder, the one-device reference training, MCMC visit
frequencies) that each worker would otherwise build again.
"""

import os
import tempfile

import pytest

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "capsjax-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=0").strip()

SHARED_FIXTURE_FILES = frozenset({
    "tests/test_frechet.py", "tests/test_pipelines.py",
    "tests/test_sampling.py", "tests/test_sharding.py"})


def pytest_collection_modifyitems(config, items):
  """Under xdist, tests marked `slow` first (a stable sort: otherwise in
  file order). Without it the order stays, so that the tests of a file, and
  its module-scoped fixtures, stay together."""
  if hasattr(config, "workerinput"):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """`-n` without `--dist` (xdist's "load"): each test is a unit of work,
  except that a file of SHARED_FIXTURE_FILES is one unit. (Not
  `--dist loadgroup` with xdist_group marks: with pytest 9.2, xdist 3.8's
  groups are silently ignored, pytest-xdist issue #1386.)"""
  if config.getvalue("dist") != "load":
    return None
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=g-import-not-at-top

  class Scheduling(LoadScopeScheduling):

    def _split_scope(self, nodeid):
      path = nodeid.split("::", 1)[0]
      return path if path in SHARED_FIXTURE_FILES else nodeid

  return Scheduling(config, log)
