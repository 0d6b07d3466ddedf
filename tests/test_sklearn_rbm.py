"""scikit-learn's BernoulliRBM loaded into capsjax, and its baseline command."""

import itertools
import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from sklearn import neural_network
import threadpoolctl

import capsjax
from capsjax import data as data_lib
from experiments.runner import data as data_io
from experiments.runner import errors
from experiments.runner import front_ends
from experiments.runner.baselines import sklearn_rbm
from experiments.runner.evaluation import report
from experiments.runner.evaluation import suite

REPO = pathlib.Path(__file__).resolve().parents[1]


def random_rbm(n_pixels, n_hidden, seed=0):
  """A 'fitted' BernoulliRBM with random parameters of realistic size."""
  rng = np.random.default_rng(seed)
  rbm = neural_network.BernoulliRBM(n_components=n_hidden)
  rbm.components_ = rng.normal(0, 0.3, (n_hidden, n_pixels))
  rbm.intercept_hidden_ = rng.normal(0, 1, n_hidden)
  rbm.intercept_visible_ = rng.normal(0, 1, n_pixels)
  return rbm


def sklearn_free_energy(rbm, v):
  """A BernoulliRBM's free energy, -v.a - sum_j log(1 + exp(W_j.v + b_j)),
  from its public fitted attributes (sklearn's own is private)."""
  v = np.asarray(v, np.float64)
  return -(v @ rbm.intercept_visible_) - np.logaddexp(
      0.0, v @ rbm.components_.T + rbm.intercept_hidden_).sum(axis=1)


def to_capsules(x, patch):
  side = int(np.sqrt(x.shape[1]))
  return data_lib.images_to_capsules(x.reshape(-1, side, side), patch)


@pytest.mark.parametrize("patch", [1, 4, 7, 28])
def test_free_energy_and_hidden_probs_equal_sklearn(patch):
  rbm = random_rbm(784, 12)
  x = np.random.default_rng(1).binomial(1, 0.3, (20, 784)).astype(np.float64)
  params = sklearn_rbm.params_from_sklearn(rbm, patch)
  nv = (28 // patch) ** 2
  assert params["W"].shape == (nv, 1, 12, patch * patch)
  assert params["a"].shape == (nv, patch * patch)
  assert params["b"].shape == (1, 12)
  v = jnp.asarray(to_capsules(x, patch))
  # One upper capsule: routing gives c = 1 whatever the iterations.
  for r in (capsjax.Routing(1), capsjax.Routing(3)):
    c = capsjax.route_visible(params, v, r)
    np.testing.assert_allclose(c, 1.0, rtol=1e-12)
    np.testing.assert_allclose(capsjax.routed_free_energy(params, v, r),
                               sklearn_free_energy(rbm, x), rtol=1e-5)
  h = capsjax.hidden_probs(params, v, jnp.ones((20, nv, 1)))
  np.testing.assert_allclose(h.reshape(20, 12), rbm.transform(x), rtol=1e-5,
                             atol=1e-7)


def test_partition_function_of_a_tiny_rbm():
  # 4x4 images, enumerable: capsjax's exact log Z equals the logsumexp of
  # sklearn's free energies over all 2^16 images.
  rbm = random_rbm(16, 5, seed=2)
  params = sklearn_rbm.params_from_sklearn(rbm, 2)
  states = np.array(list(itertools.product([0.0, 1.0], repeat=16)))
  expected = scipy.special.logsumexp(-sklearn_free_energy(rbm, states))
  log_z = capsjax.exact_log_z(params, capsjax.Routing(1))
  assert float(log_z) == pytest.approx(expected, rel=1e-5)


def test_a_patch_that_does_not_tile_is_rejected():
  with pytest.raises(ValueError, match="does not tile"):
    sklearn_rbm.params_from_sklearn(random_rbm(784, 3), 5)
  with pytest.raises(ValueError, match="not a square"):
    sklearn_rbm.params_from_sklearn(random_rbm(10, 3), 1)


@pytest.mark.slow
def test_command_writes_a_workdir_that_evaluate_reads(tmp_path):
  workdir = tmp_path / "sklearn"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.sklearn_rbm",
       "--config=experiments/configs/default.py", f"--workdir={workdir}",
       f"--config.data_dir={tmp_path / 'tfds'}", "--config.patch_size=7",
       "--config.num_hidden_capsules=4", "--config.hidden_dim=4",
       "--config.batch_size=50", "--n_iter=2", "--learning_rate=0.05"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  info = json.load(open(workdir / sklearn_rbm.INFO_FILE))
  assert info["n_components"] == 16 and info["n_iter"] == 2
  assert info["num_updates"] == 2 * 5000 // 50
  assert info["train_time_s"] > 0

  config, state = front_ends.load_run(str(workdir))
  assert config.baseline == sklearn_rbm.BASELINE
  assert (config.num_hidden_capsules, config.hidden_dim,
          config.num_iterations) == (1, 16, 1)
  assert int(state.step) == info["num_updates"]
  assert state.params["W"].shape == (16, 1, 16, 49)

  # The checkpoint is the RBM: refit it the same way and compare.
  data = data_io.load_data(config)
  x = sklearn_rbm.binarized_pixels(config, data.train)
  rbm = neural_network.BernoulliRBM(n_components=16, learning_rate=0.05,
                                    batch_size=50, n_iter=2, random_state=0)
  with threadpoolctl.threadpool_limits(1, user_api="blas"):  # as the command
    rbm.fit(x)
  v = to_capsules(x[:100], 7)
  np.testing.assert_allclose(
      capsjax.routed_free_energy(state.params, v, capsjax.Routing(1)),
      sklearn_free_energy(rbm, x[:100]), rtol=1e-4, atol=1e-4)

  settings = suite.Settings(ais="quick", num_betas=20, num_runs=4,
                                 probe_train_examples=200, batch_size=500)
  results = suite.evaluate(config, front_ends.get(config), int(state.step),
                           state.params, data,
                                settings)
  assert -784 * np.log(2) < results["log_likelihood"][
      "test_log_prob_mean"] < 0
  assert 0.1 < results["linear_probe_accuracy"] <= 1
  md = report.to_markdown(results)
  assert f"baseline={sklearn_rbm.BASELINE}" in md

  # A second run into the same workdir is refused (no mixed runs).
  with pytest.raises(errors.ConfigError, match="already holds a run"):
    sklearn_rbm.train_baseline(config, str(workdir))
