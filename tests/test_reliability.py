"""Faults an operator meets (issue 18), with real processes and real files:
a corrupt latest checkpoint, two writers on one workdir, and command-line
mistakes, each ending in a one-line message or a logged recovery."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments.runner import checkpoints
from experiments.runner import errors
from experiments.runner import front_ends
from experiments.runner import harness
from experiments.runner import lock
from experiments.runner import loop
from tests.test_train import REPO
from tests.test_train import _override_flags
from tests.test_train import tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _run(args, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300, **kwargs)


def _flip_array_bytes(checkpoint_dir):
  """Flips bytes in the middle of every array-data file, as bit rot does."""
  flipped = 0
  for root, _, files in os.walk(checkpoint_dir):
    if os.path.basename(root) != "d":
      continue
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        data = bytearray(f.read())
        for i in range(len(data) // 4, min(len(data), len(data) // 4 + 64)):
          data[i] ^= 0xFF
        f.seek(0)
        f.write(data)
      flipped += 1
  assert flipped, f"no array files under {checkpoint_dir}"


def _assert_one_line_error(result, match):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and match in last, last


def test_a_corrupt_latest_checkpoint_is_set_aside_and_training_resumes(
    data_dir, tmp_path):
  """Checkpoint 20 of a run (10 intact) gets flipped bytes: re-running
  resumes from 10, moves 20 to corrupt_checkpoints/, and ends bit-identical
  to the run that never met the fault. A reader (sample, evaluate) does the
  same; when no checkpoint is readable, the command says so in one line."""
  config = tiny_config(data_dir, num_steps=20, checkpoint_every_steps=10)
  full = str(tmp_path / "full")
  want = loop.train_and_evaluate(config, full)
  broken = str(tmp_path / "broken")
  shutil.copytree(full, broken)
  _flip_array_bytes(os.path.join(broken, "checkpoints", "20"))
  reader = str(tmp_path / "reader")
  shutil.copytree(broken, reader)

  got = loop.train_and_evaluate(config, broken)
  assert os.path.isdir(os.path.join(broken, checkpoints.CORRUPT_DIR, "20"))
  assert int(got.step) == 20
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(x, y)

  _, state = front_ends.load_run(reader)
  assert int(state.step) == 10
  assert os.listdir(os.path.join(reader, checkpoints.CORRUPT_DIR)) == ["20"]

  _flip_array_bytes(os.path.join(reader, "checkpoints", "10"))
  result = _run(["-m", "experiments.sample", f"--workdir={reader}",
                 f"--out={tmp_path / 's.png'}"])
  _assert_one_line_error(result, "no checkpoint in")
  assert "step 10: " in result.stderr
  # Nothing is set aside when nothing can be restored.
  assert os.listdir(os.path.join(reader, "checkpoints")) == ["10"]


def test_a_second_writer_exits_at_once_and_writes_nothing(data_dir, tmp_path):
  """While one training process runs, the same command started again
  exits non-zero with one line naming the holder's PID, before writing
  anything; after the first ends, the lock file is gone."""
  workdir = tmp_path / "run"
  config = tiny_config(data_dir, num_steps=100_000, checkpoint_every_steps=50)
  args = ["-m", "experiments.train", "--config=experiments/configs/default.py",
          f"--workdir={workdir}", *_override_flags(config)]
  # stderr to a file, not a pipe: nobody reads a pipe while the first
  # writer runs, and a full pipe would block its logging (and its exit).
  log = tmp_path / "first.log"
  with open(log, "w") as err:
    first = subprocess.Popen([sys.executable, *args], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=err)
  try:
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / "50").exists():
      assert first.poll() is None, log.read_text()[-2000:]
      assert time.time() < deadline, "the first writer made no checkpoint"
      time.sleep(0.5)
    record = (workdir / "config.json").stat().st_mtime_ns
    second = _run(args)
    _assert_one_line_error(second, f"PID {first.pid}")
    assert "is being written by" in second.stderr
    assert (workdir / "config.json").stat().st_mtime_ns == record
    assert not list(workdir.glob(".write_test*"))
  finally:
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
  assert not (workdir / lock.LOCK_FILE).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / lock.LOCK_FILE).write_text(
      json.dumps({"host": "somewhere", "pid": dead.pid}))
  with lock.workdir_lock(str(tmp_path)):
    holder = json.loads((tmp_path / lock.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid()
    # In the same process a second lock is refused too (one writer).
    with pytest.raises(errors.LockError, match=f"PID {os.getpid()}"):
      with lock.workdir_lock(str(tmp_path)):
        pass
  assert not (tmp_path / lock.LOCK_FILE).exists()


def test_sole_writer_creates_the_workdir_and_holds_its_lock(tmp_path):
  with harness.sole_writer(str(tmp_path / "new")):
    holder = json.loads((tmp_path / "new" / lock.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid()
  assert not (tmp_path / "new" / lock.LOCK_FILE).exists()


@pytest.mark.parametrize("args, match", [
    (["--config.num_stpes=10"],
     'unknown config field num_stpes: did you mean "num_steps"?'),
    (["--config.num_steps=ten"], "num_steps"),
], ids=["mistyped key", "bad value"])
def test_command_line_mistakes_are_one_line(tmp_path, args, match):
  workdir = tmp_path / "run"
  result = _run(["-m", "experiments.train",
                 "--config=experiments/configs/default.py",
                 f"--workdir={workdir}", *args])
  _assert_one_line_error(result, match)
  assert not workdir.exists()


def test_an_unknown_config_file_is_one_line(tmp_path):
  result = _run(["-m", "experiments.train", "--config=configs/nothing.py",
                 f"--workdir={tmp_path / 'run'}"])
  _assert_one_line_error(result, "configs/nothing.py")
