"""scikit-learn's BernoulliRBM trained on a config's data and written as a
capsjax run that `experiments.evaluate` reads (experiments/sklearn_rbm.py).

With one upper capsule every coupling coefficient is softmax over one logit,
1, so the capsule layer *is* that RBM: W[i, 0] is the block of sklearn's
`components_` that connects pixel patch i to the hidden neurons, in the
order `capsjax.data.images_to_capsules` lays out pixels.
"""

from __future__ import annotations

import json
import math
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import sklearn
from sklearn import neural_network
import threadpoolctl

import capsjax
from capsjax import data as data_lib
from experiments.runner import config as config_lib
from experiments.runner import data as data_io
from experiments.runner import factories
from experiments.runner import front_ends
from experiments.runner import harness
from experiments.runner import state as state_lib
from experiments.runner.errors import ConfigError

BASELINE = "sklearn.neural_network.BernoulliRBM"


INFO_FILE = "sklearn_rbm.json"


def pixel_index(image_size: int, patch_size: int) -> np.ndarray:
  """(Nv, Dv) flat pixel index of each visible neuron of capsjax's layout."""
  pixels = np.arange(image_size * image_size).reshape(image_size, image_size)
  return data_lib.images_to_capsules(pixels, patch_size)


def params_from_sklearn(rbm: neural_network.BernoulliRBM, patch_size: int,
                        dtype=np.float32) -> dict:
  """capsjax params of one upper capsule equal to a fitted BernoulliRBM.

  Args:
    rbm: fitted on flattened square images (row-major pixels).
    patch_size: side of the pixel-patch capsules; must tile the image.
    dtype: of the returned arrays.

  Returns:
    {"W": (Nv, 1, Dh, Dv), "a": (Nv, Dv), "b": (1, Dh)} with Dh =
    n_components, Nv = (side / patch_size)^2 and Dv = patch_size^2.
  """
  w = np.asarray(rbm.components_)  # (Dh, pixels)
  side = math.isqrt(w.shape[1])
  if side * side != w.shape[1]:
    raise ValueError(f"the RBM has {w.shape[1]} visible units: not a square "
                     "image")
  idx = pixel_index(side, patch_size)
  return {
      # (Dh, Nv, Dv) -> (Nv, Dh, Dv) -> one upper capsule.
      "W": w[:, idx].transpose(1, 0, 2)[:, None].astype(dtype),
      "a": np.asarray(rbm.intercept_visible_)[idx].astype(dtype),
      "b": np.asarray(rbm.intercept_hidden_)[None].astype(dtype),
  }


def default_learning_rate(config) -> float:
  """The long-run SGD-with-momentum step; sklearn has no momentum."""
  if config.optimizer != "sgd":
    raise ConfigError(
        f"config.optimizer = {config.optimizer!r}: no sklearn equivalent; "
        "pass --learning_rate")
  # 6 digits: 0.01 / (1 - 0.9) is 0.1, not 0.10000000000000002.
  return float(f"{config.learning_rate / (1.0 - config.momentum_final):.6g}")


