"""`python -m experiments.sample`: .npz arrays, and annealed samples."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from capsjax import data as data_lib
from experiments.runner import front_ends
from experiments.runner import monitors
from experiments.runner.baselines import sklearn_rbm
from tests import test_train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _independent_layer(config, p):
  """Params of `config`'s layer with W = 0 and hidden biases far below 0:
  the visible units are independent Bernoulli(p) whatever the hidden ones
  (p: (Nv, Dv))."""
  nv, dv = p.shape
  nh, dh = config.num_hidden_capsules, config.hidden_dim
  return {"W": np.zeros((nv, nh, dh, dv), np.float32),
          "a": np.log(p / (1 - p)).astype(np.float32),
          "b": np.full((nh, dh), -30.0, np.float32)}


@pytest.fixture(scope="module")
def layer():
  config = test_train.tiny_config("unused", num_samples=1000,
                                  sample_steps=2, num_iterations=3)
  grey = np.linspace(0.05, 0.95, 28 * 28, dtype=np.float32).reshape(28, 28)
  p = np.asarray(data_lib.images_to_capsules(grey, config.patch_size))
  return config, p, grey, _independent_layer(config, p)


def test_gibbs_draw_gives_the_visible_means_as_images(layer):
  config, p, grey, params = layer
  marginals = np.full_like(p, 0.5)
  states, samples, rate = monitors.draw(config, front_ends.get(config), params,
                                        jax.random.key(0),
                                      marginals, method="gibbs")
  assert states.shape == (1000,) + p.shape and rate == 1.0
  assert set(np.unique(states)) <= {0.0, 1.0}
  # Every chain's last visible mean is sigmoid(a) = p, laid out as images.
  assert samples.shape == (1000, 28, 28) and samples.dtype == np.float32
  np.testing.assert_allclose(samples, np.broadcast_to(grey, samples.shape),
                             atol=1e-5)
  # The binary states follow p (1000 draws: standard error <= 0.016).
  np.testing.assert_allclose(states.mean(0), p, atol=0.07)


def test_anneal_draw_gives_final_states_of_the_annealing_runs(layer):
  config, p, grey, params = layer
  marginals = np.full_like(p, 0.5)
  states, samples, rate = monitors.draw(config, front_ends.get(config), params,
                                        jax.random.key(1),
                                      marginals, method="anneal",
                                      num_betas=30)
  assert states.shape == (1000,) + p.shape
  assert set(np.unique(states)) <= {0.0, 1.0}
  # Routed (3 iterations) but W = 0: every MH proposal is accepted.
  assert rate == pytest.approx(1.0)
  # The images are the binary states themselves.
  np.testing.assert_array_equal(
      samples, np.asarray(data_lib.capsules_to_images(states,
                                                      config.patch_size)))
  # The last transition is at the second-to-last beta of the piecewise
  # schedule (1 - 1/29 of the way through: beta >= 0.99), from the base
  # model Bernoulli(0.5): the states' means are within 0.01 of p plus noise.
  np.testing.assert_allclose(states.mean(0), p, atol=0.08)
  # Different from a sampler that never left the base model.
  assert np.abs(states.mean(0) - 0.5).max() > 0.3


def test_anneal_sampler_fits_the_png_figure(layer):
  config, p, grey, params = layer
  config = config.copy_and_resolve_references()
  config.num_samples = 20
  test_grey = np.broadcast_to(grey, (20, 28, 28))
  blocks, rate = monitors.sample_figure(
      config, front_ends.get(config), monitors.anneal_sampler(config, 10),
      params, jax.random.key(0),
      test_grey, np.full_like(p, 0.5))
  assert rate == pytest.approx(1.0)
  assert blocks[0].ndim == 2 and blocks[0].shape[0] > 28


@pytest.mark.slow
def test_command_writes_npz_and_png(tmp_path):
  # A tiny trained run in seconds: scikit-learn's RBM, one epoch.
  config = test_train.tiny_config(str(tmp_path / "tfds"))
  workdir = tmp_path / "run"
  sklearn_rbm.train_baseline(config, str(workdir), n_iter=1,
                             learning_rate=0.05)
  nv = (28 // config.patch_size) ** 2
  dv = config.patch_size ** 2

  def run(*args):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.sample", f"--workdir={workdir}",
         *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

  for method, extra, n in (("gibbs", "--steps=3", 12),
                           ("anneal", "--num_betas=20", 7)):
    out = tmp_path / f"{method}.npz"
    run(f"--out={out}", f"--method={method}", extra, f"--num_samples={n}")
    with np.load(out) as z:
      assert z["samples"].shape == (n, 28, 28)
      assert z["samples"].dtype == np.float32
      assert 0 <= z["samples"].min() and z["samples"].max() <= 1
      assert z["states"].shape == (n, nv, dv)
      assert set(np.unique(z["states"])) <= {0, 1}
      assert str(z["method"]) == method
      assert 0 <= float(z["acceptance_rate"]) <= 1
      if method == "anneal":
        assert int(z["num_betas"]) == 20
        np.testing.assert_array_equal(  # the images are the states
            z["samples"], np.asarray(data_lib.capsules_to_images(
                z["states"].astype(np.float32), config.patch_size)))
      else:
        assert int(z["num_steps"]) == 3
        assert not np.array_equal(z["samples"], z["samples"].round())

  png = tmp_path / "anneal.png"
  run(f"--out={png}", "--method=anneal", "--num_betas=20")
  with Image.open(png) as im:
    assert im.size[0] > 100 and im.size[1] > 100
