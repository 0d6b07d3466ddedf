"""The experiment runner end to end: training, sampling, resuming, bad input."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from experiments.configs import default
from experiments.runner import checkpoints
from experiments.runner import config as config_lib
from experiments.runner import data as data_io
from experiments.runner import errors
from experiments.runner import factories
from experiments.runner import front_ends
from experiments.runner import harness
from experiments.runner import loop

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir, **overrides):
  config = default.get_config()
  config.data_dir = data_dir
  config.patch_size = 7          # 16 capsules of 49 pixels
  config.num_hidden_capsules = 4
  config.hidden_dim = 4
  config.batch_size = 20
  config.num_steps = 20
  config.log_every_steps = 5
  config.eval_every_steps = 10
  config.sample_every_steps = 20
  config.checkpoint_every_steps = 10
  config.num_eval_examples = 50
  config.num_samples = 10
  config.sample_steps = 5
  config.momentum_switch_step = 5
  # The mechanics under test, not default.py's recipe (PCD-10, decay).
  config.k = 1
  config.lr_schedule = "constant"
  config.ema_decay = 0.0
  # The AIS monitor compiles a program of its own: tests/test_monitors.py
  # turns it on where it is under test.
  config.monitor_ais_betas = 0
  config.update(overrides)
  return config


def _run(args, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300, **kwargs)


def _override_flags(config):
  return [f"--config.{k}={v}" for k, v in config.items()]


def _restore(workdir):
  return front_ends.load_run(workdir)[1]


@pytest.mark.slow
def test_train_and_evaluate_then_sample(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_config(data_dir)
  state = loop.train_and_evaluate(config, workdir)
  assert int(state.step) == 20
  checkpoints = os.listdir(os.path.join(workdir, "checkpoints"))
  assert sorted(checkpoints) == ["10", "20"]
  records = [json.loads(line) for line in
             open(os.path.join(workdir, "metrics.jsonl"))]
  keys = set().union(*records)
  for name in ("train_reconstruction_error", "train_free_energy_gap",
               "train_routing_entropy", "learning_rate",
               "test_reconstruction_error", "free_energy_gap_test_minus_train",
               "test_pseudo_log_likelihood", "test_routing_entropy",
               "test_routing_entropy_std", "test_agreement_logit_std",
               "test_effective_weight_norm", "test_effective_weight_ratio"):
    assert name in keys, name
  assert all(np.isfinite(v) for r in records for v in r.values())
  # The default layer is unrouted (c = 1/Nh): the routing diagnostics take
  # their uniform values.
  for r in records:
    if "test_routing_entropy" in r:
      np.testing.assert_allclose(r["test_routing_entropy"], np.log(4), 1e-5)
      np.testing.assert_allclose(r["test_effective_weight_ratio"], 1, 1e-5)
      assert r["test_agreement_logit_std"] == 0
  assert os.listdir(os.path.join(workdir, "events"))
  with Image.open(os.path.join(workdir, "samples", "step_0000020.png")) as im:
    assert im.size[0] > 100 and im.size[1] > 100
  # The restored checkpoint is the returned state.
  restored = _restore(workdir)
  for name in ("W", "a", "b"):
    np.testing.assert_array_equal(restored.params[name], state.params[name])

  out = tmp_path / "samples.png"
  result = _run(["-m", "experiments.sample", f"--workdir={workdir}",
                 f"--out={out}", "--mh", "--steps=3"])
  assert result.returncode == 0, result.stderr[-2000:]
  with Image.open(out) as im:
    assert im.size[0] > 100


def test_restart_continues_from_the_latest_checkpoint(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(data_dir, num_steps=10), workdir)
  state = loop.train_and_evaluate(tiny_config(data_dir), workdir)
  assert int(state.step) == 20
  steps = [json.loads(line)["step"]
           for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert min(s for s in steps if s > 10) == 15  # no step was redone


def jax_leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def _write_0_1_checkpoint(config, workdir, state, temperature):
  """`state` as capsjax 0.1's runner wrote it at a routing temperature T != 1:
  params["routing_temperature"] = T, and the key in every params-shaped
  tree of the optimizer state (the optimizer's own init of those params;
  0.1 gave the temperature zero gradients, so it stays there)."""
  params = {**state.params,
            "routing_temperature": jnp.asarray(temperature, jnp.float32)}
  opt_state = factories.make_optimizer(config).init(params)
  trained = dict(jax.tree_util.tree_flatten_with_path(state.opt_state)[0])
  opt_state = jax.tree_util.tree_map_with_path(
      lambda path, x: trained.pop(path, x), opt_state)
  assert not trained  # every leaf of the 0.2 state has its place
  legacy = state._replace(params=params, opt_state=opt_state)
  harness.make_workdir(workdir)
  checkpoints.check_workdir_config(config, workdir)
  mngr = harness.checkpoint_manager(config, workdir)
  harness.save_checkpoint(mngr, int(state.step), legacy)
  harness.finish_checkpoints(mngr)
  mngr.close()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_0_1_checkpoint_with_the_temperature_in_params_resumes(
    data_dir, tmp_path, optimizer):
  """A checkpoint whose params hold `routing_temperature` (capsjax 0.1) is
  migrated on load (the key dropped, the value checked against the config)
  and continues exactly as the same checkpoint written by 0.2."""
  config = tiny_config(data_dir, num_iterations=3, routing_temperature=2.0,
                       optimizer=optimizer, num_steps=10,
                       checkpoint_every_steps=5, eval_every_steps=10,
                       sample_every_steps=10)
  reference = str(tmp_path / "reference")
  loop.train_and_evaluate(tiny_config(**{**config, "num_steps": 5}),
                               reference)
  state = _restore(reference)
  legacy = str(tmp_path / "legacy")
  _write_0_1_checkpoint(config, legacy, state, 2.0)

  _, migrated = front_ends.load_run(legacy)
  assert set(migrated.params) == {"W", "a", "b"}
  assert jax.tree.structure(migrated) == jax.tree.structure(state)
  for x, y in zip(jax_leaves(migrated), jax_leaves(state), strict=True):
    np.testing.assert_array_equal(x, y)

  resumed = loop.train_and_evaluate(config, legacy)
  expected = loop.train_and_evaluate(config, reference)
  assert int(resumed.step) == 10
  for x, y in zip(jax_leaves(resumed), jax_leaves(expected), strict=True):
    np.testing.assert_array_equal(x, y)
  assert set(front_ends.load_run(legacy)[1].params) == {"W", "a", "b"}

  # A temperature other than the config's is named, with the fix.
  other = str(tmp_path / "other")
  _write_0_1_checkpoint(config, other, state, 3.0)
  message = (r"config.routing_temperature = 2.0, but checkpoint 5 in .*other "
             r"\(written by capsjax 0.1\) was trained with routing "
             r"temperature 3: set routing_temperature to 3 in .*config.json")
  with pytest.raises(errors.ConfigError, match=message):
    loop.train_and_evaluate(config, other)
  with pytest.raises(errors.ConfigError, match=message):
    front_ends.load_run(other)


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", -0.1, r"config.learning_rate = -0.1: must be > 0"),
    ("dataset", "cifar10", r"config.dataset = 'cifar10': unknown dataset"),
    ("k", 0, r"config.k = 0: must be an integer >= 1"),
    ("num_iterations", 0, r"config.num_iterations = 0"),
    ("patch_size", 5, r"config.patch_size = 5: capsule patches must tile"),
    ("binarize", "otsu", r"config.binarize = 'otsu'"),
    ("routing_rule", "em", r"config.routing_rule = 'em': must be one of"),
    ("mh_block_fraction", 0.5, r"config.mh_block_fraction = 0.5: applies "
     "to MH chains"),
])
def test_bad_config_values_are_rejected_before_training(
    data_dir, tmp_path, field, value, message):
  workdir = tmp_path / "run"
  with pytest.raises(errors.ConfigError, match=message):
    loop.train_and_evaluate(tiny_config(data_dir, **{field: value}),
                                 str(workdir))
  assert not workdir.exists()


def test_command_line_errors_are_one_line(data_dir, tmp_path):
  result = _run(["-m", "experiments.train",
                 "--config=experiments/configs/default.py",
                 f"--workdir={tmp_path / 'run'}", "--config.k=0"])
  assert result.returncode != 0
  assert "config.k = 0" in result.stderr and "Traceback" not in result.stderr

  result = _run(["-m", "experiments.train",
                 "--config=experiments/configs/mnist.py",
                 f"--workdir={tmp_path / 'run2'}",
                 f"--config.data_dir={tmp_path / 'tfds'}",
                 f"--config.data_manual_dir={tmp_path / 'empty'}"])
  assert result.returncode != 0
  assert "raw files not found" in result.stderr
  assert "data_manual_dir" in result.stderr
  assert "Traceback" not in result.stderr


def test_incompatible_workdir_is_a_clear_error(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(data_dir, num_steps=10), workdir)
  with pytest.raises(errors.ConfigError,
                     match=r"incompatible config \(hidden_dim: 4 in the "
                     r"workdir, 8 now\)"):
    loop.train_and_evaluate(tiny_config(data_dir, hidden_dim=8), workdir)


def test_old_workdir_config_reads_with_the_values_it_trained_with(tmp_path):
  """A config.json written before lr_schedule existed trained at a constant
  rate: it must not read as today's default (linear decay)."""
  saved = {k: v for k, v in default.get_config().to_dict().items()
           if k not in ("lr_schedule", "final_learning_rate", "routing_rule",
                        "ema_decay")}
  with open(tmp_path / "config.json", "w") as f:
    json.dump(saved, f)
  config = config_lib.load_config(str(tmp_path))
  assert config.lr_schedule == "constant"
  assert config.final_learning_rate == 0.0
  assert config.routing_rule == "sabour" and config.ema_decay == 0.0
  assert config.k == saved["k"]


