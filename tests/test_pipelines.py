"""Issue 5's pipelines end to end on tiny configs: the autoencoder front end
(autoencoder, then a capsule PoE on its codes) and greedily stacked capsule
layers (three layers), through the real runner, sampler and evaluator."""

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import capsjax
from capsjax import data as data_lib
from experiments.runner import data as data_io
from experiments.runner import errors
from experiments.runner import front_ends
from experiments.runner import harness
from experiments.runner import loop
from experiments.runner import state as state_lib
from experiments.runner import visible
from experiments.runner.evaluation import report
from experiments.runner.evaluation import suite
from experiments.runner.models import autoencoder
from experiments.runner.models import autoencoder_training as ae_training
from experiments.runner.models import classifier as classifier_lib
from tests import test_train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def tiny_ae_config(data_dir, **overrides):
  config = autoencoder.get_config()
  config.data_dir = data_dir
  config.num_capsules = 8
  config.code_dim = 2
  config.conv_features = (4, 8)
  config.batch_size = 32
  config.num_steps = 6
  config.log_every_steps = 3
  config.checkpoint_every_steps = 3
  config.update(overrides)
  return config


def tiny_config(data_dir, **overrides):
  """tests/test_train.py's tiny layer, unrouted, six updates."""
  settings = dict(num_iterations=1, num_steps=6, log_every_steps=3,
                  eval_every_steps=6, sample_every_steps=6,
                  checkpoint_every_steps=3, num_eval_examples=20,
                  sample_steps=3, momentum_switch_step=3)
  return test_train.tiny_config(data_dir, **(settings | overrides))


@pytest.fixture(scope="module")
def ae_workdir(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("ae"))
  results = ae_training.train_and_evaluate(tiny_ae_config(data_dir), workdir)
  assert results["step"] == 6
  return workdir


@pytest.fixture(scope="module")
def grey(data_dir):
  return data_lib.load_split("mnist_small", "test", data_dir=data_dir)[0][:40]


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# ---------------------------------------------------------------------------
# Front ends.


def test_patches_front_end_is_the_old_binarize_then_cut(grey):
  config = tiny_config("", patch_size=4)
  key = jax.random.key(3)
  # The pre-front-end code: binarize the image, then cut it into patches.
  expected = data_lib.images_to_capsules(
      jax.random.bernoulli(key, jnp.asarray(grey)).astype(jnp.float32), 4)
  fe = front_ends.get(config)
  np.testing.assert_array_equal(
      visible.to_capsules(fe, config.binarize, grey, key), expected)
  np.testing.assert_array_equal(visible.marginals(fe, grey),
                                data_lib.images_to_capsules(grey.mean(0), 4))
  assert state_lib.shapes(config, fe) == (49, 16, 4, 4)
  np.testing.assert_array_equal(fe.decode(fe.means(grey)), grey)


def test_front_end_config_errors_name_the_field_and_the_fix():
  with pytest.raises(errors.ConfigError, match="autoencoder_workdir.*"
                     "train_autoencoder"):
    front_ends.get(tiny_config("", front_end="autoencoder"))
  with pytest.raises(errors.ConfigError, match="lower_workdir"):
    front_ends.get(tiny_config("", front_end="layer"))
  with pytest.raises(errors.ConfigError, match="front_end"):
    front_ends.get(tiny_config("", front_end="pixels"))
  with pytest.raises(errors.ConfigError,
                     match="autoencoder_workdir.*no autoencoder"):
    front_ends.get(tiny_config("", front_end="autoencoder",
                               autoencoder_workdir="/nonexistent/ae"))


# ---------------------------------------------------------------------------
# The autoencoder.


