"""A small MNIST classifier; its penultimate features define a Fréchet distance.

`python -m experiments.train_classifier` trains it and writes a classifier
workdir:

  WORKDIR/classifier.json  its config, test accuracies, wall time, versions
  WORKDIR/checkpoint/      the parameters (Orbax)

`load(workdir)` gives back a `Loaded` whose `features` maps images (N, 28, 28)
to the `num_features` penultimate activations that
`experiments.runner.evaluation.frechet` compares.

The network is two 5x5 convolutions with stride 2 (ReLU; strides instead of
pooling: XLA's CPU convolutions dominate the cost, and a step is 7x
cheaper than with 3x3 convolutions and max pooling) and a dense
layer of `num_features` ReLU units before the 10 logits. No batch norm and
no dropout: its only state is its parameters, and it is a pure function of
them (deterministic from the seed, the same features in any batch).

It trains on a mix of grey and stochastically binarized images (each
example binarized with probability `binarize_fraction`, redrawn every step):
the Fréchet distance feeds it binary images (model samples and binarized
test digits), while the sample grids show grey Bernoulli means, and both
kinds must land where the digit's features are.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Callable, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from capsjax import data as data_lib
from experiments.runner import data as data_io
from experiments.runner import harness
from experiments.runner.errors import ConfigError
from experiments.runner.models import common

IMAGE_SIZE = 28
NUM_CLASSES = 10
SETTINGS_FILE = "classifier.json"
CHECKPOINT_DIR = "checkpoint"


def get_config() -> ml_collections.ConfigDict:
  """The default classifier: about a minute on 2 CPU cores, ~99% on MNIST."""
  config = ml_collections.ConfigDict()
  config.dataset = "mnist_small"  # or "mnist" with data_manual_dir
  config.data_dir = ""            # TFDS data dir; "" = ~/tensorflow_datasets
  config.data_manual_dir = ""     # folder with the raw IDX files
  config.conv_features = (16, 32)
  config.num_features = 128       # the Fréchet features
  config.binarize_fraction = 0.5  # share of each batch binarized
  config.learning_rate = 2e-3     # Adam, cosine-decayed to 0
  config.batch_size = 128
  config.num_steps = 1_500        # 3.2 epochs of MNIST
  config.seed = 0
  return config


class ClassifierError(ConfigError):
  """A classifier workdir that cannot be read, or a bad config."""


def validate_config(config) -> None:
  common.validate_network(config, ClassifierError,
                          int_fields=("num_features", "batch_size",
                                      "num_steps"),
                          fraction_field="binarize_fraction")


# ---------------------------------------------------------------------------
# The network.


class Classifier(nnx.Module):
  """conv5x5/2-relu, conv5x5/2-relu, dense-relu (the features), logits."""

  def __init__(self, conv_features=(16, 32), num_features: int = 128, *,
               rngs: nnx.Rngs):
    c1, c2 = conv_features
    self.conv1 = nnx.Conv(1, c1, (5, 5), strides=(2, 2), rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (5, 5), strides=(2, 2), rngs=rngs)
    flat = (IMAGE_SIZE // 4) ** 2 * c2
    self.dense = nnx.Linear(flat, num_features, rngs=rngs)
    self.head = nnx.Linear(num_features, NUM_CLASSES, rngs=rngs)

  def features(self, images: jax.Array) -> jax.Array:
    """(N, 28, 28) images in [0, 1] -> (N, num_features) activations."""
    x = images[..., None]
    for conv in (self.conv1, self.conv2):
      x = jax.nn.relu(conv(x))  # 28 -> 14 -> 7
    return jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.head(self.features(images))


def make_model(config, seed: int = 0) -> Classifier:
  return Classifier(tuple(config.conv_features), config.num_features,
                    rngs=nnx.Rngs(params=seed))


# ---------------------------------------------------------------------------
# Training.


def mix_binarized(key, images: jax.Array, fraction: float) -> jax.Array:
  """Each image stochastically binarized with probability `fraction`."""
  pick_key, bin_key = jax.random.split(key)
  pick = jax.random.bernoulli(pick_key, fraction, images.shape[:1])
  binary = data_lib.binarize(bin_key, images, "stochastic")
  return jnp.where(pick[:, None, None], binary, images)


def make_train_step(config, graphdef, optimizer):
  """The jitted `(params, opt_state, step, images, labels) -> (...)`."""
  base_key = jax.random.key(config.seed)

  def loss_fn(params, images, labels):
    logits = nnx.merge(graphdef, params)(images)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  @jax.jit
  def train_step(params, opt_state, step, images, labels):
    # The step's binarization from (seed, step): reproducible.
    images = mix_binarized(jax.random.fold_in(base_key, step), images,
                           config.binarize_fraction)
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


@jax.jit
def _logits(graphdef, params, images):
  return nnx.merge(graphdef, params)(images)


@jax.jit
def _features(graphdef, params, images):
  return nnx.merge(graphdef, params).features(images)


def accuracy(graphdef, params, images, labels, batch_size: int = 1_000
             ) -> float:
  logits = data_io.batched(functools.partial(_logits, graphdef, params),
                    np.asarray(images, np.float32), batch_size)
  return float(np.mean(np.argmax(logits, -1) == labels))


def train(config, train_images, train_labels, log_every: int = 0
          ) -> tuple[Classifier, float]:
  """Trains on (N, 28, 28) grey images; returns (model, final loss)."""
  validate_config(config)
  if len(train_images) < config.batch_size:
    raise ClassifierError(f"config.batch_size = {config.batch_size} exceeds "
                          f"the {len(train_images)} training images")
  model = make_model(config, config.seed)
  graphdef, params = nnx.split(model)
  optimizer = common.make_optimizer(config)
  opt_state = optimizer.init(params)
  step_fn = make_train_step(config, graphdef, optimizer)
  loss = jnp.nan
  for step in range(config.num_steps):
    # The CD runner's data order: a permutation per epoch, from the seed.
    idx = data_io.batch_indices(config, len(train_images), step)
    params, opt_state, loss = step_fn(params, opt_state, step,
                                      train_images[idx], train_labels[idx])
    if log_every and (step + 1) % log_every == 0:
      print(f"step {step + 1}/{config.num_steps}: loss {float(loss):.4f}",
            flush=True)
  nnx.update(model, params)
  return model, float(loss)


# ---------------------------------------------------------------------------
# Saving and loading.


def save(workdir: str, model: Classifier, config, results: dict) -> None:
  """Writes the parameters (Orbax) and classifier.json into `workdir`."""
  os.makedirs(workdir, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  # Plain nested dicts of arrays: restorable without flax's State classes.
  checkpointer.save(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                    nnx.to_pure_dict(nnx.state(model, nnx.Param)), force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  with open(os.path.join(workdir, SETTINGS_FILE), "w") as f:
    json.dump({"config": config.to_dict(), **results}, f, indent=2)
    f.write("\n")


class Loaded(NamedTuple):
  model: Classifier
  info: dict        # classifier.json: config, accuracies, wall time
  features: Callable[[np.ndarray], np.ndarray]  # (N, 28, 28) -> (N, F)


def load(workdir: str, batch_size: int = 1_000) -> Loaded:
  """The classifier of a workdir written by `save`."""
  path = os.path.join(workdir, SETTINGS_FILE)
  try:
    with open(path) as f:
      info = json.load(f)
  except FileNotFoundError:
    raise ClassifierError(
        f"{workdir} holds no {SETTINGS_FILE}: train a classifier with "
        "`python -m experiments.train_classifier --workdir=...`") from None
  info["workdir"] = os.path.abspath(workdir)
  config = ml_collections.ConfigDict(info["config"])
  abstract = nnx.eval_shape(lambda: make_model(config))
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  target = nnx.to_pure_dict(abstract_params)
  checkpointer = ocp.StandardCheckpointer()
  try:
    restored = checkpointer.restore(
        os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR), target)
  except FileNotFoundError:
    raise ClassifierError(f"no classifier checkpoint in {workdir}") from None
  except ValueError as e:  # shapes of another architecture
    raise ClassifierError(f"the checkpoint in {workdir} does not fit this "
                          f"classifier ({str(e).splitlines()[0][:200]}): "
                          "retrain it") from None
  finally:
    checkpointer.close()
  nnx.replace_by_pure_dict(abstract_params, restored)
  model = nnx.merge(graphdef, abstract_params)
  graphdef, params = nnx.split(model)
  features = functools.partial(_features, graphdef, params)
  return Loaded(model, info, lambda images: data_io.batched(
      features, np.asarray(images, np.float32), batch_size))


# ---------------------------------------------------------------------------
# The whole command.


def train_and_evaluate(config, workdir: str, log_every: int = 0) -> dict:
  """Trains, measures test accuracy (grey and binarized) and saves, as the
  workdir's one writer."""
  validate_config(config)
  with harness.sole_writer(workdir):
    return _train_and_save(config, workdir, log_every)


def _train_and_save(config, workdir: str, log_every: int) -> dict:
  train_x, train_y, test_x, test_y = data_io.read_data(config)
  start = time.perf_counter()
  model, loss = train(config, train_x, train_y, log_every=log_every)
  train_time = time.perf_counter() - start
  graphdef, params = nnx.split(model)
  test_binary = np.asarray(data_lib.binarize(
      jax.random.key(config.seed + 1), test_x, "stochastic"))
  results = {
      "test_accuracy": accuracy(graphdef, params, test_x, test_y),
      "test_accuracy_binarized": accuracy(graphdef, params, test_binary,
                                          test_y),
      "final_train_loss": loss,
      "num_train_examples": len(train_x),
      "num_test_examples": len(test_x),
      "train_time_s": round(train_time, 2),
      "jax_backend": jax.default_backend(),
      "jax_version": jax.__version__,
  }
  save(workdir, model, config, results)
  return results
