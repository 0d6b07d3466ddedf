"""The evaluation command: measures on a tiny trained run, the CLI, errors."""

import itertools
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import capsjax
from experiments.runner import data as data_io
from experiments.runner import errors
from experiments.runner import factories
from experiments.runner import front_ends
from experiments.runner import loop
from experiments.runner.evaluation import capsules
from experiments.runner.evaluation import likelihood
from experiments.runner.evaluation import probes
from experiments.runner.evaluation import report
from experiments.runner.evaluation import suite
from tests import test_train

REPO = pathlib.Path(__file__).resolve().parents[1]
# AIS small enough for a test; the measures are checked for range, not value.
TINY_AIS = dict(ais="quick", num_betas=50, num_runs=8)
TOP_KEYS = {"step", "num_test_examples", "log_likelihood",
            "reconstruction_error", "linear_probe_accuracy",
            "clustering_accuracy", "routing", "frechet", "settings",
            "config",
            "wall_time_s", "platform"}
LL_KEYS = {"test_log_prob_mean", "test_log_prob_sem", "log_z", "log_z_std",
           "log_z_base", "ess", "acceptance_rate", "reliable", "reverse_ais",
           "mh_block_fraction"}
REVERSE_KEYS = {"computed", "test_log_prob_mean", "test_log_prob_sem",
                "num_examples", "forward_test_log_prob_mean",
                "forward_test_log_prob_sem", "forward_minus_reverse",
                "tolerance_nats", "disagree", "num_betas", "acceptance_rate",
                "subset", "subset_indices_head"}


def tiny_config(data_dir, **overrides):
  # tests/test_train.py's tiny run (the same config, so the persistent
  # compilation cache of tests/conftest.py serves both files).
  return test_train.tiny_config(data_dir, **overrides)


def _check_results(results, num_runs):
  assert set(results) == TOP_KEYS
  assert results["step"] == 20
  # The whole mnist_small test split.
  assert results["num_test_examples"] == 1000
  ll = results["log_likelihood"]
  assert set(ll) == LL_KEYS
  # 784 binary pixels: log p(v) in (-784 log 2, 0).
  assert -784 * math.log(2) < ll["test_log_prob_mean"] < 0
  assert 0 < ll["test_log_prob_sem"] < 10
  assert np.isfinite(ll["log_z"]) and ll["log_z_std"] >= 0
  assert 1 <= ll["ess"] <= num_runs + 1e-3
  assert 0 <= ll["acceptance_rate"] <= 1
  assert ll["reliable"] == (ll["ess"] >= likelihood.ess_threshold(num_runs))
  rev = ll["reverse_ais"]
  assert set(rev) == REVERSE_KEYS and rev["computed"]
  # The tiny run is unrouted: 500 test examples by default.
  assert rev["num_examples"] == results["settings"]["reverse_ais_examples"]
  assert rev["num_betas"] == results["settings"]["num_betas"]
  for k in ("test_log_prob_mean", "test_log_prob_sem",
            "forward_test_log_prob_mean", "forward_minus_reverse"):
    assert np.isfinite(rev[k]), k
  assert -784 * math.log(2) < rev["test_log_prob_mean"] < 0
  assert rev["test_log_prob_sem"] > 0
  assert rev["forward_minus_reverse"] == pytest.approx(
      rev["forward_test_log_prob_mean"] - rev["test_log_prob_mean"])
  assert rev["disagree"] == (abs(rev["forward_minus_reverse"]) > 3.0)
  assert rev["acceptance_rate"] == 1.0  # unrouted: exact Gibbs steps
  assert 0 < results["reconstruction_error"] < 0.25
  assert 0.1 < results["linear_probe_accuracy"] <= 1  # above chance
  assert 0.1 <= results["clustering_accuracy"] <= 1
  assert results["routing"] == {"computed": False,
                                "note": "unrouted layer: c = 1/Nh"}
  # No --classifier_workdir: tests/test_frechet.py covers the distance.
  assert results["frechet"] == {"computed": False,
                                "note": report.FRECHET_HINT}
  assert results["settings"]["num_runs"] == num_runs
  assert results["platform"]["jax_backend"]
  assert all(t >= 0 for t in results["wall_time_s"].values())


