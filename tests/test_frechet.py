"""Fréchet distance, the feature classifier, evaluate --classifier_workdir."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import capsjax
import capsjax.data
from experiments.runner import data as data_io
from experiments.runner.baselines import sklearn_rbm
from experiments.runner.evaluation import diversity
from experiments.runner.evaluation import frechet
from experiments.runner.evaluation import report
from experiments.runner.models import classifier
from tests import test_evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]


def random_cov(rng, dim, rank=None):
  a = rng.normal(size=(dim, rank or dim))
  return a @ a.T / dim + (0 if rank else 0.1 * np.eye(dim))


def sqrtm_reference(mu1, cov1, mu2, cov2):
  """The usual FID formula: scipy's sqrtm of the product, real part."""
  covmean = scipy.linalg.sqrtm(cov1 @ cov2).real
  return (np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2)
          - 2 * np.trace(covmean))


def eigvals_reference(mu1, cov1, mu2, cov2):
  """tr (C1 C2)^1/2 from the (non-symmetric) product's eigenvalues."""
  eig = np.linalg.eigvals(cov1 @ cov2).real
  return (np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2)
          - 2 * np.sum(np.sqrt(np.clip(eig, 0, None))))


class TestFrechetDistance:

  def test_one_dimension(self):
    # N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2.
    d = frechet.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]])
    assert d == pytest.approx(3.0 ** 2 + (2.0 - 3.0) ** 2)

  def test_diagonal_covariances_closed_form(self):
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(
        (np.sqrt(s1) - np.sqrt(s2)) ** 2)
    d = frechet.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert d == pytest.approx(expected, rel=1e-10)

  def test_commuting_covariances_closed_form(self):
    # Same eigenvectors: the distance is that of the eigenvalues.
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    l1, l2 = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    cov1, cov2 = (u * l1) @ u.T, (u * l2) @ u.T
    mu = rng.normal(size=6)
    expected = np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert frechet.frechet_distance(mu, cov1, mu, cov2) == pytest.approx(
        expected, rel=1e-9)

  @pytest.mark.parametrize("dim", [2, 10, 64])
  def test_general_covariances_match_other_formulas(self, dim):
    rng = np.random.default_rng(dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    cov1, cov2 = random_cov(rng, dim), random_cov(rng, dim)
    d = frechet.frechet_distance(mu1, cov1, mu2, cov2)
    assert d == pytest.approx(sqrtm_reference(mu1, cov1, mu2, cov2), rel=1e-8)
    assert d == pytest.approx(eigvals_reference(mu1, cov1, mu2, cov2),
                              rel=1e-8)

  def test_zero_for_identical_statistics_even_singular(self):
    rng = np.random.default_rng(2)
    mu = rng.normal(size=8)
    for cov in (random_cov(rng, 8), random_cov(rng, 8, rank=3),
                np.zeros((8, 8))):
      assert frechet.frechet_distance(mu, cov, mu, cov) == pytest.approx(
          0.0, abs=1e-9)

  def test_symmetric_and_nonnegative(self):
    rng = np.random.default_rng(3)
    a = (rng.normal(size=16), random_cov(rng, 16, rank=5))  # singular
    b = (rng.normal(size=16), random_cov(rng, 16))
    ab, ba = frechet.frechet_distance(*a, *b), frechet.frechet_distance(*b, *a)
    assert ab == pytest.approx(ba, rel=1e-9)
    assert ab > 0 and np.isfinite(ab)
    assert ab == pytest.approx(sqrtm_reference(*a, *b), rel=1e-6)

  def test_shape_mismatch_raises(self):
    with pytest.raises(ValueError, match="shapes"):
      frechet.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))

  def test_feature_stats(self):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    mu, cov = frechet.feature_stats(x)
    centered = x.astype(np.float64) - x.astype(np.float64).sum(0) / 50
    np.testing.assert_allclose(mu, x.astype(np.float64).sum(0) / 50)
    np.testing.assert_allclose(cov, centered.T @ centered / 49, rtol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
      frechet.feature_stats(x[:1])

  def test_feature_sets(self):
    rng = np.random.default_rng(5)
    cov = random_cov(rng, 4)
    x, y = (rng.multivariate_normal(np.zeros(4), cov, 4000) for _ in "xy")
    same = frechet.features_distance(x, y)
    assert same < 0.05  # two samples of one Gaussian: only estimation noise
    # A shift moves the means alone: the mean term changes, nothing else.
    gap = x.mean(0) - y.mean(0)
    shifted = frechet.features_distance(x, y + 1.0)
    assert shifted == pytest.approx(
        same - gap @ gap + np.sum((gap - 1.0) ** 2), rel=1e-9)


def test_model_samples_are_binary_and_follow_the_marginals():
  # No hidden units to speak of (W = 0, b very negative): the chain's visible
  # units are independent Bernoulli(sigmoid(a)) whatever the start.
  nv, dv = 4, 4
  p = np.linspace(0.1, 0.9, nv * dv).reshape(nv, dv)
  params = {"W": np.zeros((nv, 2, 3, dv), np.float32),
            "a": np.log(p / (1 - p)).astype(np.float32),
            "b": np.full((2, 3), -30.0, np.float32)}
  marginals = np.full((nv, dv), 0.5, np.float32)
  v, rate = frechet.model_samples(jax.random.key(0), params, marginals,
                                  num_samples=2500, num_steps=2,
                                  kernel=capsjax.gibbs(capsjax.Routing(3)),
                                  batch_size=1000)
  assert v.shape == (2500, nv, dv) and rate == 1.0
  assert set(np.unique(v)) <= {0.0, 1.0}
  # 2500 Bernoulli draws: standard error <= 0.01.
  np.testing.assert_allclose(v.mean(0), p, atol=0.04)


# ---------------------------------------------------------------------------
# The classifier.


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  config = classifier.get_config()
  config.data_dir = str(d)
  return config, data_io.read_data(config)


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
  """A classifier trained briefly on the embedded subset, and its workdir."""
  config, (train_x, train_y, test_x, test_y) = small_data
  config = config.copy_and_resolve_references()
  config.update(num_steps=120, batch_size=64)
  model, loss = classifier.train(config, train_x, train_y)
  graphdef, params = classifier.nnx.split(model)
  acc = classifier.accuracy(graphdef, params, test_x, test_y)
  workdir = tmp_path_factory.mktemp("classifier")
  classifier.save(str(workdir), model, config, {"test_accuracy": acc})
  return model, loss, acc, workdir


@pytest.mark.slow
def test_classifier_learns_the_embedded_subset_and_round_trips(
    small_data, trained):
  config, (_, _, test_x, _) = small_data
  model, loss, acc, workdir = trained
  assert np.isfinite(loss)
  assert acc > 0.7  # chance is 0.1; about 0.9 after 120 steps

  loaded = classifier.load(str(workdir), batch_size=300)
  assert loaded.info["test_accuracy"] == acc
  feats = loaded.features(test_x[:500])
  assert feats.shape == (500, config.num_features)
  np.testing.assert_allclose(feats, np.asarray(model.features(test_x[:500])),
                             rtol=1e-5, atol=1e-5)


def _embedded_test_digits():
  """The embedded subset's test digits (100 per class), grey in [0, 1]."""
  with capsjax.data.SMALL_NPZ.open("rb") as f, np.load(f) as npz:
    return npz["test_images"] / np.float32(255), npz["test_labels"]


@pytest.mark.slow
def test_sample_diversity_of_real_digits(trained):
  """Classified by the metric's classifier: the test digits of one class
  have a low entropy and few classes; the class-balanced test set has
  nearly log 10 and all 10 classes (binarized too, like model samples)."""
  images, labels = _embedded_test_digits()
  assert np.all(np.bincount(labels) == 100)
  loaded = classifier.load(str(trained[3]), batch_size=500)
  for digit in (0, 1):
    one = diversity.sample_diversity(loaded,
                                      loaded.features(images[labels == digit]))
    assert sum(one["class_histogram"]) == 100
    assert np.argmax(one["class_histogram"]) == digit
    assert one["entropy_nats"] < 0.5
    assert one["classes_above_threshold"] <= 3
  binary = np.asarray(capsjax.data.binarize(jax.random.key(0), images,
                                            "stochastic"))
  for x in (images, binary):
    every = diversity.sample_diversity(loaded, loaded.features(x))
    assert sum(every["class_histogram"]) == 1000
    assert every["entropy_nats"] > 2.1
    assert every["classes_above_threshold"] == 10
    assert every["max_entropy_nats"] == pytest.approx(np.log(10))


def test_class_diversity_against_scipy_entropy():
  assert diversity.class_diversity([10] * 10)["entropy_nats"] == (
      pytest.approx(np.log(10)))
  one = diversity.class_diversity([0, 0, 50, 0, 0, 0, 0, 0, 0, 0])
  assert one["entropy_nats"] == 0.0 and one["classes_above_threshold"] == 1
  rng = np.random.default_rng(0)
  for _ in range(5):
    counts = rng.integers(0, 100, size=10)
    d = diversity.class_diversity(counts)
    assert d["entropy_nats"] == pytest.approx(scipy.stats.entropy(counts))
    assert d["classes_above_threshold"] == int(np.sum(
        counts / counts.sum() > 0.03))
  # Strictly above 3%: 3 of 100 does not count, 4 does.
  assert diversity.class_diversity([93, 3, 4])["classes_above_threshold"] == 2
  with pytest.raises(ValueError, match="counts"):
    diversity.class_diversity([0, 0])


def test_classifier_training_is_deterministic(small_data):
  config, (train_x, train_y, _, _) = small_data
  config = config.copy_and_resolve_references()
  config.update(num_steps=2, batch_size=16)
  runs = [classifier.nnx.state(classifier.train(config, train_x, train_y)[0])
          for _ in range(2)]
  for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1])):
    np.testing.assert_array_equal(a, b)


