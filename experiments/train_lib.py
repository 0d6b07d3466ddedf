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
from typing import Callable, NamedTuple

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
from experiments import front_ends
from experiments import images
from experiments.configs import default as default_config
from experiments import metrics as metrics_lib
from experiments import sharding as sharding_lib

IMAGE_SIZE = 28
# The only config fields that may change when a workdir is resumed: the
# length of the run and its bookkeeping. Anything else would silently mix
# two trainings (other shapes, another data order, another optimizer).
RESUMABLE_FIELDS = ("num_steps", "log_every_steps", "eval_every_steps",
                    "sample_every_steps", "checkpoint_every_steps",
                    "keep_checkpoints", "num_eval_examples", "num_samples",
                    "sample_steps", "data_dir", "data_manual_dir",
                    "on_divergence", "rollback_lr_factor", "max_rollbacks",
                    "monitor_ais_betas", "monitor_ais_runs",
                    # The layout over devices: a checkpoint restores on any.
                    "num_devices", "shard_weights")


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
  for field in ("learning_rate", "init_scale", "routing_temperature"):
    if not config[field] > 0:
      fail(field, "must be > 0")
  if not config.grad_clip_norm >= 0:
    fail("grad_clip_norm", "must be >= 0 (0 = no clipping)")
  for field, low in (("warmup_steps", 0), ("monitor_ais_betas", 0),
                     ("monitor_ais_runs", 1)):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      fail(field, f"must be an integer >= {low}")
  if config.monitor_ais_betas == 1:
    fail("monitor_ais_betas", "must be 0 (off) or >= 2 (beta = 0 and 1)")
  for field in ("weight_decay", "momentum_initial", "momentum_final",
                "momentum_switch_step"):
    if not config[field] >= 0:
      fail(field, "must be >= 0")
  if config.weight_scale not in ("none", "num_hidden_capsules"):
    fail("weight_scale", "must be 'none' or 'num_hidden_capsules'")
  if config.mh and config.mean_field_negative:
    fail("mean_field_negative", "cannot be combined with config.mh")
  if config.through_routing and not config.mh and config.num_iterations > 1:
    fail("through_routing", "needs chains that sample the routed model "
         "exactly: set config.mh = True (or num_iterations = 1)")
  if config.visible != "bernoulli":
    fail("visible", "the runner trains on binarized images: use 'bernoulli'")
  for field, low in (("k_ramp_every_steps", 0), ("num_chains", 0),
                     ("tempering_rungs", 0), ("lr_decay_every_steps", 0)):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      fail(field, f"must be an integer >= {low}")
  if config.tempering_rungs == 1:
    fail("tempering_rungs", "must be 0 (off) or >= 2")
  if config.tempering_rungs and not 0 < config.tempering_min_beta < 1:
    fail("tempering_min_beta", "must be in (0, 1)")
  if config.tempering_rungs and not config.persistent:
    fail("tempering_rungs", "tempers persistent chains: set "
         "config.persistent = True")
  if config.tempering_rungs and config.mean_field_negative:
    fail("mean_field_negative", "cannot be combined with tempering")
  if not 0 <= config.centering <= 1:
    fail("centering", "must be in [0, 1] (0 = off; else the offsets' "
         "sliding-average rate)")
  if config.centering and config.num_iterations > 1:
    fail("centering", "centers an unrouted layer: set num_iterations = 1 "
         "or centering = 0")
  if not 0 <= config.ema_decay < 1:
    fail("ema_decay", "must be in [0, 1) (0 = no average)")
  if config.lr_schedule not in LR_SCHEDULES:
    fail("lr_schedule", f"must be one of {LR_SCHEDULES}")
  if (config.lr_schedule in ("linear", "cosine")
      and not 0 <= config.final_learning_rate <= config.learning_rate):
    fail("final_learning_rate", "must be in [0, config.learning_rate]")
  if config.lr_schedule == "step" and not config.lr_decay_every_steps:
    fail("lr_decay_every_steps", "must be >= 1 with lr_schedule = 'step'")
  if config.lr_schedule == "step" and not 0 < config.lr_decay_factor <= 1:
    fail("lr_decay_factor", "must be in (0, 1]")
  if (isinstance(config.num_devices, bool)
      or not isinstance(config.num_devices, int) or config.num_devices < 0):
    fail("num_devices", "must be an integer >= 0 (0 = all devices)")
  if not isinstance(config.shard_weights, bool):
    fail("shard_weights", "must be True or False")
  if config.on_divergence not in ("stop", "rollback"):
    fail("on_divergence", "must be 'stop' or 'rollback'")
  if not 0 < config.rollback_lr_factor < 1:
    fail("rollback_lr_factor", "must be in (0, 1)")
  if (isinstance(config.max_rollbacks, bool)
      or not isinstance(config.max_rollbacks, int) or config.max_rollbacks < 0):
    fail("max_rollbacks", "must be an integer >= 0")


