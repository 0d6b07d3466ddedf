r"""The paper's front end: a convolutional autoencoder with a capsule code.

Hauser (2019) trains an autoencoder first and routes the 144 capsules of its
code; so does this pipeline (MODEL.md section 8). The code is
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

`load(workdir)` gives back encode/decode functions, which
`experiments/front_ends.py` hands to the capsule runner.

The network: two 5x5 stride-2 convolutions (ReLU; 28 -> 14 -> 7) and a dense
layer to the code logits; the decoder mirrors it with a dense layer and two
5x5 stride-2 transposed convolutions. Loss: binary cross-entropy of the
decoded logits against the grey images (soft targets), summed over pixels.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Callable, NamedTuple

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from experiments import classifier
from experiments import images
from experiments import metrics as metrics_lib
from experiments import train_lib

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


class AutoencoderError(ValueError):
  """A bad config or an autoencoder workdir that cannot be read."""


def validate_config(config) -> None:
  def fail(field, why):
    raise AutoencoderError(f"config.{field} = {config[field]!r}: {why}")

  classifier.validate_config(ml_collections.ConfigDict(dict(
      dataset=config.dataset, num_features=1, batch_size=config.batch_size,
      num_steps=config.num_steps, conv_features=config.conv_features,
      binarize_fraction=config.binary_code_fraction,
      learning_rate=config.learning_rate)))
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
  return TrainState(params, classifier.make_optimizer(config).init(params),
                    jnp.zeros((), jnp.int32))


def _graphdef(config):
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_model(config)),
                          nnx.Param)
  return graphdef


def _merge(graphdef, params) -> Autoencoder:
  return nnx.merge(graphdef, params)  # params: the pure dict of the Params


def make_train_step(config):
  """The jitted `(state, images) -> (state, mean loss)`."""
  graphdef = _graphdef(config)
  optimizer = classifier.make_optimizer(config)
  base_key = jax.random.key(config.seed)

  def loss_fn(params, images, key):
    model = _merge(graphdef, params)
    codes = stochastic_codes(key, model.encode(images),
                             config.binary_code_fraction)
    return reconstruction_loss(model.decode_logits(codes), images).mean()

  @jax.jit
  def train_step(state: TrainState, images):
    # The step's code samples from (seed, step): a resumed run continues
    # exactly.
    key = jax.random.fold_in(base_key, state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, images, key)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state,
                      state.step + 1), loss

  return train_step


# ---------------------------------------------------------------------------
# Workdir: config record, checkpoints.


def _check_workdir_config(config, workdir: str) -> None:
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    now = json.loads(config.to_json())
    diffs = [f"{k}: {saved.get(k)!r} in the workdir, {v!r} now"
             for k, v in now.items()
             if k not in RESUMABLE_FIELDS and saved.get(k) != v]
    if diffs:
      raise AutoencoderError(f"workdir {workdir} was written by an "
                             "incompatible config (" + "; ".join(diffs) +
                             "): use a new --workdir or the same values")
  else:
    with open(path + ".tmp", "w") as f:
      f.write(config.to_json(indent=2))
    os.replace(path + ".tmp", path)


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


def _restore(config, mngr, step=None) -> TrainState | None:
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  abstract = jax.eval_shape(lambda: initial_state(config))
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


# ---------------------------------------------------------------------------
# Training and evaluation.


def _test_losses(model: Autoencoder, test_x, key, batch_size=1_000) -> dict:
  """Test BCE (nats per image) decoding the code means and binary codes."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def losses(x, k):
    m = nnx.merge(graphdef, params)
    means = m.encode(x)
    binary = jax.random.bernoulli(k, means).astype(means.dtype)
    return jnp.stack([reconstruction_loss(m.decode_logits(means), x),
                      reconstruction_loss(m.decode_logits(binary), x)], -1)

  out = np.concatenate([
      np.asarray(losses(test_x[s:s + batch_size], jax.random.fold_in(key, i)))
      for i, s in enumerate(range(0, len(test_x), batch_size))])
  return {"test_bce_code_means": float(out[:, 0].mean()),
          "test_bce_binary_codes": float(out[:, 1].mean())}


