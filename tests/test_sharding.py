"""Data-parallel training on 1, 2 and 8 devices and on two processes.

The reference is the same tiny run on this process's single CPU device.
The multi-device runs happen in subprocesses (tests/sharding_worker.py, and
`python -m experiments.train` under jax.distributed), each with its own
forced number of CPU devices, so the device count of this pytest process
never changes. Results may differ from the reference by the order of float
reductions only: the tolerance is 1e-6 absolute on parameters of size
~0.01-7 (observed differences ~1e-7).
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.runner import errors
from experiments.runner import front_ends
from experiments.runner import loop
from tests import sharding_worker
from tests import test_train

TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def _env(num_cpu_devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform"
                      f"_device_count={num_cpu_devices}").strip()
  return env


def _assert_params_close(params, reference, what):
  for name in ("W", "a", "b"):
    np.testing.assert_allclose(np.asarray(params[name]),
                               np.asarray(reference[name]), **TOLERANCE,
                               err_msg=f"{what}: {name}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """The final parameters of 10 updates on one device (this process)."""
  assert jax.device_count() == 1
  workdir = str(tmp_path_factory.mktemp("reference"))
  state = loop.train_and_evaluate(sharding_worker.config(data_dir),
                                       workdir)
  return jax.device_get(state.params)


@pytest.mark.slow
def test_same_result_on_1_2_and_8_devices_and_checkpoints_move(
    data_dir, reference, tmp_path):
  # A checkpoint of update 5 written here, on one device, for the worker
  # to continue on 8.
  resume_workdir = str(tmp_path / "from1")
  loop.train_and_evaluate(sharding_worker.config(data_dir, num_steps=5),
                               resume_workdir)
  out = tmp_path / "worker"
  out.mkdir()
  result = subprocess.run(
      [sys.executable, "-m", "tests.sharding_worker", str(out), data_dir,
       resume_workdir], cwd=test_train.REPO, env=_env(8), capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  facts = json.loads((out / "facts.json").read_text())

  for name in ("2", "8", "8_sharded_w"):
    _assert_params_close(np.load(out / f"params_{name}.npz"), reference,
                         f"{name} devices")
  assert facts["chain_spec_8"] == ["data"]
  assert facts["W_spec_8"] == []
  assert facts["W_spec_8_sharded_w"] == [None, "data"]
  assert facts["binarized_batch_equal"]
  assert "batch_size = 20 must be a multiple of the 8" in (
      facts["indivisible_batch_error"])

  # 1 -> 8 (continued by the worker) and 8 -> 1 (continued here).
  _assert_params_close(np.load(out / "params_resumed_on_8.npz"), reference,
                       "written on 1 device, resumed on 8")
  state = loop.train_and_evaluate(sharding_worker.config(data_dir),
                                       str(out / "from8"))
  assert int(state.step) == 10
  _assert_params_close(jax.device_get(state.params), reference,
                       "written on 8 devices, resumed on 1")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(data_dir, reference, tmp_path):
  """`experiments.train` on 2 processes x 2 CPU devices, via jax.distributed."""
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "experiments.train",
          "--config=experiments/configs/default.py",
          *test_train._override_flags(  # pylint: disable=protected-access
              sharding_worker.config(data_dir)),
          f"--workdir={workdir}",
          f"--coordinator_address=localhost:{_free_port()}",
          "--num_processes=2"]
  # stderr to files: process 1's unread pipe could fill and block it (and
  # process 0 with it) while the test waits on process 0.
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, "w") as err:
      procs.append(subprocess.Popen(args + [f"--process_id={i}"],
                                    cwd=test_train.REPO, env=_env(2),
                                    stdout=subprocess.DEVNULL, stderr=err))
  try:
    for p in procs:
      p.wait(timeout=400)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  stderrs = [log.read_text() for log in logs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(
      f"process {i}: {stderr[-3000:]}" for i, stderr in enumerate(stderrs))

  state = front_ends.load_run(str(workdir))[1]
  assert int(state.step) == 10
  _assert_params_close(jax.device_get(state.params), reference,
                       "2 processes x 2 devices")
  # Process 0 alone writes metrics (once per update logged) and logs them.
  steps = [json.loads(line)["step"]
           for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert sorted(steps) == [5, 10, 10]  # train at 5 and 10, eval at 10
  assert "metrics.py" in stderrs[0] and "metrics.py" not in stderrs[1]
  assert os.listdir(workdir / "samples") == ["step_0000010.png"]


def test_device_settings_are_checked_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(errors.ConfigError,
                     match=r"config.num_devices = 2: JAX sees only 1 cpu "
                     r"device"):
    loop.train_and_evaluate(sharding_worker.config("", num_devices=2),
                                 str(workdir))
  with pytest.raises(errors.ConfigError,
                     match=r"config.num_devices = -1: must be an integer"):
    loop.train_and_evaluate(sharding_worker.config("", num_devices=-1),
                                 str(workdir))
  assert not workdir.exists()