def shapes(config):
  """(Nv, Dv, Nh, Dh) of the layer; (Nv, Dv) from the front end."""
  nv, dv = front_ends.get(config).shape
  return (nv, dv, config.num_hidden_capsules, config.hidden_dim)


def weight_scale(config) -> float:
  return (1.0 if config.weight_scale == "none"
          else float(config.num_hidden_capsules))


def make_routing(config) -> capsjax.Routing:
  """The layer's routing options: part of the model, static under jit."""
  return capsjax.Routing(num_iterations=config.num_iterations,
                         temperature=config.routing_temperature)


def make_kernel(config) -> capsjax.Kernel:
  """The negative phase's Markov kernel: parallel tempering
  (config.tempering_rungs), MH-corrected (config.mh) or the paper's
  alternation (config.reroute)."""
  routing = make_routing(config)
  if config.tempering_rungs:
    return capsjax.tempering(routing, tempering_betas(config))
  if config.mh:
    return capsjax.mh(routing)
  return capsjax.gibbs(routing, reroute=config.reroute)


def tempering_betas(config) -> tuple[float, ...]:
  """The ladder: tempering_rungs betas evenly spaced up to exactly 1."""
  betas = np.linspace(config.tempering_min_beta, 1.0, config.tempering_rungs)
  return tuple(float(b) for b in betas[:-1]) + (1.0,)