def _check_reverse_ais_against_exact(config, params, data, results,
                                     settings):
  """The tiny layer (16 hidden neurons, unrouted) has an exact log Z: on the
  reverse-AIS subset, recomputed from the seed, forward AIS's mean is the
  mean of log p with AIS's log Z, and RAISE, conservative, is at most the
  exact mean log p plus 3 standard errors."""
  r = factories.make_routing(config)
  assert not r.routed
  rev = results["log_likelihood"]["reverse_ais"]
  keys = suite.evaluation_keys(settings.seed)
  test_v = capsules.binarize_capsules(front_ends.get(config), config.binarize,
                                      data.test, keys["test"],
                                        settings.batch_size)
  subset_key, _ = likelihood.reverse_ais_keys(settings.seed)
  subset = likelihood.reverse_ais_subset(subset_key, len(test_v), 500)
  assert len(np.unique(subset)) == 500
  assert rev["subset_indices_head"] == subset[:10].tolist()
  v = jnp.asarray(test_v[subset])
  exact = np.asarray(capsjax.log_prob(
      params, v, r, capsjax.exact_log_z(params, r, over="hidden")))
  forward = np.asarray(capsjax.log_prob(
      params, v, r, results["log_likelihood"]["log_z"]))
  assert rev["forward_test_log_prob_mean"] == pytest.approx(
      forward.mean(), abs=1e-3)
  assert rev["test_log_prob_mean"] <= exact.mean() + 3 * rev[
      "test_log_prob_sem"]


def _measures(results):
  return {k: v for k, v in results.items()
          if k not in ("wall_time_s", "platform")}


@pytest.mark.slow
def test_evaluate_a_trained_run_in_process_and_from_the_command_line(
    tmp_path):
  # One test, so that `pytest -n 2` trains the run once.
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(str(tmp_path / "tfds")), workdir)

  config, state = front_ends.load_run(workdir)
  step, params = int(state.step), state.params
  data = data_io.load_data(config)
  settings = suite.Settings(**TINY_AIS, probe_train_examples=500,
                                 batch_size=300)  # 1000 = 3 batches + padding
  results = suite.evaluate(config, front_ends.get(config), step, params,
                           data, settings)
  _check_results(results, num_runs=8)
  assert results["settings"]["probe_train_examples"] == 500
  assert results["settings"]["reverse_ais_examples"] == 500
  _check_reverse_ais_against_exact(config, params, data, results, settings)
  json_path, md_path = report.write(results, str(tmp_path / "eval"))
  assert json.load(open(json_path)) == json.loads(json.dumps(results))
  md = open(md_path).read()
  assert "| test reconstruction error (per-pixel MSE) |" in md
  assert "(step 20)" in md
  assert "| reverse AIS test log-likelihood (nats; conservative) | " in md

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
  """A minimal `suite.evaluate` result, for the markdown renderer."""
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
  assert likelihood.ess_threshold(100) == 10  # 10% of the runs,
  assert likelihood.ess_threshold(8) == 2      # but at least 2
  md = report.to_markdown(results)
  assert "| test log-likelihood (nats) | degenerate (ESS 1.3) |" in md
  assert "-123.4" not in md and "400.0" not in md
  results["log_likelihood"]["reliable"] = True
  assert "| test log-likelihood (nats) | -123.46 ± 1.12 |" in (
      report.to_markdown(results))


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
  with pytest.raises(errors.ConfigError, match="no checkpoint in"):
    front_ends.load_run(str(tmp_path))


def test_clustering_accuracy_matches_clusters_to_labels():
  labels = np.array([0, 0, 1, 1, 2, 2, 2])
  # Any relabeling of a perfect clustering scores 1.
  assert probes.clustering_accuracy(labels, [5, 5, 3, 3, 9, 9, 9]) == 1.0
  # Contingency (clusters x labels) [[2, 1, 0], [0, 1, 1], [0, 0, 2]]: the
  # best one-to-one map is a->0, b->1, c->2: (2 + 1 + 2) / 7.
  clusters = ["a", "a", "a", "b", "b", "c", "c"]
  assert probes.clustering_accuracy(labels, clusters) == pytest.approx(
      5 / 7)
  # One cluster for everything: only the largest class is matched.
  assert probes.clustering_accuracy(labels, [0] * 7) == pytest.approx(3 / 7)
  # More clusters than labels: the extra clusters count as errors.
  assert probes.clustering_accuracy([0, 0, 1, 1], [0, 1, 2, 2]) == 0.75
  with pytest.raises(ValueError, match="equal-length"):
    probes.clustering_accuracy([0, 1], [0])