def test_data_order_is_a_permutation_per_epoch():
  config = tiny_config("", batch_size=10)
  n = 35  # 3 full batches per epoch; the remainder is dropped
  epoch0 = np.concatenate([data_io.batch_indices(config, n, s)
                           for s in range(3)])
  epoch1 = np.concatenate([data_io.batch_indices(config, n, s)
                           for s in range(3, 6)])
  assert len(set(epoch0)) == 30 and len(set(epoch1)) == 30
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(epoch0[:10],
                                data_io.batch_indices(config, n, 0))


@pytest.mark.slow
def test_mnist_config_trains_on_full_mnist(tmp_path, monkeypatch,
                                           raw_mnist_dir):
  from experiments.configs import mnist  # pylint: disable=g-import-not-at-top
  config = mnist.get_config()
  config.update(data_dir=str(tmp_path / "tfds"),
                data_manual_dir=str(raw_mnist_dir), num_steps=4,
                log_every_steps=2, eval_every_steps=4, sample_every_steps=4,
                checkpoint_every_steps=4, num_samples=4, sample_steps=2,
                num_eval_examples=100, monitor_ais_betas=0)
  # The data the run itself loaded (reading full MNIST again would take
  # ~10 s): data_io.load_data, recorded.
  loaded, load_data = [], data_io.load_data
  monkeypatch.setattr(data_io, "load_data",
                      lambda c: loaded.append(load_data(c)) or loaded[-1])
  workdir = str(tmp_path / "run")
  state = loop.train_and_evaluate(config, workdir)
  assert int(state.step) == 4
  (data,) = loaded
  assert data.train.shape == (60000, 28, 28)
  assert data.test.shape == (10000, 28, 28)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, monkeypatch):
  """A NaN appearing at update 7 stops the run there; checkpoint 5 stays."""
  import capsjax  # pylint: disable=g-import-not-at-top
  train_step = capsjax.train_step

  def poisoned(key, state, batch, **kwargs):
    new, info = train_step(key, state, batch, **kwargs)
    nan_w = jnp.where(new.step == 7, jnp.nan, new.params["W"])
    return new._replace(params={**new.params, "W": nan_w}), info

  monkeypatch.setattr(capsjax, "train_step", poisoned)
  workdir = str(tmp_path / "run")
  config = tiny_config(data_dir, checkpoint_every_steps=5)
  with pytest.raises(errors.DivergenceError,
                     match=r"diverged at update 7: non-finite W"):
    loop.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["5"]
  restored = _restore(workdir)
  assert all(np.all(np.isfinite(x)) for x in jax_leaves(restored.params))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data_dir, tmp_path):
  config = tiny_config(data_dir, num_steps=5000, checkpoint_every_steps=100,
                       log_every_steps=100, eval_every_steps=5000,
                       sample_every_steps=5000)
  workdir = tmp_path / "run"
  log = tmp_path / "train.log"  # a file: an unread pipe could fill and block
  with open(log, "w") as err:
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.train",
         "--config=experiments/configs/default.py", *_override_flags(config),
         f"--workdir={workdir}"], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=err)
  deadline = time.monotonic() + 240
  while not (workdir / "checkpoints" / "100").exists():
    assert proc.poll() is None and time.monotonic() < deadline
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=120)
  stderr = log.read_text()
  assert proc.returncode == 0, stderr[-2000:]
  assert "SIGTERM: saved the checkpoint of update" in stderr
  step = int(_restore(str(workdir)).step)
  assert 100 < step < 5000  # saved where it stopped, not at a multiple of 100


@pytest.mark.parametrize("corrupt, message", [
    (lambda x: x.__setitem__((3, 0, 0), np.nan),
     r"1 images have non-finite values; the first is index 3"),
    (lambda x: x.__setitem__((slice(5, 7), 1, 1), 1.5),
     r"2 images have values outside \[0, 1\]; the first is index 5"),
])
def test_bad_data_is_named_before_training(corrupt, message):
  images = np.zeros((10, 28, 28), np.float32)
  corrupt(images)
  with pytest.raises(errors.DataError, match=message):
    data_io.check_images("mnist train", images)
  with pytest.raises(errors.DataError, match=r"must have shape"):
    data_io.check_images("x", np.zeros((4, 28, 27)))
  with pytest.raises(errors.DataError, match=r"empty"):
    data_io.check_images("x", np.zeros((0, 28, 28)))


def test_unwritable_workdir_is_a_clear_error(data_dir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  with pytest.raises(errors.ConfigError,
                     match=r"workdir .*a_file/run is not writable"):
    loop.train_and_evaluate(tiny_config(data_dir),
                                 str(blocker / "run"))