def test_load_errors_name_the_fix(tmp_path):
  with pytest.raises(classifier.ClassifierError, match="train_classifier"):
    classifier.load(str(tmp_path))


def test_markdown_without_a_classifier_says_how_to_get_one():
  results = test_evaluate.fake_report(ess=30.0, reliable=True)
  results["frechet"] = {"computed": False, "note": report.FRECHET_HINT}
  md = report.to_markdown(results)
  assert ("| Fréchet distance, samples vs test (classifier features) | not "
          "computed (pass --classifier_workdir=DIR") in md
  assert "python -m experiments.train_classifier" in md


# ---------------------------------------------------------------------------
# End to end: evaluate --classifier_workdir on a tiny trained run.


@pytest.mark.slow
def test_evaluate_reports_the_frechet_distance(small_data, trained,
                                              tmp_path):
  config, _ = small_data
  clf_dir = trained[3]
  # A tiny trained run in seconds: an RBM of 16 hidden neurons fit by
  # scikit-learn for one epoch, written as a capsjax workdir.
  run_dir = tmp_path / "run"
  run_config = test_evaluate.tiny_config(config.data_dir)
  sklearn_rbm.train_baseline(run_config, str(run_dir), n_iter=1,
                             learning_rate=0.05)
  out = tmp_path / "eval"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", f"--workdir={run_dir}",
       f"--out={out}", "--num_betas=20", "--num_runs=4",
       "--probe_train_examples=200", "--batch_size=500",
       f"--classifier_workdir={clf_dir}", "--frechet_samples=600",
       "--frechet_steps=3"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  fd = json.load(open(out / "eval.json"))["frechet"]
  assert fd["computed"] and fd["num_samples"] == 600
  assert fd["num_floor_train_examples"] == 600
  assert fd["num_test_examples"] == 1000
  assert fd["classifier"]["dataset"] == "mnist_small"
  assert fd["classifier"]["test_accuracy"] == trained[2]
  # Train and test digits are closer than a one-epoch model's samples.
  assert 0 < fd["floor_train_vs_test"] < fd["distance"]
  div = fd["diversity"]
  assert len(div["class_histogram"]) == 10
  assert sum(div["class_histogram"]) == 600
  assert div["entropy_nats"] == pytest.approx(
      scipy.stats.entropy(div["class_histogram"]))
  assert 1 <= div["classes_above_threshold"] <= 10
  md = (out / "eval.md").read_text()
  assert (f"| sample diversity (classifier's classes of the Fréchet samples) "
          f"| entropy {div['entropy_nats']:.3f} nats") in md
  assert (f"| Fréchet distance, samples vs test (classifier features) | "
          f"{fd['distance']:.2f} (floor, binarized train vs test: "
          f"{fd['floor_train_vs_test']:.2f}) |") in md


