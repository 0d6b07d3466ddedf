r"""An external baseline: scikit-learn's BernoulliRBM, loaded into capsjax.

  python -m experiments.sklearn_rbm --config=experiments/configs/default.py \
      --workdir=runs/sklearn_rbm [--n_iter=60] [--learning_rate=0.1]
  python -m experiments.evaluate --workdir=runs/sklearn_rbm

Trains `sklearn.neural_network.BernoulliRBM` with as many hidden neurons as
the config's layer (num_hidden_capsules x hidden_dim) on the config's
training images, binarized the same way, with the config's batch size, then
writes a workdir that `experiments.evaluate` reads like any training run:

  config.json     the config with one upper capsule (num_hidden_capsules=1,
                  hidden_dim=n_components, num_iterations=1) and the RBM's
                  optimizer settings, plus `baseline`
  checkpoints/    a capsjax TrainState holding the converted weights
  sklearn_rbm.json  the sklearn settings, version and training wall time

With one upper capsule every coupling coefficient is softmax over one logit,
1, so the capsule layer *is* that RBM: W[i, 0] is the block of sklearn's
`components_` that connects pixel patch i to the hidden neurons, in the
order `capsjax.data.images_to_capsules` lays out pixels.

Defaults: n_iter (epochs) gives as many updates as config.num_steps;
learning_rate is config.learning_rate / (1 - config.momentum_final), the
long-run step of SGD with that momentum (sklearn has none), which for the
default configs' effective weights (weight_scale="num_hidden_capsules") is
the same step per update: 0.1 for the default config, sklearn's own default.

scikit-learn trains with persistent CD-1 (its "SML"), on one fixed
binarization of the training set (capsjax redraws it every batch), in
numpy on the host.
"""

from __future__ import annotations

import json
import math
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import orbax.checkpoint as ocp
import sklearn
from sklearn import neural_network
import threadpoolctl

import capsjax
from capsjax import data as data_lib
from experiments import metrics
from experiments import train_lib

BASELINE = "sklearn.neural_network.BernoulliRBM"
INFO_FILE = "sklearn_rbm.json"


# ---------------------------------------------------------------------------
# The conversion.


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


# ---------------------------------------------------------------------------
# Training and the workdir.


def default_learning_rate(config) -> float:
  """The long-run SGD-with-momentum step; sklearn has no momentum."""
  if config.optimizer != "sgd":
    raise train_lib.ConfigError(
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
  train_lib.validate_config(config)
  train_lib.make_workdir(workdir)
  if os.path.exists(os.path.join(workdir, "config.json")):
    raise train_lib.ConfigError(f"{workdir} already holds a run: use a new "
                                "--workdir")
  data = train_lib.load_data(config)
  x = binarized_pixels(config, data.train)
  _, _, nh, dh = train_lib.shapes(config)
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

  The state is built as the runner builds it (so `train_lib.load_run`
  restores it), with the params replaced and the step set to the number
  of updates.
  """
  optimizer = train_lib.make_optimizer(config)
  init = train_lib.initial_state(config, train_grey, optimizer)
  params = jax.tree.map(jnp.asarray, params)
  chain = (None if init.chain is None else
           train_lib.make_kernel(config).init(params, init.chain.v))
  state = capsjax.init_train_state(params, optimizer, chain=chain)
  state = state._replace(step=jnp.asarray(config.num_steps, jnp.int32))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  mngr = train_lib.checkpoint_manager(config, workdir)
  try:
    mngr.save(config.num_steps, args=ocp.args.StandardSave(state))
    mngr.wait_until_finished()
  finally:
    mngr.close()


# ---------------------------------------------------------------------------
# The command.


def _define_flags():
  """The command's flags, defined only when run as a command: the module is
  also a library (tests import it next to other commands' flags)."""
  flags.DEFINE_string("workdir", None, "Where the baseline run goes.",
                      required=True)
  config_flags.DEFINE_config_file("config", None, "The capsjax run config to "
                                  "match (data, hidden neurons, batch size).",
                                  lock_config=True)
  flags.DEFINE_integer("n_iter", None, "Epochs (default: as many updates as "
                       "config.num_steps).", lower_bound=1)
  flags.DEFINE_float("learning_rate", None, "sklearn's learning_rate "
                     "(default: config.learning_rate / (1 - "
                     "config.momentum_final)).", lower_bound=0)
  flags.DEFINE_integer("blas_threads", 1, "BLAS threads of the fit (small "
                       "products: one is fastest on a few cores).",
                       lower_bound=1)
  flags.DEFINE_bool("verbose", False, "sklearn's per-epoch pseudo-likelihood.")
  flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  f = flags.FLAGS
  try:
    info = train_baseline(f.config, f.workdir, n_iter=f.n_iter,
                          learning_rate=f.learning_rate,
                          blas_threads=f.blas_threads, verbose=f.verbose)
  except (train_lib.ConfigError, train_lib.DataError,
          data_lib.DatasetNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  print(f"{BASELINE}(n_components={info['n_components']}, learning_rate="
        f"{info['learning_rate']:g}, batch_size={info['batch_size']}, n_iter="
        f"{info['n_iter']}) trained in {info['train_time_s']:.1f} s; wrote "
        f"{f.workdir}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
