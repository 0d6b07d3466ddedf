"""`train_and_evaluate(config, workdir)`: CD training of one capsule layer.

Everything random is derived from `config.seed` and the step number (the
data order from the epoch, the binarization and the CD chains from the
step), so a run resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import functools
import contextlib
import json
import os
import signal
import threading
from typing import NamedTuple

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

import capsjax
from capsjax import data as data_lib
from experiments import images
from experiments import metrics as metrics_lib

IMAGE_SIZE = 28
# The only config fields that may change when a workdir is resumed: the
# length of the run and its bookkeeping. Anything else would silently mix
# two trainings (other shapes, another data order, another optimizer).
RESUMABLE_FIELDS = ("num_steps", "log_every_steps", "eval_every_steps",
                    "sample_every_steps", "checkpoint_every_steps",
                    "keep_checkpoints", "num_eval_examples", "num_samples",
                    "sample_steps", "data_dir", "data_manual_dir")


# ---------------------------------------------------------------------------
# Configuration.


class ConfigError(ValueError):
  """A config value, or a workdir, that cannot be used."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects bad values before any work, naming the field and the value."""
  def fail(field, why):
    raise ConfigError(f"config.{field} = {config[field]!r}: {why}")

  if config.dataset not in data_lib.DATASETS:
    fail("dataset", f"unknown dataset; known: {', '.join(data_lib.DATASETS)}")
  if config.binarize not in data_lib.BINARIZE_MODES:
    fail("binarize", f"must be one of {data_lib.BINARIZE_MODES}")
  if config.optimizer not in ("sgd", "adam"):
    fail("optimizer", "must be 'sgd' or 'adam'")
  for field in ("patch_size", "num_hidden_capsules", "hidden_dim",
                "num_iterations", "k", "batch_size", "num_steps",
                "checkpoint_every_steps", "log_every_steps",
                "eval_every_steps", "sample_every_steps",
                "num_eval_examples", "num_samples", "sample_steps",
                "keep_checkpoints"):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      fail(field, "must be an integer >= 1")
  if IMAGE_SIZE % config.patch_size:
    fail("patch_size", f"capsule patches must tile the {IMAGE_SIZE}x"
         f"{IMAGE_SIZE} image: use a divisor of {IMAGE_SIZE} "
         f"({[d for d in range(1, IMAGE_SIZE + 1) if IMAGE_SIZE % d == 0]})")
  for field in ("learning_rate", "init_scale"):
    if not config[field] > 0:
      fail(field, "must be > 0")
  for field in ("weight_decay", "momentum_initial", "momentum_final",
                "momentum_switch_step"):
    if not config[field] >= 0:
      fail(field, "must be >= 0")
  if config.weight_scale not in ("none", "num_hidden_capsules"):
    fail("weight_scale", "must be 'none' or 'num_hidden_capsules'")
  if config.mh and config.mean_field_negative:
    fail("mean_field_negative", "cannot be combined with config.mh")
  if config.visible != "bernoulli":
    fail("visible", "the runner trains on binarized images: use 'bernoulli'")


