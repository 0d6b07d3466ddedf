"""`train_and_evaluate(config, workdir)`: CD training of one capsule layer.

Everything random is derived from `config.seed` and the step number (the
data order from the epoch, the binarization and the CD chains from the
step), so a run resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import tqdm

import capsjax
from experiments.runner import checkpoints
from experiments.runner import config as config_lib
from experiments.runner import data as data_io
from experiments.runner import factories
from experiments.runner import front_ends
from experiments.runner import harness
from experiments.runner import images
from experiments.runner import metrics as metrics_lib
from experiments.runner import monitors
from experiments.runner import sharding as sharding_lib
from experiments.runner import state as state_lib
from experiments.runner import update as update_lib
from experiments.runner import visible
from experiments.runner.errors import CheckpointError
from experiments.runner.errors import DivergenceError


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> capsjax.TrainState:
  """Trains (or resumes) the run in `workdir`, as its one writer
  (`harness.sole_writer`); returns the final state."""
  config_lib.validate_config(config)
  front_end = front_ends.get(config)  # built once, handed down
  shardings = state_lib.make_shardings(config, front_end)
  with harness.sole_writer(workdir):
    return _train(config, workdir, front_end, shardings)


def _train(config, workdir: str, front_end: visible.FrontEnd,
           shardings: sharding_lib.Shardings) -> capsjax.TrainState:
  checkpoints.check_workdir_config(config, workdir)
  data = data_io.load_data(config)
  optimizer = factories.make_optimizer(config)
  mngr = harness.checkpoint_manager(config, workdir)
  state = checkpoints.restore_latest(config, front_end, workdir, mngr,
                                     shardings.state)
  if state is None:
    state = state_lib.initial_state(config, front_end, data.train, optimizer)
  start = int(state.step)

  is_main = jax.process_index() == 0
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  updates = {}  # k -> its compiled update (k_ramp_every_steps)
  evaluate = monitors.make_evaluate(config)
  sampler = monitors.make_sampler(config)
  keys = state_lib.keys(config)
  n_eval = min(config.num_eval_examples, len(data.test), len(data.train))
  train_eval_v = visible.to_capsules(front_end, config.binarize,
                                     data.train[:n_eval], keys["eval_train"])
  test_eval_v = visible.to_capsules(front_end, config.binarize,
                                    data.test[:n_eval], keys["eval_test"])
  marginals = visible.marginals(front_end, data.train)
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)

  train_sums, num_logged, rollbacks = None, 0, 0
  progress = tqdm.tqdm(total=config.num_steps, initial=start, unit="step",
                       disable=not is_main, mininterval=2.0, smoothing=0.1,
                       desc="CD training")
  failed = False
  try:
    with harness.sigterm_flag() as preempted:
      step = start
      while step < config.num_steps:
        batch = update_lib.train_batch(config, data.train, step, shardings)
        k = factories.cd_k(config, step)
        if k not in updates:
          updates[k] = update_lib.make_update(config, front_end, optimizer,
                                              shardings, k)
        new_state, step_monitors, finite = updates[k](state, batch)
        # Checked before anything is written: a non-finite state never reaches
        # a checkpoint, and the error names the update that produced it.
        try:
          update_lib.check_finite(finite, step + 1)
        except DivergenceError as e:
          if config.on_divergence == "stop":
            raise
          if rollbacks == config.max_rollbacks:
            raise DivergenceError(f"{e} (gave up after {rollbacks} roll-backs:"
                                  " config.max_rollbacks)") from None
          rollbacks += 1
          state = checkpoints.rollback(config, front_end, workdir, mngr, state,
                                       data.train, optimizer, shardings)
          step, train_sums, num_logged = int(state.step), None, 0
          progress.reset(total=config.num_steps)
          progress.update(step)
          continue
        state = new_state
        progress.update(1)
        scalars = step_monitors._asdict()
        train_sums = (scalars if train_sums is None else
                      jax.tree.map(jnp.add, train_sums, scalars))
        num_logged += 1
        step = done = step + 1
        if done % config.log_every_steps == 0 or done == config.num_steps:
          means = {f"train_{k}": v / num_logged for k, v in train_sums.items()}
          # The rate of the last update: the base times the schedule's factor.
          lr = (factories.learning_rate(state.opt_state)
                * factories.lr_factor(config)(done - 1))
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
              factories.model_params(config, state)))
        if is_main and evaluating:
          pll_key = jax.random.fold_in(keys["pll"], done)
          writer.write_scalars(done, evaluate(params, train_eval_v,
                                              test_eval_v, pll_key,
                                              data.test_labels[:n_eval]))
        if is_main and sampling:
          blocks, _ = monitors.sample_figure(
              config, front_end, sampler, params,
              jax.random.fold_in(keys["sample"], done), data.test, marginals)
          images.save_png(
              os.path.join(workdir, "samples", f"step_{done:07d}.png"), *blocks)
        stop = sharding_lib.any_process(preempted.is_set())
        if (done % config.checkpoint_every_steps == 0
            or done == config.num_steps or stop):
          harness.save_checkpoint(mngr, done, state)
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
      harness.finish_checkpoints(mngr)
    except CheckpointError:
      if not failed:
        raise
      logging.exception("While stopping on an error:")
    finally:
      mngr.close()
      writer.close()
  return state