def cd_k(config, step: int) -> int:
  """The number of Gibbs steps of update `step` (k_ramp_every_steps)."""
  if not config.k_ramp_every_steps:
    return config.k
  return min(config.k, 1 + step // config.k_ramp_every_steps)


LR_SCHEDULES = ("constant", "linear", "cosine", "step")


def lr_factor(config) -> optax.Schedule:
  """The learning rate's multiplier at each update count: the schedule
  relative to config.learning_rate, divided by the current k when
  k_ramp_divides_lr."""
  n, lr = config.num_steps, config.learning_rate
  if config.lr_schedule == "linear":
    decay = optax.linear_schedule(1.0, config.final_learning_rate / lr, n)
  elif config.lr_schedule == "cosine":
    decay = optax.cosine_decay_schedule(1.0, n,
                                        config.final_learning_rate / lr)
  elif config.lr_schedule == "step":
    decay = optax.exponential_decay(1.0, config.lr_decay_every_steps,
                                    config.lr_decay_factor, staircase=True)
  else:
    decay = lambda count: jnp.ones((), jnp.float32)
  if not (config.k_ramp_every_steps and config.k_ramp_divides_lr):
    return decay
  every = config.k_ramp_every_steps
  return lambda count: decay(count) / jnp.minimum(config.k,
                                                  1 + count // every)


def sampling_kernel(config, mh: bool = False) -> capsjax.Kernel:
  """The kernel of the model's sample chains (figures, Fréchet samples):
  rerouted Gibbs, or MH-corrected if `mh`, whatever the training used."""
  routing = make_routing(config)
  return capsjax.mh(routing) if mh else capsjax.gibbs(routing)


def base_optimizer(config) -> optax.GradientTransformation:
  """SGD with momentum or Adam on the CD gradient, with the optional
  gradient clipping (first) and learning-rate warm-up (last, so that it
  scales Adam's steps too). Without them the state has the structure of
  older checkpoints. It acts on the effective weights (`make_optimizer`).
  """
  if config.optimizer == "sgd":
    momentum = capsjax.momentum_schedule(config.momentum_initial,
                                         config.momentum_final,
                                         config.momentum_switch_step)
    base = capsjax.sgd(config.learning_rate, momentum=momentum,
                       weight_decay=config.weight_decay)
  else:
    base = capsjax.adam(config.learning_rate, weight_decay=config.weight_decay)
  schedule = (config.lr_schedule != "constant"
              or (config.k_ramp_every_steps and config.k_ramp_divides_lr))
  if not (config.grad_clip_norm or config.warmup_steps or schedule):
    return base
  parts = [base]
  if config.grad_clip_norm:
    parts.insert(0, optax.clip_by_global_norm(config.grad_clip_norm))
  if config.warmup_steps:
    n = config.warmup_steps
    parts.append(optax.scale_by_schedule(
        lambda count: jnp.minimum(1.0, (count + 1.0) / n)))
  if schedule:  # after the base, like warm-up: it scales Adam's steps too
    parts.append(optax.scale_by_schedule(lr_factor(config)))
  return optax.chain(*parts)


def make_optimizer(config) -> optax.GradientTransformation:
  """`base_optimizer` on the effective weights `W / weight_scale(config)`
  (`capsjax.effective_weights`; its state is the base optimizer's). Read
  the learning rate with `learning_rate(opt_state)`."""
  optimizer = capsjax.effective_weights(base_optimizer(config),
                                        weight_scale(config))
  if config.ema_decay:
    optimizer = capsjax.params_ema(optimizer, config.ema_decay)
  return optimizer


def model_params(config, state: capsjax.TrainState):
  """The parameters a run reports as its model: the moving average when
  config.ema_decay, else the last iterate."""
  if config.ema_decay:
    return capsjax.ema_params(state.opt_state)
  return state.params


def learning_rate(opt_state) -> jax.Array:
  """The (injected) learning rate of a `make_optimizer` state."""
  return optax.tree_utils.tree_get(opt_state, "learning_rate")


def cd_options(config, k=None) -> dict:
  """`capsjax.train_step`'s keywords besides the optimizer (k: config.k
  unless given)."""
  centering = (capsjax.Centering(rate=config.centering,
                                 weight_scale=weight_scale(config))
               if config.centering else None)
  return dict(kernel=make_kernel(config), k=config.k if k is None else k,
              through_routing=config.through_routing,
              mean_field_negative=config.mean_field_negative,
              centering=centering)


# ---------------------------------------------------------------------------
# Data.


class Data(NamedTuple):
  train: np.ndarray        # (N, 28, 28) grey levels in [0, 1]
  train_labels: np.ndarray
  test: np.ndarray
  test_labels: np.ndarray


def load_data(config) -> Data:
  """Every process holds the whole dataset (it slices its part of a batch).

  With several processes, process 0 reads (and, the first time, prepares)
  it first: TFDS preparations racing on a shared data_dir would collide.
  """
  if jax.process_index() == 0:
    data = _read_data(config)
  sharding_lib.barrier("capsjax: dataset prepared")
  if jax.process_index() != 0:
    data = _read_data(config)
  return data


def _read_data(config) -> Data:
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
  """Mean of the visible means over `grey`, (Nv, Dv): the data's marginals
  (for patches, the mean grey level per pixel)."""
  front_end = front_ends.get(config)
  if front_end.kind == "patches":
    return data_lib.images_to_capsules(grey.mean(0), config.patch_size)
  return front_ends.batched_mean(front_end, grey)


def to_capsules(config, grey, key):
  """Binary visible capsules (..., Nv, Dv) of grey images: the front end's
  means, binarized like pixels (config.binarize)."""
  return front_ends.get(config).sample(key, grey, config.binarize)


def batch_capsules(config, grey_batch, key, sharding):
  """`to_capsules` of a batch split by `sharding` over an explicit mesh axis
  (sharding.py), split the same way. The front ends (an autoencoder's
  convolutions, a lower layer's pass) are not all written for explicit
  axes: they run with the axis automatic."""
  return jax.sharding.auto_axes(
      functools.partial(to_capsules, config), out_sharding=sharding)(
          grey_batch, key)


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


def batched(fn: Callable, v: np.ndarray, batch_size: int) -> np.ndarray:
  """`fn` over fixed-size batches of `v`, concatenated along axis 0.

  The last batch is padded to `batch_size` and trimmed, so `fn` (jitted)
  compiles once and memory stays at one batch whatever the data size.
  """
  out = []
  for start in range(0, len(v), batch_size):
    batch = v[start:start + batch_size]
    n = len(batch)
    if n < batch_size:
      pad = np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, pad])
    out.append(np.asarray(fn(batch))[:n])
  return np.concatenate(out)


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
  marginals = grey_marginals(config, train_grey)
  # `config.init_scale` is the std of the effective weights W / scale. The
  # key is the one nnx.Rngs gave the layer before 0.2: the same initial W.
  params = capsjax.init_params(
      nnx.Rngs(params=keys["init"]).params(), nv, dv, nh, dh,
      weight_std=config.init_scale, weight_scale=weight_scale(config),
      data=marginals[None])
  chain = None
  if config.persistent:
    # PCD chains start at binarized training images.
    n = config.num_chains or config.batch_size
    v0 = to_capsules(config, train_grey[np.arange(n) % len(train_grey)],
                     keys["chains"])
    chain = make_kernel(config).init(params, v0)
  offsets = (capsjax.init_offsets(params, marginals[None])
             if config.centering else None)
  return capsjax.init_train_state(params, optimizer, chain=chain,
                                  offsets=offsets)


