"""The evaluation command: measures on a tiny trained run, the CLI, errors."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import evaluation
from experiments import train_lib
from tests import test_train

REPO = pathlib.Path(__file__).resolve().parents[1]
# AIS small enough for a test; the measures are checked for range, not value.
TINY_AIS = dict(ais="quick", num_betas=50, num_runs=8)
TOP_KEYS = {"step", "num_test_examples", "log_likelihood",
            "reconstruction_error", "linear_probe_accuracy",
            "clustering_accuracy", "frechet", "settings", "config",
            "wall_time_s", "platform"}
LL_KEYS = {"test_log_prob_mean", "test_log_prob_sem", "log_z", "log_z_std",
           "log_z_base", "ess", "acceptance_rate", "reliable"}


def tiny_config(data_dir, **overrides):
  # tests/test_train.py's tiny run (the same config, so the persistent
  # compilation cache of tests/conftest.py serves both files).
  return test_train.tiny_config(data_dir, **overrides)


def _check_results(results, num_runs):
  assert set(results) == TOP_KEYS
  assert results["step"] == 20
  assert results["num_test_examples"] == 1000  # the whole mnist_small test split
  ll = results["log_likelihood"]
  assert set(ll) == LL_KEYS
  # 784 binary pixels: log p(v) in (-784 log 2, 0).
  assert -784 * math.log(2) < ll["test_log_prob_mean"] < 0
  assert 0 < ll["test_log_prob_sem"] < 10
  assert np.isfinite(ll["log_z"]) and ll["log_z_std"] >= 0
  assert 1 <= ll["ess"] <= num_runs + 1e-3
  assert 0 <= ll["acceptance_rate"] <= 1
  assert ll["reliable"] == (ll["ess"] >= evaluation.ess_threshold(num_runs))
  assert 0 < results["reconstruction_error"] < 0.25
  assert 0.1 < results["linear_probe_accuracy"] <= 1  # above chance
  assert 0.1 <= results["clustering_accuracy"] <= 1
  # No --classifier_workdir: tests/test_frechet.py covers the distance.
  assert results["frechet"] == {"computed": False,
                                "note": evaluation.FRECHET_HINT}
  assert results["settings"]["num_runs"] == num_runs
  assert results["platform"]["jax_backend"]
  assert all(t >= 0 for t in results["wall_time_s"].values())


def _measures(results):
  return {k: v for k, v in results.items()
          if k not in ("wall_time_s", "platform")}


@pytest.mark.slow
def test_evaluate_a_trained_run_in_process_and_from_the_command_line(
    tmp_path):
  # One test, so that `pytest -n 2` trains the run once.
  workdir = str(tmp_path / "run")
  train_lib.train_and_evaluate(tiny_config(str(tmp_path / "tfds")), workdir)

  config, state = train_lib.load_run(workdir)
  step, params = int(state.step), state.params
  data = train_lib.load_data(config)
  settings = evaluation.Settings(**TINY_AIS, probe_train_examples=500,
                                 batch_size=300)  # 1000 = 3 batches + padding
  results = evaluation.evaluate(config, step, params, data, settings)
  _check_results(results, num_runs=8)
  assert results["settings"]["probe_train_examples"] == 500
  json_path, md_path = evaluation.write(results, str(tmp_path / "eval"))
  assert json.load(open(json_path)) == json.loads(json.dumps(results))
  md = open(md_path).read()
  assert "| test reconstruction error (per-pixel MSE) |" in md
  assert "(step 20)" in md

  out = tmp_path / "cli"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}",
       f"--out={out}", "--ais=quick", "--num_betas=50", "--num_runs=8",
       "--probe_train_examples=500", "--batch_size=300"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  cli = json.load(open(out / "eval.json"))
  _check_results(cli, num_runs=8)
  assert cli["settings"]["num_betas"] == 50
  assert "| measure | value |" in (out / "eval.md").read_text()
  # Same checkpoint, settings and seed: the same numbers.
  assert _measures(cli) == _measures(json.loads(json.dumps(results)))


def fake_report(**log_likelihood):
  """A minimal `evaluation.evaluate` result, for the markdown renderer."""
  return {
      "step": 7, "num_test_examples": 10,
      "log_likelihood": {"test_log_prob_mean": -123.456,
                         "test_log_prob_sem": 1.0, "log_z": 400.0,
                         "log_z_std": 0.5, "log_z_base": 300.0, "ess": 1.3,
                         "acceptance_rate": 0.2, "reliable": False,
                         **log_likelihood},
      "reconstruction_error": 0.05, "linear_probe_accuracy": 0.9,
      "clustering_accuracy": 0.5,
      "settings": {"ais": "quick", "num_betas": 1000, "num_runs": 32,
                   "beta_schedule": "piecewise", "min_ess": 3.2,
                   "base_model": "data", "probe_train_examples": 100,
                   "num_clusters": 10, "batch_size": 10, "seed": 0},
      "config": {"dataset": "mnist_small"}, "wall_time_s": {"ais": 1.0},
      "platform": {"jax_backend": "cpu", "devices": ["cpu"],
                   "jax_version": "x"},
  }


def test_degenerate_estimate_is_not_printed_as_a_number():
  results = fake_report()
  assert evaluation.ess_threshold(100) == 10  # 10% of the runs,
  assert evaluation.ess_threshold(8) == 2      # but at least 2
  md = evaluation.to_markdown(results)
  assert "| test log-likelihood (nats) | degenerate (ESS 1.3) |" in md
  assert "-123.4" not in md and "400.0" not in md
  results["log_likelihood"]["reliable"] = True
  assert "| test log-likelihood (nats) | -123.46 ± 1.12 |" in (
      evaluation.to_markdown(results))


def test_errors_are_one_line(tmp_path):
  def run(workdir):
    return subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)

  result = run(tmp_path)
  assert result.returncode != 0
  assert "holds no config.json" in result.stderr
  assert "Traceback" not in result.stderr

  # A config but no checkpoint (a run that never saved).
  with open(tmp_path / "config.json", "w") as f:
    f.write(tiny_config(str(tmp_path / "tfds")).to_json())
  with pytest.raises(train_lib.ConfigError, match="no checkpoint in"):
    train_lib.load_run(str(tmp_path))


def test_clustering_accuracy_matches_clusters_to_labels():
  labels = np.array([0, 0, 1, 1, 2, 2, 2])
  # Any relabeling of a perfect clustering scores 1.
  assert evaluation.clustering_accuracy(labels, [5, 5, 3, 3, 9, 9, 9]) == 1.0
  # Contingency (clusters x labels) [[2, 1, 0], [0, 1, 1], [0, 0, 2]]: the
  # best one-to-one map is a->0, b->1, c->2: (2 + 1 + 2) / 7.
  clusters = ["a", "a", "a", "b", "b", "c", "c"]
  assert evaluation.clustering_accuracy(labels, clusters) == pytest.approx(5 / 7)
  # One cluster for everything: only the largest class is matched.
  assert evaluation.clustering_accuracy(labels, [0] * 7) == pytest.approx(3 / 7)
  # More clusters than labels: the extra clusters count as errors.
  assert evaluation.clustering_accuracy([0, 0, 1, 1], [0, 1, 2, 2]) == 0.75
  with pytest.raises(ValueError, match="equal-length"):
    evaluation.clustering_accuracy([0, 1], [0])


def test_kmeans_accuracy_on_separated_blobs():
  rng = np.random.default_rng(0)
  centers = 10.0 * np.eye(3)
  labels = np.repeat(np.arange(3), 20)
  x = centers[labels] + 0.1 * rng.normal(size=(60, 3))
  assert evaluation.kmeans_accuracy(x, labels, num_clusters=3) == 1.0


def test_linear_probe_on_linearly_separable_data():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(400, 5))
  y = (x[:, 0] + x[:, 1] > 1.0).astype(int)
  margin = np.abs(x[:, 0] + x[:, 1] - 1.0) > 0.1  # a clear margin
  x, y = x[margin], y[margin]
  assert evaluation.linear_probe_accuracy(x[:200], y[:200], x[200:],
                                          y[200:]) == 1.0
