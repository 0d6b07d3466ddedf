"""The public functions on batches sharded over 8 CPU devices (docs/model.md
section 9): explicit axes (`jax.make_mesh`'s default), `AxisType.Auto`, and
per-shard results inside `shard_map`, against one device. The checks run in
a subprocess (tests/sharding_api_worker.py), whose device count is forced
to 8 when JAX starts."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_public_functions_on_sharded_batches_match_one_device():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8").strip()
  result = subprocess.run(
      [sys.executable, "-m", "tests.sharding_api_worker"], cwd=REPO,
      env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "sharded calls agree with one device" in result.stdout