@pytest.mark.slow
def test_autoencoder_checkpoint_restores_and_resumes_exactly(ae_workdir,
                                                             data_dir, grey):
  config = autoencoder.load_config(ae_workdir)
  mngr = harness.checkpoint_manager(config, ae_workdir, create=False)
  try:
    mid = autoencoder.restore(config, mngr, 3)
    final = autoencoder.restore(config, mngr, 6)
  finally:
    mngr.close()
  # Three more steps from the middle checkpoint, as a resumed run does them,
  # land bit for bit on the final checkpoint.
  train_x = data_lib.load_split("mnist_small", "train", data_dir=data_dir)[0]
  step_fn = ae_training.make_train_step(config)
  state = mid
  for step in range(3, 6):
    state, _ = step_fn(state, train_x[data_io.batch_indices(
        config, len(train_x), step)])
  assert int(state.step) == int(final.step) == 6
  assert _leaves_equal(jax.device_get(state.params), final.params)
  assert not _leaves_equal(mid.params, final.params)  # it trained
  loaded = autoencoder.load(ae_workdir)
  assert loaded.step == 6 and _leaves_equal(loaded.params, final.params)
  # Codes are Bernoulli means of the configured capsule shape; decoded
  # images are grey levels.
  codes = np.asarray(loaded.encode(jnp.asarray(grey)))
  assert codes.shape == (40, 8, 2) and 0 < codes.min() and codes.max() < 1
  images = np.asarray(loaded.decode(jnp.asarray(codes)))
  assert images.shape == (40, 28, 28)
  assert 0 <= images.min() and images.max() <= 1
  # Re-running the finished command is a no-op resume.
  ae_training.train_and_evaluate(tiny_ae_config(data_dir), ae_workdir)
  assert _leaves_equal(autoencoder.load(ae_workdir).params, final.params)
  with pytest.raises(autoencoder.AutoencoderError, match="code_dim"):
    ae_training.train_and_evaluate(tiny_ae_config(data_dir, code_dim=3),
                                   ae_workdir)


def _fake_classifier():
  # Features: 4x4 average pools of the image (a fixed linear map): enough to
  # exercise the Fréchet path without training a CNN.
  def features(images):
    x = np.asarray(images, np.float32).reshape(-1, 7, 4, 7, 4)
    return x.mean(axis=(2, 4)).reshape(len(x), -1)
  return classifier_lib.Loaded(None, {"config": {"dataset": "mnist_small",
                                                 "num_features": 49}},
                               features)


def _settings():
  return suite.Settings(ais="quick", num_betas=20, num_runs=4,
                             probe_train_examples=100, num_clusters=3,
                             batch_size=50, frechet_samples=20,
                             frechet_steps=2)


@pytest.mark.slow
def test_autoencoder_poe_trains_samples_and_evaluates(ae_workdir, data_dir,
                                                      tmp_path, grey):
  config = tiny_config(data_dir, front_end="autoencoder",
                       autoencoder_workdir=ae_workdir, num_iterations=3)
  workdir = str(tmp_path / "poe")
  state = loop.train_and_evaluate(config, workdir)
  assert state.params["W"].shape == (8, 4, 4, 2)
  ae = autoencoder.load(ae_workdir)
  # The runner's visible capsules are the codes, binarized like pixels.
  key = jax.random.key(0)
  np.testing.assert_array_equal(
      visible.to_capsules(front_ends.get(config), config.binarize, grey,
                          key),
      jax.random.bernoulli(key, ae.encode(jnp.asarray(grey))).astype(
          jnp.float32))
  png = Image.open(os.path.join(workdir, "samples", "step_0000006.png"))
  # 10 decoded samples, then 2 x (test, decoded codes, reconstruction).
  assert png.size[1] > 6 * 28 * 2
  config, state = front_ends.load_run(workdir)
  d = data_io.load_data(config)
  results = suite.evaluate(config, front_ends.get(config), 6, state.params, d,
                           _settings(),
                                classifier=_fake_classifier())
  assert not results["log_likelihood"]["computed"]
  assert "pixel space" in report.to_markdown(results)
  assert 0 <= results["linear_probe_accuracy"] <= 1
  fd = results["frechet"]
  assert fd["distance"] > 0 and fd["floor_front_end"] >= 0


# ---------------------------------------------------------------------------
# Stacked layers.