def shapes(config):
  """(Nv, Dv, Nh, Dh) of the layer."""
  nv = (IMAGE_SIZE // config.patch_size) ** 2
  return (nv, config.patch_size ** 2, config.num_hidden_capsules,
          config.hidden_dim)


def weight_scale(config) -> float:
  return (1.0 if config.weight_scale == "none"
          else float(config.num_hidden_capsules))


def make_optimizer(config) -> optax.GradientTransformation:
  if config.optimizer == "sgd":
    momentum = capsjax.momentum_schedule(config.momentum_initial,
                                         config.momentum_final,
                                         config.momentum_switch_step)
    return capsjax.sgd(config.learning_rate, momentum=momentum,
                       weight_decay=config.weight_decay)
  return capsjax.adam(config.learning_rate, weight_decay=config.weight_decay)


def cd_options(config) -> dict:
  return dict(k=config.k, num_iterations=config.num_iterations,
              reroute=config.reroute, mh=config.mh,
              through_routing=config.through_routing,
              mean_field_negative=config.mean_field_negative,
              weight_scale=weight_scale(config))


# ---------------------------------------------------------------------------
# Data.


class Data(NamedTuple):
  train: np.ndarray        # (N, 28, 28) grey levels in [0, 1]
  train_labels: np.ndarray
  test: np.ndarray
  test_labels: np.ndarray


def load_data(config) -> Data:
  kwargs = dict(data_dir=config.data_dir or os.path.join(
      os.path.expanduser("~"), "tensorflow_datasets"),
                manual_dir=config.data_manual_dir or None)
  train, train_labels = data_lib.load_split(config.dataset, "train", **kwargs)
  test, test_labels = data_lib.load_split(config.dataset, "test", **kwargs)
  for split, grey in (("train", train), ("test", test)):
    check_images(f"{config.dataset} {split}", grey)
  if len(train) < config.batch_size:
    raise ConfigError(f"config.batch_size = {config.batch_size} exceeds the "
                     f"{len(train)} training images of {config.dataset}")
  return Data(train, train_labels, test, test_labels)


class DataError(ValueError):
  """Data that cannot be trained on (checked before training starts)."""


def check_images(name: str, images: np.ndarray) -> None:
  """Grey images (N, 28, 28), finite, in [0, 1]; the error names the first
  offending example and how many there are."""
  if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise DataError(f"{name}: images must have shape (N, {IMAGE_SIZE}, "
                    f"{IMAGE_SIZE}); got {images.shape}")
  if len(images) == 0:
    raise DataError(f"{name}: the split is empty")
  for problem, bad in (("non-finite values", ~np.isfinite(images)),
                       ("values outside [0, 1]", (images < 0) | (images > 1))):
    per_example = bad.reshape(len(images), -1).any(axis=1)
    if per_example.any():
      raise DataError(f"{name}: {per_example.sum()} images have {problem}; "
                      f"the first is index {int(np.argmax(per_example))}")


def grey_marginals(config, grey) -> np.ndarray:
  """Mean grey level per visible neuron, (Nv, Dv): the data's marginals."""
  return data_lib.images_to_capsules(grey.mean(0), config.patch_size)


def to_capsules(config, grey, key):
  """Binarizes grey images and cuts them into capsules (..., Nv, Dv)."""
  binary = data_lib.binarize(key, grey, config.binarize)
  return data_lib.images_to_capsules(binary, config.patch_size)


def batch_indices(config, num_examples: int, step: int) -> np.ndarray:
  """The examples of `step`: a fresh permutation each epoch, from the seed."""
  steps_per_epoch = num_examples // config.batch_size
  epoch, position = divmod(step, steps_per_epoch)
  perm = _permutation(config.seed, epoch, num_examples)
  return perm[position * config.batch_size:(position + 1) * config.batch_size]


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  key = jax.random.fold_in(jax.random.key(seed), epoch)
  return np.asarray(jax.random.permutation(key, n))


# ---------------------------------------------------------------------------
# State and checkpoints.


def _keys(config):
  """One independent stream per use, all from `config.seed`."""
  names = ("init", "chains", "train", "binarize", "eval_train", "eval_test",
           "sample", "pll")
  return dict(zip(names, jax.random.split(jax.random.key(config.seed),
                                          len(names))))


def initial_state(config, train_grey, optimizer) -> capsjax.TrainState:
  nv, dv, nh, dh = shapes(config)
  keys = _keys(config)
  scale = weight_scale(config)
  marginals = grey_marginals(config, train_grey)
  # `config.init_scale` is the std of the effective weights W / scale.
  model = capsjax.CapsulePoE(
      nv, dv, nh, dh, rngs=nnx.Rngs(params=keys["init"]),
      num_iterations=config.num_iterations,
      init_scale=config.init_scale * scale, data=marginals[None])
  chains = None
  if config.persistent:
    # PCD chains start at binarized training images.
    chains = to_capsules(config, train_grey[:config.batch_size],
                         keys["chains"])
  return capsjax.init_train_state(model.params(), optimizer,
                                  persistent_chains=chains,
                                  num_iterations=config.num_iterations,
                                  weight_scale=scale)


def abstract_state(config) -> capsjax.TrainState:
  """The state's structure, shapes and dtypes, for restoring."""
  grey = np.zeros((config.batch_size, IMAGE_SIZE, IMAGE_SIZE), np.float32)
  return jax.eval_shape(
      lambda: initial_state(config, grey, make_optimizer(config)))


def checkpoint_manager(config, workdir: str, *, create: bool = True
                       ) -> ocp.CheckpointManager:
  """The workdir's manager; `create=False` for readers (sample, evaluate)."""
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(
          config.keep_checkpoints),
      create=create)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir),
                                            "checkpoints"), options=options)


def make_workdir(workdir: str) -> None:
  """Creates the workdir and checks that it is writable, before any work."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable: "
                      f"{e.strerror or e}") from None


def check_workdir_config(config, workdir: str) -> None:
  """Records the config in a new workdir, or checks it against the record."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diffs = [f"{k}: {saved.get(k)!r} in the workdir, {v!r} now"
             for k, v in config.items()
             if k not in RESUMABLE_FIELDS and saved.get(k) != v]
    if diffs:
      raise ConfigError(
          f"workdir {workdir} was written by an incompatible config ("
          + "; ".join(diffs) + "): use a new --workdir or the same values")
  elif jax.process_index() == 0:
    with open(path, "w") as f:
      f.write(config.to_json(indent=2))


