"""Work is never lost: SIGKILL at any moment (also inside a checkpoint
write), a checkpoint write that fails, and divergence with roll-back."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from orbax.checkpoint.path import atomicity  # orbax's public export
import pytest

import capsjax
from experiments.runner import errors
from experiments.runner import factories
from experiments.runner import front_ends
from experiments.runner import loop
from tests.test_train import REPO
from tests.test_train import _override_flags
from tests.test_train import _run
from tests.test_train import tiny_config

data_dir = pytest.fixture(scope="module")(
    lambda tmp_path_factory: str(tmp_path_factory.mktemp("tfds")))


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def _steps(workdir):
  """Complete checkpoints and in-flight (temporary) ones, by step."""
  folder = os.path.join(workdir, "checkpoints")
  names = os.listdir(folder) if os.path.isdir(folder) else []
  done = sorted(int(n) for n in names if n.isdigit())
  writing = sorted(int(n.split(".")[0]) for n in names if "tmp" in n)
  return done, writing


def _wait_for(predicate, proc, what, timeout=240):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert proc.poll() is None, f"the run ended before {what}"
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_exactly(data_dir, tmp_path):
  """A run killed three times (twice inside a checkpoint write, once at a
  random moment) restores its latest complete checkpoint after every kill,
  never goes backwards, and ends bit-identical to an uninterrupted run:
  parameters, optimizer state and PCD chains."""
  config = tiny_config(data_dir, num_steps=600, checkpoint_every_steps=25,
                       log_every_steps=100, eval_every_steps=600,
                       sample_every_steps=600, persistent=True)
  flags = ["--config=experiments/configs/default.py", *_override_flags(config)]
  reference = str(tmp_path / "reference")
  result = _run(["-m", "experiments.train", *flags, f"--workdir={reference}"])
  assert result.returncode == 0, result.stderr[-2000:]

  workdir = str(tmp_path / "killed")
  rng = random.Random(0)
  restored_step = 0
  for moment in ("checkpoint write", "random", "checkpoint write"):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.slow_commit_train", *flags,
         f"--workdir={workdir}"], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    # First a checkpoint newer than the one resumed from: the run is going.
    _wait_for(lambda: any(s > restored_step for s in _steps(workdir)[0]),
              proc, "a new checkpoint")
    if moment == "checkpoint write":
      newest = _steps(workdir)[0][-1]
      _wait_for(lambda: any(s > newest for s in _steps(workdir)[1]),
                proc, "a checkpoint write")
      in_flight = max(_steps(workdir)[1])
    else:
      time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill"

    state = front_ends.load_run(workdir)[1]
    step = int(state.step)
    assert restored_step < step < 600, (moment, restored_step, step)
    if moment == "checkpoint write":
      assert step < in_flight  # the interrupted write is not used
    assert all(np.all(np.isfinite(x)) for x in _leaves(state.params))
    restored_step = step

  result = _run(["-m", "experiments.train", *flags, f"--workdir={workdir}"])
  assert result.returncode == 0, result.stderr[-2000:]
  # The interrupted writes' temporary folders were cleaned up on restart.
  assert not _steps(workdir)[1]
  a, b = (front_ends.load_run(w)[1] for w in (reference, workdir))
  assert int(a.step) == int(b.step) == 600
  leaves_a, leaves_b = _leaves(a), _leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def test_failed_checkpoint_write_is_a_clear_error_and_keeps_earlier_ones(
    data_dir, tmp_path, monkeypatch):
  """The write of checkpoint 10 fails (disk full): the run stops with an
  error naming the cause and the kept checkpoint 5, which restores; the
  same command then resumes from it and finishes."""
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def disk_full_at_10(self, *args, **kwargs):
    if self.get_final().name == "10":
      raise OSError(errno.ENOSPC, "No space left on device")
    return await finalize(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize",
                      disk_full_at_10)
  workdir = str(tmp_path / "run")
  config = tiny_config(data_dir, checkpoint_every_steps=5)
  with pytest.raises(errors.CheckpointError,
                     match=r"could not be written .*No space left on device.*"
                     r"checkpoints are kept \(updates 5\)"):
    loop.train_and_evaluate(config, workdir)
  assert _steps(workdir)[0] == [5]
  assert int(front_ends.load_run(workdir)[1].step) == 5

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize",
                      finalize)
  state = loop.train_and_evaluate(config, workdir)
  assert int(state.step) == 20
  assert _steps(workdir) == ([10, 15, 20], [])


def _nan_at_update_7_while_lr_is(lr, monkeypatch):
  train_step = capsjax.train_step

  def poisoned(key, state, batch, **kwargs):
    new, info = train_step(key, state, batch, **kwargs)
    current = factories.learning_rate(state.opt_state)
    bad = (new.step == 7) & (current >= lr)
    nan_w = jnp.where(bad, jnp.nan, new.params["W"])
    return new._replace(params={**new.params, "W": nan_w}), info

  monkeypatch.setattr(capsjax, "train_step", poisoned)


def test_rollback_restores_the_last_checkpoint_and_lowers_the_rate(
    data_dir, tmp_path, monkeypatch):
  """Update 7 diverges at the configured rate only: the run rolls back to
  checkpoint 5, halves the rate, and finishes; the halved rate is in the
  checkpoints and the metrics count the roll-back."""
  # With warm-up and clipping the rate sits deeper in the optimizer state.
  config = tiny_config(data_dir, checkpoint_every_steps=5,
                       on_divergence="rollback", rollback_lr_factor=0.5,
                       warmup_steps=3, grad_clip_norm=100.0)
  _nan_at_update_7_while_lr_is(config.learning_rate, monkeypatch)
  workdir = str(tmp_path / "run")
  state = loop.train_and_evaluate(config, workdir)
  assert int(state.step) == 20
  lr = factories.learning_rate(front_ends.load_run(workdir)[1].opt_state)
  np.testing.assert_allclose(lr, config.learning_rate * 0.5, rtol=1e-6)
  records = [json.loads(line)
             for line in open(os.path.join(workdir, "metrics.jsonl"))]
  rollbacks = {r["step"]: r["rollbacks"] for r in records if "rollbacks" in r}
  assert rollbacks[5] == 0 and rollbacks[20] == 1
  assert all(np.all(np.isfinite(x)) for x in _leaves(state.params))


def test_rollback_gives_up_after_max_rollbacks(data_dir, tmp_path,
                                               monkeypatch):
  config = tiny_config(data_dir, checkpoint_every_steps=5,
                       on_divergence="rollback", max_rollbacks=2)
  _nan_at_update_7_while_lr_is(0.0, monkeypatch)  # diverges at every rate
  with pytest.raises(errors.DivergenceError,
                     match=r"diverged at update 7: non-finite W.*gave up "
                     r"after 2 roll-backs"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert _steps(str(tmp_path / "run"))[0] == [5]