@pytest.mark.slow
def test_stacked_layers_train_resume_sample_and_decode_through_three(data_dir,
                                                               tmp_path,
                                                               grey):
  layer1 = str(tmp_path / "layer1")
  l1_state = loop.train_and_evaluate(tiny_config(data_dir), layer1)
  config2 = tiny_config(data_dir, front_end="layer", lower_workdir=layer1,
                        num_iterations=3, num_hidden_capsules=2)
  # Layer 2 resumed halfway equals layer 2 trained in one go.
  whole, halves = str(tmp_path / "layer2"), str(tmp_path / "layer2_halves")
  l2_state = loop.train_and_evaluate(config2, whole)
  loop.train_and_evaluate(tiny_config(**{**config2, "num_steps": 3}),
                               halves)
  resumed = loop.train_and_evaluate(config2, halves)
  assert _leaves_equal(resumed.params, l2_state.params)
  assert l2_state.params["W"].shape == (4, 2, 4, 4)

  # Layer 2's visible means are layer 1's hidden probabilities with c(v).
  fe2 = front_ends.get(config2)
  v1 = data_lib.images_to_capsules(jnp.asarray(grey), 7)
  c1 = capsjax.route_visible(l1_state.params, v1, capsjax.Routing(1))
  np.testing.assert_allclose(fe2.means(grey),
                             capsjax.hidden_probs(l1_state.params, v1, c1),
                             rtol=1e-6)
  # Its decode is layer 1's top-down mean (r = 1: uniform c, exact).
  h = fe2.means(grey)
  np.testing.assert_allclose(
      fe2.decode(h),
      data_lib.capsules_to_images(capsjax.visible_probs(
          l1_state.params, h, jnp.full((40, 16, 4), 0.25)), 7), rtol=1e-6)

  assert os.path.exists(os.path.join(whole, "samples", "step_0000006.png"))
  assert not fe2.pixel_space  # so evaluate reports no pixel likelihood

  # A third layer's front end: layer 2's hidden units, decoded top-down
  # through layers 2 (routed: mean-field c) and 1 to pixels. Training on a
  # "layer" front end is what layer 2 did, so layer 3 is not trained here.
  config3 = tiny_config(data_dir, front_end="layer", lower_workdir=whole,
                        num_iterations=3, num_hidden_capsules=2,
                        hidden_dim=3)
  fe3 = front_ends.get(config3)
  assert fe3.shape == (2, 4) and state_lib.shapes(config3, fe3) == (2, 4, 2, 3)
  h3 = fe3.means(grey)
  assert 0 < float(h3.min()) and float(h3.max()) < 1
  m2 = capsjax.topdown_means(l2_state.params, h3, capsjax.Routing(3), 3)
  np.testing.assert_allclose(fe3.decode(h3), fe2.decode(m2), rtol=1e-5,
                             atol=1e-6)
  images = np.asarray(fe3.decode(h3))
  assert images.shape == (40, 28, 28)
  assert 0 <= images.min() and images.max() <= 1
  # Zero mean-field rounds is the uniform-c pass; the rounds move the
  # routed layer's top-down mean (c depends on v).
  uniform = capsjax.visible_probs(l2_state.params, h3,
                                  jnp.full((40, 4, 2), 0.5))
  np.testing.assert_allclose(
      capsjax.topdown_means(l2_state.params, h3, capsjax.Routing(3), 0),
      uniform,
      rtol=1e-6)
  assert float(jnp.max(jnp.abs(m2 - uniform))) > 0

@pytest.mark.parametrize("name", ["default", "mnist", "fashion_mnist"])
def test_autoencoder_configs_are_valid_and_documented(name):
  import importlib  # pylint: disable=import-outside-toplevel
  module = importlib.import_module(f"experiments.configs.autoencoders.{name}")
  assert "python -m experiments.train_autoencoder" in module.__doc__
  assert "Expected" in module.__doc__
  config = module.get_config()
  autoencoder.validate_config(config)
  assert (config.num_capsules, config.code_dim) == (144, 8)