def restore_latest(config, workdir: str, mngr: ocp.CheckpointManager):
  """The latest checkpoint's state, or None when there is none."""
  step = mngr.latest_step()
  if step is None:
    return None
  logging.info("Restoring checkpoint of step %d from %s", step, workdir)
  return mngr.restore(step, args=ocp.args.StandardRestore(
      abstract_state(config)))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict,
                                    capsjax.TrainState]:
  """(config, state) of a workdir's latest checkpoint, for readers.

  Raises ConfigError when the workdir has no config.json or no checkpoint,
  or its config is one the runner would reject.
  """
  try:
    config = load_config(workdir)
  except FileNotFoundError:
    raise ConfigError(f"{workdir} holds no config.json: is it a training "
                      "workdir?") from None
  validate_config(config)
  mngr = checkpoint_manager(config, workdir, create=False)
  try:
    state = restore_latest(config, workdir, mngr)
  finally:
    mngr.close()
  if state is None:
    raise ConfigError(f"no checkpoint in {workdir}")
  return config, state


# ---------------------------------------------------------------------------
# Steps, evaluation and samples.


def make_update(config, optimizer):
  """The jitted update: binarize the grey batch, then one CD step."""
  keys = _keys(config)
  step_fn = functools.partial(capsjax.train_step, optimizer=optimizer,
                              **cd_options(config))

  # No buffer donation: an asynchronous checkpoint may still read the state.
  @jax.jit
  def update(state, grey_batch):
    v = to_capsules(config, grey_batch,
                    jax.random.fold_in(keys["binarize"], state.step))
    new_state, info = step_fn(state, keys["train"], v)
    finite = {name: jnp.all(jnp.isfinite(x))
              for name, x in new_state.params.items()}
    finite["free_energy_gap"] = jnp.isfinite(info.free_energy_gap)
    return new_state, info, finite

  return update


class DivergenceError(RuntimeError):
  """Training produced a non-finite parameter or statistic."""


def check_finite(finite: dict, step: int) -> None:
  """Raises when an update produced NaN or inf (one small host transfer)."""
  bad = [name for name, ok in jax.device_get(finite).items() if not ok]
  if bad:
    raise DivergenceError(
        f"training diverged at update {step}: non-finite {', '.join(bad)}; "
        "the last checkpoint before it is kept. Lower config.learning_rate "
        "(or see BUILD_NOTES.md on routed training)")


def make_evaluate(config):
  """Cheap monitors on fixed binarized train and test subsets."""
  r = config.num_iterations
  nv, dv, _, _ = shapes(config)

  @jax.jit
  def evaluate(params, train_v, test_v, key):
    def routed_f(v):
      return capsjax.routed_free_energy(params, v, r)
    c = capsjax.route_visible(params, test_v, r)
    recon = capsjax.reconstruct(params, test_v, c)
    f_test = routed_f(test_v)
    # Pseudo-log-likelihood, estimated with one random neuron per example:
    # D * log p(v_d | v_-d) = D * log sigmoid(F(v with d flipped) - F(v)).
    flip = jax.nn.one_hot(jax.random.randint(key, test_v.shape[:1], 0, nv * dv),
                          nv * dv).reshape(test_v.shape)
    flipped = test_v + flip * (1.0 - 2.0 * test_v)
    pll = nv * dv * jax.nn.log_sigmoid(routed_f(flipped) - f_test)
    return {
        "test_reconstruction_error": jnp.mean(jnp.square(test_v - recon)),
        "free_energy_gap_test_minus_train": (
            jnp.mean(f_test) - jnp.mean(routed_f(train_v))),
        "test_pseudo_log_likelihood": jnp.mean(pll),
        "test_routing_entropy": jnp.mean(capsjax.routing_entropy(c)),
    }

  return evaluate


def make_sampler(config, mh: bool = False):
  """Jitted `(params, key, marginals) -> (sample means, acceptance rate)`.

  `config.num_samples` chains start from the data marginals and run
  `config.sample_steps` Gibbs steps with routing (MH-corrected if `mh`).
  """
  r = config.num_iterations

  @jax.jit
  def sample(params, key, marginals):
    init_key, run_key = jax.random.split(key)
    v0 = jax.random.bernoulli(init_key, marginals,
                              (config.num_samples,) + marginals.shape)
    state = capsjax.init_chain(params, v0.astype(params["W"].dtype), r)
    _, info = capsjax.run_chain(run_key, state, params, config.sample_steps,
                                num_iterations=r, mh=mh)
    return info.last.visible_mean, jnp.mean(info.acceptance_rate)

  return sample