def baseline_config(config, *, n_components: int, learning_rate: float,
                    num_updates: int) -> ml_collections.ConfigDict:
  """The run config a capsjax reader needs: one upper capsule, the RBM's
  optimizer (plain SGD, PCD-1, no weight decay)."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.update(num_hidden_capsules=1, hidden_dim=n_components, num_iterations=1,
             k=1, persistent=True, mh=False, reroute=True,
             through_routing=False, mean_field_negative=False,
             optimizer="sgd", learning_rate=learning_rate,
             momentum_initial=0.0, momentum_final=0.0, weight_decay=0.0,
             # 1 either way with one capsule; params hold W itself.
             weight_scale="none", num_steps=num_updates)
  out.baseline = BASELINE
  return out


def binarized_pixels(config, grey: np.ndarray) -> np.ndarray:
  """(N, 784) float32 binary images, one draw from the seed."""
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  binary = data_lib.binarize(key, grey, config.binarize)
  return np.asarray(binary, np.float32).reshape(len(grey), -1)


def train_baseline(config, workdir: str, *, n_iter: int | None = None,
                   learning_rate: float | None = None, blas_threads: int = 1,
                   verbose: bool = False) -> dict:
  """Trains the RBM on the config's data and writes the workdir; returns the
  contents of sklearn_rbm.json.

  `blas_threads` caps numpy's BLAS threads during the fit: its minibatch
  products are small, and on 2 cores two OpenBLAS threads made the default
  layer's fit 5 times slower than one (30 times for a 16-unit layer) while
  anything else ran.
  """
  config_lib.validate_config(config)
  with harness.sole_writer(workdir):
    return _fit_and_save(config, workdir, n_iter=n_iter,
                         learning_rate=learning_rate,
                         blas_threads=blas_threads, verbose=verbose)


def _fit_and_save(config, workdir: str, *, n_iter, learning_rate,
                  blas_threads, verbose) -> dict:
  if os.path.exists(os.path.join(workdir, "config.json")):
    raise ConfigError(f"{workdir} already holds a run: use a new --workdir")
  data = data_io.load_data(config)
  x = binarized_pixels(config, data.train)
  _, _, nh, dh = state_lib.shapes(config, front_ends.get(config))
  steps_per_epoch = math.ceil(len(x) / config.batch_size)
  n_iter = n_iter or max(1, round(config.num_steps / steps_per_epoch))
  learning_rate = learning_rate or default_learning_rate(config)
  rbm = neural_network.BernoulliRBM(
      n_components=nh * dh, learning_rate=learning_rate,
      batch_size=config.batch_size, n_iter=n_iter,
      random_state=config.seed, verbose=verbose)
  logging.info("Training %s(n_components=%d, learning_rate=%g, batch_size=%d,"
               " n_iter=%d) on %d images", BASELINE, nh * dh, learning_rate,
               config.batch_size, n_iter, len(x))
  with threadpoolctl.threadpool_limits(blas_threads, user_api="blas"):
    start = time.perf_counter()
    rbm.fit(x)
    train_time = time.perf_counter() - start
    pseudo_ll = float(np.mean(rbm.score_samples(x)))

  num_updates = n_iter * steps_per_epoch
  cfg = baseline_config(config, n_components=nh * dh,
                        learning_rate=learning_rate, num_updates=num_updates)
  save_run(cfg, workdir, params_from_sklearn(rbm, cfg.patch_size),
           data.train)
  info = {
      "baseline": BASELINE,
      "sklearn_version": sklearn.__version__,
      "n_components": nh * dh,
      "learning_rate": learning_rate,
      "batch_size": config.batch_size,
      "n_iter": n_iter,
      "num_updates": num_updates,
      "random_state": config.seed,
      "num_train_examples": len(x),
      "binarization": f"{config.binarize}, drawn once (seed {config.seed})",
      "train_time_s": round(train_time, 3),
      "blas_threads": blas_threads,
      "train_pseudo_log_likelihood": pseudo_ll,
      "source_config": config.to_dict(),
  }
  with open(os.path.join(workdir, INFO_FILE), "w") as f:
    json.dump(info, f, indent=2)
    f.write("\n")
  return info


def save_run(config, workdir: str, params: dict, train_grey) -> None:
  """config.json and a checkpoint of a TrainState holding `params`.

  The state is built as the runner builds it (so `front_ends.load_run`
  restores it), with the params replaced and the step set to the number
  of updates.
  """
  optimizer = factories.make_optimizer(config)
  init = state_lib.initial_state(config, front_ends.get(config), train_grey,
                                 optimizer)
  params = jax.tree.map(jnp.asarray, params)
  chain = (None if init.chain is None else
           factories.make_kernel(config).init(params, init.chain.v))
  state = capsjax.init_train_state(params, optimizer, chain=chain)
  state = state._replace(step=jnp.asarray(config.num_steps, jnp.int32))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  mngr = harness.checkpoint_manager(config, workdir)
  try:
    mngr.save(config.num_steps, args=ocp.args.StandardSave(state))
    mngr.wait_until_finished()
  finally:
    mngr.close()