def abstract_state(config) -> capsjax.TrainState:
  """The state's structure, shapes and dtypes, for restoring."""
  grey = np.zeros((config.batch_size, IMAGE_SIZE, IMAGE_SIZE), np.float32)
  # Load the front end (checkpoint reads) now: not inside the trace.
  front_ends.get(config)
  return jax.eval_shape(
      lambda: initial_state(config, grey, make_optimizer(config)))


def checkpoint_manager(config, workdir: str, *, create: bool = True
                       ) -> ocp.CheckpointManager:
  """The workdir's manager; `create=False` for readers (sample, evaluate)."""
  # The writer removes the temporary folder of a write that a crash cut
  # short (Orbax commits a checkpoint by renaming it, so such a folder is
  # never mistaken for a checkpoint, but it would accumulate).
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(
          config.keep_checkpoints),
      create=create, cleanup_tmp_directories=create)
  # The handler named up front, so that a checkpoint's metadata (its tree,
  # read before restoring: restore_latest) is readable before any save.
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"), options=options,
      item_handlers=ocp.StandardCheckpointHandler())


def make_workdir(workdir: str) -> None:
  """Creates the workdir and checks that it is writable, before any work."""
  try:
    os.makedirs(workdir, exist_ok=True)
    # One probe per process: processes sharing the workdir must not race.
    probe = os.path.join(workdir, f".write_test{jax.process_index()}")
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
    saved = load_config(workdir)
    resumable = set(RESUMABLE_FIELDS)
    if config.lr_schedule in ("linear", "cosine"):
      resumable.remove("num_steps")  # the decay runs over num_steps
    diffs = [f"{k}: {saved.get(k)!r} in the workdir, {v!r} now"
             for k, v in config.items()
             if k not in resumable and saved.get(k) != v]
    if diffs:
      raise ConfigError(
          f"workdir {workdir} was written by an incompatible config ("
          + "; ".join(diffs) + "): use a new --workdir or the same values")
  elif jax.process_index() == 0:
    # Renamed into place: another process never reads a half-written file.
    with open(path + ".tmp", "w") as f:
      f.write(config.to_json(indent=2))
    os.replace(path + ".tmp", path)


def restore_latest(config, workdir: str, mngr: ocp.CheckpointManager,
                   shardings=None):
  """The latest checkpoint's state, or None when there is none.

  The arrays are restored straight into `shardings` (a pytree like the
  state, e.g. `make_shardings(config).state`), whatever the devices that
  wrote them; by default onto this process's first device. A checkpoint
  written by capsjax 0.1 whose params hold the routing temperature is
  migrated (`_restore_with_temperature`).
  """
  step = mngr.latest_step()
  if step is None:
    return None
  logging.info("Restoring checkpoint of step %d from %s", step, workdir)
  abstract = abstract_state(config)
  if shardings is None:
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: one, abstract)
  saved_params = mngr.item_metadata(step).tree["params"]
  if LEGACY_TEMPERATURE in saved_params:
    return _restore_with_temperature(
        config, workdir, mngr, step, abstract, shardings,
        saved_params[LEGACY_TEMPERATURE].dtype)
  return _restore_fields(mngr, step, abstract, shardings)


def _restore_fields(mngr, step, abstract, shardings) -> capsjax.TrainState:
  """Restores the state's fields that the checkpoint holds; a field it
  lacks (one added to TrainState since, e.g. `offsets`) must be None."""
  saved = mngr.item_metadata(step).tree
  target = {name: getattr(abstract, name) for name in abstract._fields
            if name in saved or getattr(abstract, name) is not None}
  restored = mngr.restore(step, args=ocp.args.StandardRestore(
      sharding_lib.with_shardings(
          target, {name: getattr(shardings, name) for name in target})))
  return capsjax.TrainState(**{**dict.fromkeys(abstract._fields),
                               **restored})


# capsjax 0.1 stored a routing temperature T != 1 in the params (and so in
# every params-shaped tree of the optimizer state: momentum, Adam moments,
# all zero for it); 0.2 holds it in `capsjax.Routing` (config) alone.
LEGACY_TEMPERATURE = "routing_temperature"


def _is_params_tree(x) -> bool:
  return isinstance(x, dict) and set(x) == {"W", "a", "b"}


def _with_legacy_temperature(tree, leaf):
  """`tree` with `leaf` under LEGACY_TEMPERATURE in every params-shaped dict:
  the layout of a 0.1 checkpoint."""
  return jax.tree.map(
      lambda x: {**x, LEGACY_TEMPERATURE: leaf} if _is_params_tree(x) else x,
      tree, is_leaf=_is_params_tree)