def sample_figure(config, sampler, params, key, test_grey, marginals):
  """A PNG-ready grid: model samples, then test images and reconstructions."""
  nrow = 10
  chain_key, binarize_key = jax.random.split(key)
  samples, acceptance = sampler(params, chain_key, marginals)
  test_v = to_capsules(config, test_grey[:nrow * 2], binarize_key)
  c = capsjax.route_visible(params, test_v, config.num_iterations)
  recon = capsjax.reconstruct(params, test_v, c)
  to_img = functools.partial(data_lib.capsules_to_images,
                             patch=config.patch_size)
  pairs = np.concatenate([to_img(test_v)[:nrow], to_img(recon)[:nrow],
                          to_img(test_v)[nrow:], to_img(recon)[nrow:]])
  blocks = (images.grid(to_img(samples), nrow), images.grid(pairs, nrow))
  return blocks, float(acceptance)


# ---------------------------------------------------------------------------
# The loop.


@contextlib.contextmanager
def _sigterm_flag():
  """Yields an event that SIGTERM (preemption) sets; checked once per update.

  The previous handler is restored on exit. Signals reach the main thread
  only, so elsewhere the event is never set.
  """
  flag = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: flag.set())
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> capsjax.TrainState:
  """Trains (or resumes) the run in `workdir`; returns the final state."""
  validate_config(config)
  make_workdir(workdir)
  check_workdir_config(config, workdir)
  data = load_data(config)
  optimizer = make_optimizer(config)
  mngr = checkpoint_manager(config, workdir)
  state = restore_latest(config, workdir, mngr)
  if state is None:
    state = initial_state(config, data.train, optimizer)
  start = int(state.step)

  is_main = jax.process_index() == 0
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  update = make_update(config, optimizer)
  evaluate = make_evaluate(config)
  sampler = make_sampler(config)
  keys = _keys(config)
  n_eval = min(config.num_eval_examples, len(data.test), len(data.train))
  train_eval_v = to_capsules(config, data.train[:n_eval], keys["eval_train"])
  test_eval_v = to_capsules(config, data.test[:n_eval], keys["eval_test"])
  marginals = grey_marginals(config, data.train)
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)

  train_sums, num_logged = None, 0
  progress = tqdm.tqdm(total=config.num_steps, initial=start, unit="step",
                       disable=not is_main, mininterval=2.0, smoothing=0.1,
                       desc="CD training")
  try:
    with _sigterm_flag() as preempted:
      for step in range(start, config.num_steps):
        batch = data.train[batch_indices(config, len(data.train), step)]
        new_state, info, finite = update(state, batch)
        # Checked before anything is written: a non-finite state never reaches
        # a checkpoint, and the error names the update that produced it.
        check_finite(finite, step + 1)
        state = new_state
        progress.update(1)
        scalars = {"reconstruction_error": info.reconstruction_error,
                   "free_energy_gap": info.free_energy_gap,
                   "acceptance_rate": info.acceptance_rate,
                   "routing_entropy": info.routing_entropy}
        train_sums = (scalars if train_sums is None else
                      jax.tree.map(jnp.add, train_sums, scalars))
        num_logged += 1
        done = step + 1
        if done % config.log_every_steps == 0 or done == config.num_steps:
          means = {f"train_{k}": v / num_logged for k, v in train_sums.items()}
          lr = state.opt_state[-1].hyperparams["learning_rate"]
          writer.write_scalars(done, means | {"learning_rate": lr})
          train_sums, num_logged = None, 0
        if done % config.eval_every_steps == 0 or done == config.num_steps:
          pll_key = jax.random.fold_in(keys["pll"], done)
          writer.write_scalars(done, evaluate(state.params, train_eval_v,
                                              test_eval_v, pll_key))
        if is_main and (done % config.sample_every_steps == 0
                        or done == config.num_steps):
          blocks, _ = sample_figure(
              config, sampler, state.params,
              jax.random.fold_in(keys["sample"], done), data.test, marginals)
          images.save_png(
              os.path.join(workdir, "samples", f"step_{done:07d}.png"), *blocks)
        if (done % config.checkpoint_every_steps == 0 or done == config.num_steps
            or preempted.is_set()):
          mngr.save(done, args=ocp.args.StandardSave(state))
        if preempted.is_set():
          logging.warning("SIGTERM: saved the checkpoint of update %d; "
                          "re-run the same command to continue", done)
          break
  finally:
    # Also on an error: the pending (good) checkpoint is completed.
    progress.close()
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  return state
