"""Training the autoencoder (models/autoencoder.py) in a workdir: the
jitted step, the resumable loop (harness: workdir, config record,
checkpoints, SIGTERM) and the test losses and reconstruction figure it
writes when done."""

from __future__ import annotations

import json
import os
import time

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.runner import data as data_io
from experiments.runner import harness
from experiments.runner import images
from experiments.runner import metrics as metrics_lib
from experiments.runner.models import autoencoder as ae
from experiments.runner.models import common


def make_train_step(config):
  """The jitted `(state, images) -> (state, mean loss)`."""
  graphdef = ae.graphdef_of(config)
  optimizer = common.make_optimizer(config)
  base_key = jax.random.key(config.seed)

  def loss_fn(params, images, key):
    model = ae.merge(graphdef, params)
    codes = ae.stochastic_codes(key, model.encode(images),
                             config.binary_code_fraction)
    return ae.reconstruction_loss(model.decode_logits(codes), images).mean()

  @jax.jit
  def train_step(state: ae.TrainState, images):
    # The step's code samples from (seed, step): a resumed run continues
    # exactly.
    key = jax.random.fold_in(base_key, state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, images, key)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    return ae.TrainState(optax.apply_updates(state.params, updates),
                         opt_state, state.step + 1), loss

  return train_step


def _saved_record(workdir: str) -> dict:
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


def _test_losses(model: ae.Autoencoder, test_x, key, batch_size=1_000) -> dict:
  """Test BCE (nats per image) decoding the code means and binary codes."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def losses(x, k):
    m = nnx.merge(graphdef, params)
    means = m.encode(x)
    binary = jax.random.bernoulli(k, means).astype(means.dtype)
    return jnp.stack([ae.reconstruction_loss(m.decode_logits(means), x),
                      ae.reconstruction_loss(m.decode_logits(binary), x)], -1)

  out = np.concatenate([
      np.asarray(losses(test_x[s:s + batch_size], jax.random.fold_in(key, i)))
      for i, s in enumerate(range(0, len(test_x), batch_size))])
  return {"test_bce_code_means": float(out[:, 0].mean()),
          "test_bce_binary_codes": float(out[:, 1].mean())}


def reconstruction_figure(model: ae.Autoencoder, test_x, key, n=10):
  """Rows: test digits, decoded code means, decoded binary codes."""
  graphdef, params = nnx.split(model)
  x = jnp.asarray(test_x[:n])
  # Jitted: one compilation, not one per op.
  means = ae.jitted_encode(graphdef, params, x)
  binary = jax.random.bernoulli(key, means).astype(means.dtype)
  decoded = [ae.jitted_decode(graphdef, params, c) for c in (means, binary)]
  rows = np.concatenate([np.asarray(x)] + [np.asarray(d) for d in decoded])
  return images.grid(rows, n)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or resumes) the autoencoder in `workdir`, as its one writer;
  returns test results."""
  ae.validate_config(config)
  with harness.sole_writer(workdir):
    return _train(config, workdir)


def _train(config, workdir: str) -> dict:
  harness.check_workdir_config(
      workdir, json.loads(config.to_json()).items(),
      load_saved=_saved_record, resumable=ae.RESUMABLE_FIELDS,
      record=config.to_json(indent=2), error=ae.AutoencoderError)
  train_x, _, test_x, _ = data_io.read_data(config)
  if len(train_x) < config.batch_size:
    raise ae.AutoencoderError(f"config.batch_size = {config.batch_size} "
                              f"exceeds the {len(train_x)} training images")
  mngr = harness.checkpoint_manager(config, workdir)
  writer = metrics_lib.MetricWriter(workdir)
  state = ae.restore(config, mngr)
  if state is None:
    state = ae.initial_state(config)
  train_step = make_train_step(config)
  start, t0, losses = int(state.step), time.perf_counter(), []
  try:
    with harness.sigterm_flag() as preempted:
      for step in range(start, config.num_steps):
        # The CD runner's data order: a permutation per epoch from the seed.
        idx = data_io.batch_indices(config, len(train_x), step)
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
          harness.save_checkpoint(mngr, done, state)
        if stop:
          logging.warning("SIGTERM: saved step %d; re-run to continue", done)
          break
  finally:
    harness.finish_checkpoints(mngr)
    mngr.close()
    writer.close()
  model = ae.merge(ae.graphdef_of(config), state.params)
  key = jax.random.key(config.seed + 1)
  results = {"step": int(state.step),
             **_test_losses(model, test_x, key),
             "train_time_s_this_call": round(time.perf_counter() - t0, 2),
             "jax_backend": jax.default_backend(),
             "jax_version": jax.__version__}
  with open(os.path.join(workdir, ae.RESULTS_FILE), "w") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
  images.save_png(os.path.join(workdir, "reconstructions.png"),
                  reconstruction_figure(model, test_x, key))
  return results