def _without_legacy_temperature(tree):
  def is_legacy(x):
    return isinstance(x, dict) and LEGACY_TEMPERATURE in x
  return jax.tree.map(
      lambda x: ({k: v for k, v in x.items() if k != LEGACY_TEMPERATURE}
                 if is_legacy(x) else x), tree, is_leaf=is_legacy)


def _restore_with_temperature(config, workdir, mngr, step, abstract,
                              shardings, dtype) -> capsjax.TrainState:
  """Restores a 0.1 checkpoint holding params["routing_temperature"]: checks
  the value against config.routing_temperature and drops the key."""
  scalar = shardings.step  # a replicated scalar's sharding
  legacy = _restore_fields(
      mngr, step,
      _with_legacy_temperature(abstract, jax.ShapeDtypeStruct((), dtype)),
      _with_legacy_temperature(shardings, scalar))
  # Replicated: every process holds the value.
  saved = np.asarray(legacy.params[LEGACY_TEMPERATURE].addressable_data(0))
  if saved != np.asarray(config.routing_temperature, saved.dtype):
    raise ConfigError(
        f"config.routing_temperature = {config.routing_temperature!r}, but "
        f"checkpoint {step} in {workdir} (written by capsjax 0.1) was trained "
        f"with routing temperature {float(saved):g}: set routing_temperature "
        f"to {float(saved):g} in {os.path.join(workdir, 'config.json')} and "
        "in the command")
  logging.info("Migrated the 0.1 checkpoint of step %d: the routing "
               "temperature %g is config.routing_temperature", step,
               float(saved))
  return _without_legacy_temperature(legacy)


def data_parallel_devices(config) -> int:
  """The number of devices the batch is split over, checked.

  Raises ConfigError when config.num_devices exceeds the devices JAX sees,
  leaves some out on several hosts, or does not divide the batch, the
  persistent chains (or Nh, with config.shard_weights).
  """
  available = jax.device_count()
  n = config.num_devices or available
  where = (f"{available} {jax.devices()[0].platform} device(s)"
           + (f" on {jax.process_count()} processes"
              if jax.process_count() > 1 else ""))
  if n > available:
    raise ConfigError(f"config.num_devices = {n}: JAX sees only {where}")
  if jax.process_count() > 1 and n != available:
    raise ConfigError(f"config.num_devices = {n}: a multi-process run uses "
                      f"every device ({where}); set 0")
  if config.batch_size % n:
    raise ConfigError(f"config.batch_size = {config.batch_size} must be a "
                      f"multiple of the {n} data-parallel devices")
  if config.persistent and config.num_chains % n:
    raise ConfigError(f"config.num_chains = {config.num_chains} must be a "
                      f"multiple of the {n} data-parallel devices")
  if config.shard_weights and config.num_hidden_capsules % n:
    raise ConfigError(
        f"config.num_hidden_capsules = {config.num_hidden_capsules} must be a "
        f"multiple of the {n} devices W is sharded over "
        "(config.shard_weights)")
  return n