def reconstruction_figure(model: Autoencoder, test_x, key, n=10):
  """Rows: test digits, decoded code means, decoded binary codes."""
  graphdef, params = nnx.split(model)
  x = jnp.asarray(test_x[:n])
  means = _encode(graphdef, params, x)  # jitted: one compilation, not per op
  binary = jax.random.bernoulli(key, means).astype(means.dtype)
  rows = np.concatenate([np.asarray(x),
                         np.asarray(_decode(graphdef, params, means)),
                         np.asarray(_decode(graphdef, params, binary))])
  return images.grid(rows, n)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or resumes) the autoencoder in `workdir`; returns test results."""
  validate_config(config)
  train_lib.make_workdir(workdir)
  _check_workdir_config(config, workdir)
  train_x, _, test_x, _ = classifier.load_data(config)
  if len(train_x) < config.batch_size:
    raise AutoencoderError(f"config.batch_size = {config.batch_size} exceeds "
                           f"the {len(train_x)} training images")
  mngr = train_lib.checkpoint_manager(config, workdir)
  writer = metrics_lib.MetricWriter(workdir)
  state = _restore(config, mngr)
  if state is None:
    state = initial_state(config)
  train_step = make_train_step(config)
  start, t0, losses = int(state.step), time.perf_counter(), []
  try:
    with train_lib._sigterm_flag() as preempted:  # pylint: disable=protected-access
      for step in range(start, config.num_steps):
        # The CD runner's data order: a permutation per epoch from the seed.
        idx = train_lib.batch_indices(config, len(train_x), step)
        state, loss = train_step(state, train_x[idx])
        losses.append(loss)
        done = step + 1
        if done % config.log_every_steps == 0 or done == config.num_steps:
          writer.write_scalars(done, {"train_bce": np.mean(
              jax.device_get(losses))})
          losses = []
        stop = preempted.is_set()
        if (done % config.checkpoint_every_steps == 0
            or done == config.num_steps or stop):
          train_lib.save_checkpoint(mngr, done, state)
        if stop:
          logging.warning("SIGTERM: saved step %d; re-run to continue", done)
          break
  finally:
    train_lib.finish_checkpoints(mngr)
    mngr.close()
    writer.close()
  model = _merge(_graphdef(config), state.params)
  key = jax.random.key(config.seed + 1)
  results = {"step": int(state.step),
             **_test_losses(model, test_x, key),
             "train_time_s_this_call": round(time.perf_counter() - t0, 2),
             "jax_backend": jax.default_backend(),
             "jax_version": jax.__version__}
  with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
  images.save_png(os.path.join(workdir, "reconstructions.png"),
                  reconstruction_figure(model, test_x, key))
  return results


# ---------------------------------------------------------------------------
# Loading, for the front end.


class Loaded(NamedTuple):
  config: ml_collections.ConfigDict
  step: int
  params: dict
  encode: Callable  # (N, 28, 28) -> (N, num_capsules, code_dim), jax-traceable
  decode: Callable  # (N, num_capsules, code_dim) -> (N, 28, 28)


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, params, images):
  return _merge(graphdef, params).encode(images)


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef, params, codes):
  return _merge(graphdef, params).decode(codes)


def load(workdir: str) -> Loaded:
  """The latest checkpoint of an autoencoder workdir."""
  config = load_config(workdir)
  mngr = train_lib.checkpoint_manager(config, workdir, create=False)
  try:
    state = _restore(config, mngr)
  finally:
    mngr.close()
  if state is None:
    raise AutoencoderError(f"{workdir} holds no autoencoder checkpoint: "
                           "train one with `python -m "
                           f"experiments.train_autoencoder --workdir={workdir}`")
  graphdef = _graphdef(config)
  params = jax.device_get(state.params)
  return Loaded(config, int(state.step), params,
                functools.partial(_encode, graphdef, params),
                functools.partial(_decode, graphdef, params))
