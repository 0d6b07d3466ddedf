"""Multi-device trainings for test_sharding.py, run in a subprocess.

The device count is fixed when JAX starts, so the tests that need 8 CPU
devices run this script with XLA_FLAGS=--xla_force_host_platform_device_count=8
instead of changing the device count of the pytest process:

  python -m tests.sharding_worker OUT_DIR DATA_DIR RESUME_WORKDIR

It trains `config(...)` on 2 and 8 devices (and 8 with sharded W), writes
the final parameters to OUT_DIR/params_<name>.npz, and continues the
5-update run in RESUME_WORKDIR (written on 1 device) to 10 updates on 8
devices, and starts OUT_DIR/from8 on 8 devices for the parent to continue
on 1. Facts the parent checks go to OUT_DIR/facts.json.
"""

import json
import os
import sys

import jax
import numpy as np

from experiments.runner import data as data_io
from experiments.runner import errors
from experiments.runner import front_ends
from experiments.runner import loop
from experiments.runner import sharding
from experiments.runner import state as state_lib
from experiments.runner import update as update_lib
from tests import test_train


def config(data_dir, **overrides):
  """A tiny run whose batch (16) and Nh (8) split over 1, 2, 4 or 8 devices."""
  settings = dict(batch_size=16, num_hidden_capsules=8, num_steps=10,
                  checkpoint_every_steps=5, log_every_steps=5,
                  eval_every_steps=10, sample_every_steps=10, num_samples=4,
                  sample_steps=2, num_eval_examples=16)
  return test_train.tiny_config(data_dir, **(settings | overrides))


def save_params(path, state):
  np.savez(path, **{k: np.asarray(v) for k, v in
                    sharding.to_host(state.params).items()})


def binarized_batch(cfg, train_grey, shardings):
  """Update 3's binarized batch, as the update computes it."""
  keys = state_lib.keys(cfg)
  key = jax.random.fold_in(keys["binarize"], 3)
  to_v = jax.jit(lambda g: update_lib.batch_capsules(
      cfg, front_ends.get(cfg), g, key, shardings.batch))
  with jax.set_mesh(shardings.mesh):
    return np.asarray(to_v(update_lib.train_batch(cfg, train_grey, 3,
                                                 shardings)))


def main(out_dir, data_dir, resume_workdir):
  assert jax.device_count() == 8, jax.devices()
  facts = {}
  runs = {"2": dict(num_devices=2), "8": dict(num_devices=8),
          "8_sharded_w": dict(num_devices=8, shard_weights=True)}
  for name, overrides in runs.items():
    cfg = config(data_dir, **overrides)
    state = loop.train_and_evaluate(cfg, os.path.join(out_dir, name))
    save_params(os.path.join(out_dir, f"params_{name}.npz"), state)
    facts[f"W_spec_{name}"] = list(state.params["W"].sharding.spec)
    facts[f"chain_spec_{name}"] = list(state.chain.v.sharding.spec)

  # The random bits of a step do not depend on how the batch is split.
  grey = data_io.load_data(config(data_dir)).train
  cfgs = [config(data_dir, num_devices=n) for n in (1, 8)]
  batches = [binarized_batch(cfg, grey, state_lib.make_shardings(
      cfg, front_ends.get(cfg))) for cfg in cfgs]
  facts["binarized_batch_equal"] = bool(np.array_equal(*batches))

  try:
    cfg = config(data_dir, num_devices=8, batch_size=20)
    state_lib.make_shardings(cfg, front_ends.get(cfg))
  except errors.ConfigError as e:
    facts["indivisible_batch_error"] = str(e)

  # Checkpoints across device counts: 1 -> 8 here, 8 -> 1 in the parent.
  state = loop.train_and_evaluate(config(data_dir, num_devices=8),
                                       resume_workdir)
  save_params(os.path.join(out_dir, "params_resumed_on_8.npz"), state)
  loop.train_and_evaluate(config(data_dir, num_devices=8, num_steps=5),
                               os.path.join(out_dir, "from8"))

  with open(os.path.join(out_dir, "facts.json"), "w") as f:
    json.dump(facts, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
