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

Raw MNIST: the tests that read the four official MNIST IDX .gz files take
the `raw_mnist_dir` fixture, the folder named by the environment variable
CAPSJAX_MNIST_DIR (MNIST_DIR_VAR); where it is unset they skip, saying so.
.ci/run sets it when the development machine's copy exists. Runner
subprocesses inherit it with the rest of the environment.

Hypothesis profiles (HYPOTHESIS_PROFILE, default "ci"): "ci", few examples
and derandomized (the same examples every run, for the default and CI
runs); "nightly", many random examples that change from run to run (to
explore; a failure prints the example and how to reproduce it). Both have
no deadline: the first example of a new shape compiles.
"""

import os
import pathlib
import tempfile

import hypothesis
import pytest

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "capsjax-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=0").strip()

hypothesis.settings.register_profile(
    "ci", max_examples=10, deadline=None, derandomize=True,
    print_blob=True)
hypothesis.settings.register_profile(
    "nightly", max_examples=200, deadline=None, derandomize=False,
    print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

MNIST_DIR_VAR = "CAPSJAX_MNIST_DIR"
MNIST_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                   "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="session")
def raw_mnist_dir():
  """The folder of the four raw MNIST IDX .gz files, from CAPSJAX_MNIST_DIR.

  Unset: the test skips. Set to a folder without the four files: the test
  fails (a misconfigured run should not pass by skipping).
  """
  value = os.environ.get(MNIST_DIR_VAR)
  if not value:
    pytest.skip(f"raw MNIST not configured: set {MNIST_DIR_VAR} to a folder "
                "with the four MNIST IDX .gz files")
  folder = pathlib.Path(value).expanduser().resolve()
  missing = [f for f in MNIST_IDX_FILES if not (folder / f).is_file()]
  if missing:
    pytest.fail(f"{MNIST_DIR_VAR}={value}: missing {', '.join(missing)}",
                pytrace=False)
  return folder


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
