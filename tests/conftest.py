"""Session-wide test settings.

A persistent XLA compilation cache shared by the test process, its xdist
workers and the runner subprocesses: the same small programs are compiled
by many tests, and compilation dominates their run time on 2 CPU cores.
Results do not depend on it.
"""

import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "capsjax-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
