"""The CD runner's config: validation before any work, and the config a
workdir recorded (`load_config`, with the defaults of fields added since).

Also the front-end fields (`validate_front_end`), checked where the front end
is built (front_ends.get).
"""

from __future__ import annotations

import json
import os

import ml_collections

import capsjax
from capsjax import data as data_lib
from experiments.configs import default as default_config
from experiments.runner.errors import ConfigError

IMAGE_SIZE = 28
FRONT_END_KINDS = ("patches", "autoencoder", "layer")


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


LR_SCHEDULES = ("constant", "linear", "cosine", "step")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects bad values before any work, naming the field and the value."""
  def fail(field, why):
    raise ConfigError(f"config.{field} = {config[field]!r}: {why}")

  if config.dataset not in data_lib.DATASETS:
    fail("dataset", f"unknown dataset; known: {', '.join(data_lib.DATASETS)}")
  if config.binarize not in data_lib.BINARIZE_MODES:
    fail("binarize", f"must be one of {data_lib.BINARIZE_MODES}")
  if config.routing_rule not in capsjax.RULES:
    fail("routing_rule", f"must be one of {capsjax.RULES}")
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
  if not 0 < config.mh_block_fraction <= 1:
    fail("mh_block_fraction", "must be in (0, 1]")
  if config.mh_block_fraction != 1 and not config.mh:
    fail("mh_block_fraction", "applies to MH chains: set config.mh = True")
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


def validate_front_end(config) -> None:
  """The front-end fields, before any work (names the field and the fix)."""
  def fail(field, value, why):
    raise ConfigError(f"config.{field} = {value!r}: {why}")

  kind = config.get("front_end", "patches")
  if kind not in FRONT_END_KINDS:
    fail("front_end", kind, f"must be one of {FRONT_END_KINDS}")
  if kind == "autoencoder" and not config.autoencoder_workdir:
    fail("autoencoder_workdir", config.autoencoder_workdir,
         "front_end='autoencoder' needs the workdir of a trained autoencoder: "
         "train one with `python -m experiments.train_autoencoder "
         "--workdir=DIR` and pass --config.autoencoder_workdir=DIR")
  if kind == "layer" and not config.lower_workdir:
    fail("lower_workdir", config.lower_workdir,
         "front_end='layer' needs the workdir of the trained layer below: "
         "train it with `python -m experiments.train` and pass "
         "--config.lower_workdir=DIR")
  t = config.get("topdown_iterations", 3)
  if isinstance(t, bool) or not isinstance(t, int) or t < 0:
    fail("topdown_iterations", t, "must be an integer >= 0")


# Fields whose default changed after they were added: a workdir written
# before they existed trained with these values, not with today's default.
LEGACY_VALUES = {"lr_schedule": "constant", "final_learning_rate": 0.0,
                 "ema_decay": 0.0}


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The workdir's config; fields added to capsjax since it was written
  (e.g. the divergence policy) take the values it trained with: their
  defaults, or `LEGACY_VALUES` where the default has changed since."""
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  config = default_config.get_config()
  config.update(LEGACY_VALUES)
  config.update(saved)
  return config