def make_shardings(config) -> sharding_lib.Shardings:
  """The mesh and the shardings of the state and the batch (sharding.py)."""
  return sharding_lib.make_shardings(
      data_parallel_devices(config), abstract_state(config),
      shard_weights=config.shard_weights)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The workdir's config; fields added to capsjax since it was written
  (e.g. the divergence policy) take their defaults."""
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  config = default_config.get_config()
  config.update(saved)
  return config


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


def make_update(config, optimizer, shardings: sharding_lib.Shardings,
                k=None):
  """The jitted update: binarize the grey batch, then one CD-k step (k:
  config.k unless given; each k compiles its own).

  `update(state, grey_batch)` takes the batch as made by `train_batch` and
  a state on any devices (it is moved to `shardings.state` first, a no-op
  when it is there); it returns the new state in `shardings.state`, the
  step's `capsjax.CDMonitors` (replicated scalars, from the parameters the
  step started from) and the finiteness flags.
  """
  keys = _keys(config)
  options = cd_options(config, k)
  kernel = options["kernel"]
  step_fn = functools.partial(capsjax.train_step, optimizer=optimizer,
                              **options)

  def update(state, grey_batch):
    v = batch_capsules(config, grey_batch,
                       jax.random.fold_in(keys["binarize"], state.step),
                       shardings.batch)
    if config.shard_weights:
      # FSDP: W (split along Nh over the batch's axis) is gathered for the
      # step; the update is split again like the state (out_shardings).
      state = state._replace(params=jax.sharding.reshard(
          state.params, jax.sharding.PartitionSpec()))
    new_state, info = step_fn(keys["train"], state, v)
    # Every update's monitors are logged (means over log_every_steps).
    monitors = capsjax.cd_monitors(state.params, v, info, kernel=kernel)
    finite = {name: jnp.all(jnp.isfinite(x))
              for name, x in new_state.params.items()}
    finite["free_energy_gap"] = jnp.isfinite(monitors.free_energy_gap)
    return new_state, monitors, finite

  # No buffer donation: an asynchronous checkpoint may still read the state.
  jitted = jax.jit(update, in_shardings=(shardings.state, shardings.batch),
                   out_shardings=(shardings.state, shardings.replicated,
                                  shardings.replicated))

  compiled = False

  def placed_update(state, grey_batch):
    nonlocal compiled
    state = sharding_lib.place(state, shardings.state)
    with jax.set_mesh(shardings.mesh):
      if not compiled and jax.process_count() > 1:
        # Compile (into jit's cache) on every process, then wait for all:
        # a process that starts the first collective while another still
        # compiles can time out (gloo's 30 s on CPUs).
        jitted.lower(state, grey_batch).compile()
        sharding_lib.barrier("capsjax: update compiled")
      compiled = True
      return jitted(state, grey_batch)

  return placed_update


def train_batch(config, train_grey, step: int,
                shardings: sharding_lib.Shardings) -> jax.Array:
  """The grey images of `step`, split over the data devices."""
  return sharding_lib.global_batch(
      train_grey, batch_indices(config, len(train_grey), step),
      shardings.batch)


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
  """Cheap monitors on fixed binarized train and test subsets.

  With `config.monitor_ais_betas` > 0 also a likelihood proxy: AIS (betas x
  `monitor_ais_runs`, data-marginal base from `train_v`) gives log Z, its
  ESS and the MH acceptance of the routed model's exact chains; the test
  log-likelihood `-mean F~(test) - log Z` is NaN when the weights are
  degenerate (ESS below `capsjax.ess_threshold`); its 95% upper bound
  (experiments/ais_reliability.py) is reported in any case.
  """
  routing = make_routing(config)
  nv, dv, _, _ = shapes(config)
  num_betas, num_runs = config.monitor_ais_betas, config.monitor_ais_runs

  @jax.jit
  def evaluate(params, train_v, test_v, key):
    def routed_f(v):
      return capsjax.routed_free_energy(params, v, routing)
    routed = capsjax.route(capsjax.predictions(params, test_v), routing)
    c = routed.coefficients
    entropy = capsjax.routing_entropy(c)
    # sum_j c_ij |W_ij| (Frobenius norms of the blocks), mean over i and the
    # examples; uniform routing gives mean_ij |W_ij|, so the ratio says how
    # much routing concentrates the effective weights.
    block_norms = jnp.sqrt(jnp.sum(jnp.square(params["W"]), axis=(-2, -1)))
    effective_norm = jnp.mean(jnp.sum(c * block_norms, axis=-1))
    recon = capsjax.reconstruct(params, test_v, c)
    f_test = routed_f(test_v)
    # Pseudo-log-likelihood, estimated with one random neuron per example:
    # D * log p(v_d | v_-d) = D * log sigmoid(F(v with d flipped) - F(v)).
    flip = jax.nn.one_hot(jax.random.randint(key, test_v.shape[:1], 0, nv * dv),
                          nv * dv).reshape(test_v.shape)
    flipped = test_v + flip * (1.0 - 2.0 * test_v)
    pll = nv * dv * jax.nn.log_sigmoid(routed_f(flipped) - f_test)
    monitors = {}
    if num_betas:
      ais = capsjax.ais(jax.random.fold_in(key, 1), params, routing,
                        num_betas=num_betas, num_runs=num_runs,
                        base_bias=capsjax.base_rate_bias(train_v))
      reliable = ais.ess >= capsjax.ess_threshold(num_runs)
      monitors = {
          "monitor_ais_log_z": ais.log_z,
          "monitor_ais_log_z_std": ais.log_z_std,
          "monitor_ais_ess": ais.ess,
          "monitor_ais_acceptance": ais.acceptance_rate,
          "monitor_test_log_likelihood": jnp.where(
              reliable, -jnp.mean(f_test) - ais.log_z, jnp.nan),
          # Holds with probability >= 95% even for degenerate weights: the
          # Z estimate is unbiased, so P(log Z_est > log Z + t) <= e^-t.
          "monitor_test_log_likelihood_upper_95": (
              -jnp.mean(f_test) - ais.log_z + jnp.log(20.0)),
      }
    return monitors | {
        "test_reconstruction_error": jnp.mean(jnp.square(test_v - recon)),
        "free_energy_gap_test_minus_train": (
            jnp.mean(f_test) - jnp.mean(routed_f(train_v))),
        "test_pseudo_log_likelihood": jnp.mean(pll),
        "test_routing_entropy": jnp.mean(entropy),
        "test_routing_entropy_std": jnp.std(entropy),
        # The spread of the final agreement logits over upper capsules:
        # routing hardens as it grows (it scales with |W|^2).
        "test_agreement_logit_std": jnp.mean(jnp.std(routed.logits, axis=-1)),
        "test_effective_weight_norm": effective_norm,
        "test_effective_weight_ratio": effective_norm / jnp.mean(block_norms),
    }

  return evaluate


def make_sampler(config, mh: bool = False, states: bool = False):
  """Jitted `(params, key, marginals) -> (sample means, acceptance rate)`,
  or `(binary states, means, acceptance rate)` with `states`.

  `config.num_samples` chains start from the data marginals and run
  `config.sample_steps` Gibbs steps with routing (MH-corrected if `mh`).
  """
  kernel = sampling_kernel(config, mh)

  @jax.jit
  def sample(params, key, marginals):
    init_key, run_key = jax.random.split(key)
    v0 = jax.random.bernoulli(init_key, marginals,
                              (config.num_samples,) + marginals.shape)
    state = kernel.init(params, v0.astype(params["W"].dtype))
    state, info = capsjax.run_chain(run_key, kernel, state, params,
                                    config.sample_steps)
    out = (info.last.visible_mean, jnp.mean(info.acceptance_rate))
    return (state.v,) + out if states else out

  return sample


def sample_figure(config, sampler, params, key, test_grey, marginals):
  """A PNG-ready grid: model samples, then test images and reconstructions.

  Pixel patches: rows of binarized test digits, each followed by its
  one-pass reconstruction. Other front ends: rows of test digits, the
  decoded binarized visible capsules (what the front end alone keeps), and
  the decoded one-pass reconstruction. Samples and reconstructions are
  decoded through the front end (`front_ends.FrontEnd.decode`).
  """
  nrow = 10
  chain_key, binarize_key = jax.random.split(key)
  samples, acceptance = sampler(params, chain_key, marginals)
  test_v = to_capsules(config, test_grey[:nrow * 2], binarize_key)
  c = capsjax.route_visible(params, test_v, make_routing(config))
  recon = capsjax.reconstruct(params, test_v, c)
  front_end = front_ends.get(config)
  to_img = functools.partial(front_ends.to_numpy_images, front_end)
  test_img, recon_img = to_img(test_v), to_img(recon)
  rows = []
  for half in (slice(None, nrow), slice(nrow, None)):
    if front_end.kind != "patches":
      rows.append(np.asarray(test_grey[:nrow * 2])[half])
    rows += [test_img[half], recon_img[half]]
  blocks = (images.grid(to_img(samples), nrow),
            images.grid(np.concatenate(rows), nrow))
  return blocks, float(acceptance)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written."""


