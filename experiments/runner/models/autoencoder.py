r"""The paper's front end: a convolutional autoencoder with a capsule code.

Hauser (2019) trains an autoencoder first and routes the 144 capsules of its
code; so does this pipeline (docs/model.md section 8). The code is
`num_capsules` x `code_dim` sigmoid units. They become the PoE's Bernoulli
visible units, so the code must mean something as Bernoulli *means*: during
training the decoder sees, for a fraction `binary_code_fraction` of each
batch, a Bernoulli sample of the code instead of the code itself (gradient
by the straight-through estimator, Bengio et al. 2013). The encoder then
cannot hide information in exact grey levels that binarization destroys, and
the decoder learns to decode the binary states that the PoE's Gibbs chains
produce.

  python -m experiments.train_autoencoder --workdir=runs/autoencoder_mnist \
      --config=experiments/configs/autoencoders/mnist.py \
      --config.data_manual_dir=../shared/data/mnist

writes into the workdir

  config.json          the config (a resumed run must match it)
  checkpoints/         Orbax checkpoints (params, Adam state, step); re-running
                       the command resumes from the latest
  metrics.jsonl        training loss
  autoencoder.json     test losses after training
  reconstructions.png  test digits; decoded code means; decoded binary codes

Training: models/autoencoder_training.py. `load(workdir)` gives back
encode/decode functions, which
`experiments/runner/front_ends.py` hands to the capsule runner.

The network: two 5x5 stride-2 convolutions (ReLU; 28 -> 14 -> 7) and a dense
layer to the code logits; the decoder mirrors it with a dense layer and two
5x5 stride-2 transposed convolutions. Loss: binary cross-entropy of the
decoded logits against the grey images (soft targets), summed over pixels.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Callable, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp

from experiments.runner import harness
from experiments.runner.errors import ConfigError
from experiments.runner.models import common

IMAGE_SIZE = 28
RESULTS_FILE = "autoencoder.json"
# Fields that may differ when a workdir resumes: run length and bookkeeping.
RESUMABLE_FIELDS = ("num_steps", "log_every_steps", "checkpoint_every_steps",
                    "keep_checkpoints", "data_dir", "data_manual_dir")


def get_config() -> ml_collections.ConfigDict:
  """The default: embedded subset, 144 capsules of 8, a short run."""
  config = ml_collections.ConfigDict()
  config.dataset = "mnist_small"
  config.data_dir = ""         # TFDS data dir; "" = ~/tensorflow_datasets
  config.data_manual_dir = ""  # folder with raw IDX files (mnist offline)
  config.num_capsules = 144
  config.code_dim = 8
  config.conv_features = (16, 32)
  config.binary_code_fraction = 0.5  # share of each batch decoded from samples
  config.learning_rate = 2e-3        # Adam, cosine-decayed to 0
  config.batch_size = 128
  config.num_steps = 1_000
  config.seed = 0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  return config


class AutoencoderError(ConfigError):
  """A bad config or an autoencoder workdir that cannot be read."""


def validate_config(config) -> None:
  def fail(field, why):
    raise AutoencoderError(f"config.{field} = {config[field]!r}: {why}")

  common.validate_network(config, AutoencoderError,
                          fraction_field="binary_code_fraction")
  for field in ("num_capsules", "code_dim", "log_every_steps",
                "checkpoint_every_steps", "keep_checkpoints"):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      fail(field, "must be an integer >= 1")


# ---------------------------------------------------------------------------
# The network.


class Autoencoder(nnx.Module):
  """Images (N, 28, 28) in [0, 1] <-> codes (N, num_capsules, code_dim)."""

  def __init__(self, num_capsules: int = 144, code_dim: int = 8,
               conv_features=(16, 32), *, rngs: nnx.Rngs):
    c1, c2 = conv_features
    self.code_shape = (num_capsules, code_dim)
    self.conv_features = (c1, c2)
    flat = (IMAGE_SIZE // 4) ** 2 * c2
    self.conv1 = nnx.Conv(1, c1, (5, 5), strides=(2, 2), rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (5, 5), strides=(2, 2), rngs=rngs)
    self.to_code = nnx.Linear(flat, num_capsules * code_dim, rngs=rngs)
    self.from_code = nnx.Linear(num_capsules * code_dim, flat, rngs=rngs)
    self.deconv1 = nnx.ConvTranspose(c2, c1, (5, 5), strides=(2, 2),
                                     rngs=rngs)
    self.deconv2 = nnx.ConvTranspose(c1, 1, (5, 5), strides=(2, 2),
                                     rngs=rngs)

  def code_logits(self, images: jax.Array) -> jax.Array:
    x = images[..., None]
    x = jax.nn.relu(self.conv1(x))  # 28 -> 14
    x = jax.nn.relu(self.conv2(x))  # 14 -> 7
    logits = self.to_code(x.reshape(x.shape[0], -1))
    return logits.reshape(x.shape[0], *self.code_shape)

  def encode(self, images: jax.Array) -> jax.Array:
    """The code as Bernoulli means in (0, 1), (N, num_capsules, code_dim)."""
    return jax.nn.sigmoid(self.code_logits(images))

  def decode_logits(self, codes: jax.Array) -> jax.Array:
    n = codes.shape[0]
    side = IMAGE_SIZE // 4
    x = jax.nn.relu(self.from_code(codes.reshape(n, -1)))
    x = x.reshape(n, side, side, self.conv_features[1])
    x = jax.nn.relu(self.deconv1(x))  # 7 -> 14
    return self.deconv2(x)[..., 0]    # 14 -> 28

  def decode(self, codes: jax.Array) -> jax.Array:
    """Grey images (N, 28, 28) from codes (binary states or means)."""
    return jax.nn.sigmoid(self.decode_logits(codes))


def make_model(config) -> Autoencoder:
  return Autoencoder(config.num_capsules, config.code_dim,
                     tuple(config.conv_features),
                     rngs=nnx.Rngs(params=config.seed))


def stochastic_codes(key, means: jax.Array, fraction: float) -> jax.Array:
  """For a `fraction` of the examples, a Bernoulli sample of `means` with the
  straight-through gradient (the value of the sample, the gradient of the
  mean); the others keep the means."""
  pick_key, sample_key = jax.random.split(key)
  sample = jax.random.bernoulli(sample_key, means).astype(means.dtype)
  straight_through = means + jax.lax.stop_gradient(sample - means)
  pick = jax.random.bernoulli(pick_key, fraction, means.shape[:1])
  return jnp.where(pick[:, None, None], straight_through, means)


def reconstruction_loss(logits, images) -> jax.Array:
  """Binary cross-entropy in nats per image, (N,)."""
  return optax.sigmoid_binary_cross_entropy(logits, images).sum(axis=(-2, -1))


class TrainState(NamedTuple):
  params: dict     # nnx.to_pure_dict of the model's Params
  opt_state: optax.OptState
  step: jax.Array


def initial_state(config) -> TrainState:
  params = nnx.to_pure_dict(nnx.state(make_model(config), nnx.Param))
  return TrainState(params, common.make_optimizer(config).init(params),
                    jnp.zeros((), jnp.int32))


def graphdef_of(config):
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_model(config)),
                          nnx.Param)
  return graphdef


def merge(graphdef, params) -> Autoencoder:
  return nnx.merge(graphdef, params)  # params: the pure dict of the Params


# ---------------------------------------------------------------------------
# Workdir: config record, checkpoints.


def load_config(workdir: str) -> ml_collections.ConfigDict:
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise AutoencoderError(
        f"{workdir} holds no autoencoder (no config.json): train one with "
        f"`python -m experiments.train_autoencoder --workdir={workdir}`"
    ) from None
  config = get_config()
  config.update(saved)
  config.conv_features = tuple(config.conv_features)
  return config


def restore(config, mngr, step=None) -> TrainState | None:
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  abstract = jax.eval_shape(lambda: initial_state(config))
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


# ---------------------------------------------------------------------------
# Loading, for the front end.


class Loaded(NamedTuple):
  config: ml_collections.ConfigDict
  step: int
  params: dict
  encode: Callable  # (N, 28, 28) -> (N, num_capsules, code_dim), jax-traceable
  decode: Callable  # (N, num_capsules, code_dim) -> (N, 28, 28)


@functools.partial(jax.jit, static_argnums=0)
def jitted_encode(graphdef, params, images):
  return merge(graphdef, params).encode(images)


@functools.partial(jax.jit, static_argnums=0)
def jitted_decode(graphdef, params, codes):
  return merge(graphdef, params).decode(codes)


def load(workdir: str) -> Loaded:
  """The latest checkpoint of an autoencoder workdir."""
  config = load_config(workdir)
  mngr = harness.checkpoint_manager(config, workdir, create=False)
  try:
    state = restore(config, mngr)
  finally:
    mngr.close()
  if state is None:
    raise AutoencoderError(
        f"{workdir} holds no autoencoder checkpoint: train one with "
        f"`python -m experiments.train_autoencoder --workdir={workdir}`")
  graphdef = graphdef_of(config)
  params = jax.device_get(state.params)
  return Loaded(config, int(state.step), params,
                functools.partial(jitted_encode, graphdef, params),
                functools.partial(jitted_decode, graphdef, params))