def test_kmeans_accuracy_on_separated_blobs():
  rng = np.random.default_rng(0)
  centers = 10.0 * np.eye(3)
  labels = np.repeat(np.arange(3), 20)
  x = centers[labels] + 0.1 * rng.normal(size=(60, 3))
  assert probes.kmeans_accuracy(x, labels, num_clusters=3) == 1.0


def test_linear_probe_on_linearly_separable_data():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(400, 5))
  y = (x[:, 0] + x[:, 1] > 1.0).astype(int)
  margin = np.abs(x[:, 0] + x[:, 1] - 1.0) > 0.1  # a clear margin
  x, y = x[margin], y[margin]
  assert probes.linear_probe_accuracy(x[:200], y[:200], x[200:],
                                          y[200:]) == 1.0


def test_reverse_ais_report_flags_a_gap_over_three_nats():
  rng = np.random.default_rng(0)
  forward = rng.normal(-100.0, 5.0, size=40)
  near = likelihood.reverse_ais_report(forward - 1.0, forward,
                                       indices=np.arange(40), num_betas=10,
                                       acceptance_rate=1.0)
  assert near["test_log_prob_mean"] == pytest.approx(forward.mean() - 1.0)
  # Standard error: sample std (ddof 1) over sqrt(n).
  assert near["test_log_prob_sem"] == pytest.approx(
      np.sqrt(np.sum((forward - forward.mean()) ** 2) / 39) / np.sqrt(40))
  assert near["forward_minus_reverse"] == pytest.approx(1.0)
  assert near["num_examples"] == 40 and not near["disagree"]
  far = likelihood.reverse_ais_report(forward - 3.5, forward,
                                      indices=np.arange(40), num_betas=10,
                                      acceptance_rate=1.0)
  assert far["disagree"]
  # Either direction counts.
  assert likelihood.reverse_ais_report(forward + 4.0, forward,
                                       indices=np.arange(40), num_betas=10,
                                       acceptance_rate=1.0)["disagree"]
  results = fake_report(reliable=True, reverse_ais=far)
  md = report.to_markdown(results)
  assert ("| reverse AIS test log-likelihood (nats; conservative) | "
          f"{far['test_log_prob_mean']:.2f} ± "
          f"{far['test_log_prob_sem']:.2f} on 40 test examples") in md
  assert "WARNING: forward and reverse differ by 3.50 nats" in md
  results["log_likelihood"]["reverse_ais"] = near
  assert "WARNING" not in report.to_markdown(results)
  # A degenerate forward estimate is not printed beside it either.
  results["log_likelihood"]["reliable"] = False
  md = report.to_markdown(results)
  assert "(forward AIS degenerate: not compared)" in md
  assert f"{near['forward_test_log_prob_mean']:.2f}" not in md


def test_reverse_ais_subset_is_seeded_and_sized():
  key = likelihood.reverse_ais_keys(0)[0]
  a = likelihood.reverse_ais_subset(key, 1000, 100)
  assert len(a) == 100 and len(np.unique(a)) == 100
  assert np.all(np.diff(a) > 0) and a.max() < 1000
  np.testing.assert_array_equal(a, likelihood.reverse_ais_subset(key, 1000,
                                                                 100))
  assert not np.array_equal(
      a, likelihood.reverse_ais_subset(likelihood.reverse_ais_keys(1)[0],
                                       1000, 100))
  np.testing.assert_array_equal(likelihood.reverse_ais_subset(key, 30, 100),
                                np.arange(30))
  assert likelihood.reverse_ais_size(suite.Settings(),
                                     capsjax.Routing(1)) == 500
  assert likelihood.reverse_ais_size(suite.Settings(),
                                     capsjax.Routing(3)) == 100
  assert likelihood.reverse_ais_size(
      suite.Settings(reverse_ais_examples=7), capsjax.Routing(3)) == 7