@pytest.mark.slow
def test_sample_command_reports_class_diversity(small_data, trained,
                                                tmp_path):
  """experiments.sample --classifier_workdir stores the samples' class
  histogram beside them; chains started from noise say so; without a .npz
  the flag is a one-line error."""
  config, _ = small_data
  run_dir = tmp_path / "run"
  sklearn_rbm.train_baseline(test_evaluate.tiny_config(config.data_dir),
                             str(run_dir), n_iter=1, learning_rate=0.05)

  def sample(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.sample", f"--workdir={run_dir}",
         f"--classifier_workdir={trained[3]}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300)

  out = tmp_path / "noise.npz"
  result = sample(f"--out={out}", "--init=noise", "--steps=3",
                  "--num_samples=50")
  assert result.returncode == 0, result.stderr[-2000:]
  with np.load(out) as z:
    histogram = z["class_histogram"]
    assert str(z["init"]) == "noise"
    assert histogram.shape == (10,) and histogram.sum() == 50
    assert float(z["entropy_nats"]) == pytest.approx(
        scipy.stats.entropy(histogram), rel=1e-6)
    assert int(z["classes_above_threshold"]) == int(
        np.sum(histogram / 50 > 0.03))
  printed = [json.loads(line) for line in result.stdout.splitlines()
             if line.startswith('{"diversity"')]
  assert len(printed) == 1
  assert printed[0]["diversity"]["class_histogram"] == histogram.tolist()

  bad = sample(f"--out={tmp_path / 'samples.png'}")
  assert bad.returncode != 0
  assert bad.stderr.strip().splitlines()[-1].endswith(
      "--classifier_workdir needs --out=FILE.npz")
  assert not (tmp_path / "samples.png").exists()