def _checkpoint_error(mngr: ocp.CheckpointManager,
                      error: Exception) -> CheckpointError:
  # Orbax reports a failed asynchronous write at the next save or wait, so
  # the message lists the complete checkpoints rather than guess which write
  # failed.
  mngr.reload()
  kept = mngr.all_steps()
  return CheckpointError(
      f"a checkpoint could not be written to {mngr.directory} "
      f"({type(error).__name__}: {error}); the complete checkpoints are kept "
      f"(updates {', '.join(map(str, kept)) or 'none'}): fix the cause and "
      "re-run the same command to resume from the latest")


def save_checkpoint(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Starts writing `state` as checkpoint `step` (asynchronously)."""
  try:
    mngr.save(step, args=ocp.args.StandardSave(state))
  except Exception as e:  # pylint: disable=broad-except
    raise _checkpoint_error(mngr, e) from e


def finish_checkpoints(mngr: ocp.CheckpointManager) -> None:
  """Waits for pending writes; a failed one is a CheckpointError."""
  try:
    mngr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _checkpoint_error(mngr, e) from e


def rollback(config, workdir, mngr, state, train_grey, optimizer,
             shardings: sharding_lib.Shardings) -> capsjax.TrainState:
  """The latest checkpoint (or the initial state) with the learning rate of
  `state` times `config.rollback_lr_factor`.

  The learning rate lives in the optimizer state (optax.inject_hyperparams),
  so it is checkpointed and a resumed run keeps the lowered value.
  """
  finish_checkpoints(mngr)
  restored = restore_latest(config, workdir, mngr, shardings.state)
  if restored is None:
    restored = initial_state(config, train_grey, optimizer)
  old_lr = learning_rate(state.opt_state)
  new_lr = old_lr * config.rollback_lr_factor
  logging.warning("Diverged: rolled back to update %d, learning rate %.3g -> "
                  "%.3g", int(restored.step), float(old_lr), float(new_lr))
  return restored._replace(opt_state=optax.tree_utils.tree_set(
      restored.opt_state, learning_rate=new_lr))


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
  shardings = make_shardings(config)
  make_workdir(workdir)
  check_workdir_config(config, workdir)
  data = load_data(config)
  optimizer = make_optimizer(config)
  mngr = checkpoint_manager(config, workdir)
  state = restore_latest(config, workdir, mngr, shardings.state)
  if state is None:
    state = initial_state(config, data.train, optimizer)
  start = int(state.step)

  is_main = jax.process_index() == 0
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  updates = {}  # k -> its compiled update (k_ramp_every_steps)
  evaluate = make_evaluate(config)
  sampler = make_sampler(config)
  keys = _keys(config)
  n_eval = min(config.num_eval_examples, len(data.test), len(data.train))
  train_eval_v = to_capsules(config, data.train[:n_eval], keys["eval_train"])
  test_eval_v = to_capsules(config, data.test[:n_eval], keys["eval_test"])
  marginals = grey_marginals(config, data.train)
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)

  train_sums, num_logged, rollbacks = None, 0, 0
  progress = tqdm.tqdm(total=config.num_steps, initial=start, unit="step",
                       disable=not is_main, mininterval=2.0, smoothing=0.1,
                       desc="CD training")
  failed = False
  try:
    with _sigterm_flag() as preempted:
      step = start
      while step < config.num_steps:
        batch = train_batch(config, data.train, step, shardings)
        k = cd_k(config, step)
        if k not in updates:
          updates[k] = make_update(config, optimizer, shardings, k)
        new_state, monitors, finite = updates[k](state, batch)
        # Checked before anything is written: a non-finite state never reaches
        # a checkpoint, and the error names the update that produced it.
        try:
          check_finite(finite, step + 1)
        except DivergenceError as e:
          if config.on_divergence == "stop":
            raise
          if rollbacks == config.max_rollbacks:
            raise DivergenceError(f"{e} (gave up after {rollbacks} roll-backs:"
                                  " config.max_rollbacks)") from None
          rollbacks += 1
          state = rollback(config, workdir, mngr, state, data.train, optimizer,
                           shardings)
          step, train_sums, num_logged = int(state.step), None, 0
          progress.reset(total=config.num_steps)
          progress.update(step)
          continue
        state = new_state
        progress.update(1)
        scalars = monitors._asdict()
        train_sums = (scalars if train_sums is None else
                      jax.tree.map(jnp.add, train_sums, scalars))
        num_logged += 1
        step = done = step + 1
        if done % config.log_every_steps == 0 or done == config.num_steps:
          means = {f"train_{k}": v / num_logged for k, v in train_sums.items()}
          # The rate of the last update: the base times the schedule's factor.
          lr = learning_rate(state.opt_state) * lr_factor(config)(done - 1)
          writer.write_scalars(done, means | {"learning_rate": lr, "cd_k": k,
                                              "rollbacks": rollbacks})
          train_sums, num_logged = None, 0
        evaluating = (done % config.eval_every_steps == 0
                      or done == config.num_steps)
        sampling = (done % config.sample_every_steps == 0
                    or done == config.num_steps)
        if evaluating or sampling:
          # Process 0 evaluates and samples one copy of the parameters on
          # one device (gathering them is a collective: every process).
          params = jax.device_put(sharding_lib.to_host(
              model_params(config, state)))
        if is_main and evaluating:
          pll_key = jax.random.fold_in(keys["pll"], done)
          writer.write_scalars(done, evaluate(params, train_eval_v,
                                              test_eval_v, pll_key))
        if is_main and sampling:
          blocks, _ = sample_figure(
              config, sampler, params,
              jax.random.fold_in(keys["sample"], done), data.test, marginals)
          images.save_png(
              os.path.join(workdir, "samples", f"step_{done:07d}.png"), *blocks)
        stop = sharding_lib.any_process(preempted.is_set())
        if (done % config.checkpoint_every_steps == 0 or done == config.num_steps
            or stop):
          save_checkpoint(mngr, done, state)
        if stop:
          logging.warning("SIGTERM: saved the checkpoint of update %d; "
                          "re-run the same command to continue", done)
          break
  except BaseException:
    failed = True
    raise
  finally:
    # Also on an error: the pending (good) checkpoint is completed; a failure
    # to complete it must not hide the error already on its way.
    progress.close()
    try:
      finish_checkpoints(mngr)
    except CheckpointError:
      if not failed:
        raise
      logging.exception("While stopping on an error:")
    finally:
      mngr.close()
      writer.close()
  return state