def test_reverse_ais_log_probs_in_batches_match_exact_log_p():
  """A routed 3x2 -> 2x2 layer, every visible state 20 times, batches of 64
  (the last padded): RAISE's mean is conservative and close to the exact
  mean log p from enumeration (a long schedule on a tiny layer)."""
  with jax.enable_x64(True):
    r = capsjax.Routing(3)
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    params = capsjax.init_params(k1, 3, 2, 2, 2, weight_std=1.0,
                                 dtype=jnp.float64)
    params["a"] = 0.5 * jax.random.normal(k2, params["a"].shape)
    params["b"] = 0.5 * jax.random.normal(k3, params["b"].shape)
    states = np.array(list(itertools.product([0.0, 1.0], repeat=6))
                      ).reshape(64, 3, 2)
    v = np.repeat(states, 20, axis=0)  # 1280 = 20 batches of 64
    v = v[:1250]                       # the last batch padded
    exact = np.asarray(capsjax.log_prob(params, jnp.asarray(v), r,
                                        capsjax.exact_log_z(params, r)))
    bias = jnp.zeros((3, 2), jnp.float64)
    est, rate = likelihood.reverse_ais_log_probs(
        jax.random.key(0), params, v, r, bias, num_betas=200, batch_size=64)
    assert est.shape == (1250,) and np.all(np.isfinite(est))
    assert 0 < rate < 1  # MH steps of a routed layer
    diff = est - exact
    sem = np.std(diff, ddof=1) / np.sqrt(len(diff))
    assert diff.mean() < 3 * sem  # conservative (Jensen), up to noise
    assert diff.mean() > -0.3     # and close: 200 betas, 6 pixels


def test_routing_diagnostics_of_a_routed_layer(tmp_path, monkeypatch):
  """A tiny cosine-routed run logs the parse fraction and class information
  while training, and evaluate's routing entry is capsjax.routing_parse of
  the coefficients of the first PARSE_EXAMPLES test digits."""
  config = tiny_config(str(tmp_path / "tfds"), num_iterations=3,
                       routing_rule="cosine",
                       routing_temperature=0.2)
  workdir = str(tmp_path / "run")
  state = loop.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  evaluated = [m for m in logged if "test_routing_parse_fraction" in m]
  assert [m["step"] for m in evaluated] == [10, 20]
  assert all(0 <= m["test_routing_parse_fraction"] <= 1 and
             m["test_routing_class_information"] >= 0 for m in evaluated)

  routing = factories.make_routing(config)
  assert routing == capsjax.Routing(3, 0.2, "cosine")
  monkeypatch.setattr(probes, "PARSE_EXAMPLES", 300)  # the cut is applied
  data = data_io.load_data(config)
  front_end = front_ends.get(config)
  settings = suite.Settings(**TINY_AIS, probe_train_examples=200,
                            batch_size=128, reverse_ais_examples=0)
  got = suite.evaluate(config, front_end, 20, state.params, data,
                       settings)["routing"]
  keys = suite.evaluation_keys(settings.seed)
  test_v = capsules.binarize_capsules(front_end, config.binarize, data.test,
                                      keys["test"], 128)[:300]
  c = capsjax.route_visible(state.params, jnp.asarray(test_v), routing)
  expected = capsjax.routing_parse(c, jnp.asarray(test_v),
                                   jnp.asarray(data.test_labels[:300]))
  assert got["num_examples"] == 300
  assert got["parse_fraction"] == pytest.approx(
      float(expected.parse_fraction), abs=1e-6)
  assert got["class_information_nats"] == pytest.approx(
      float(expected.class_information), rel=1e-4)
  assert got["num_qualifying"] == int(expected.num_qualifying) > 0
  assert got["entropy_nats"] == pytest.approx(
      float(jnp.mean(capsjax.routing_entropy(c))), rel=1e-5)
  md = report.to_markdown(fake_report() | {"routing": got})
  assert (f"parse fraction {got['parse_fraction']:.3f} of "
          f"{got['num_qualifying']} capsules") in md
