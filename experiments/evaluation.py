"""Test-set evaluation of a trained workdir (MODEL.md section 7).

`evaluate(config, step, params, data, settings)` returns a JSON-ready dict
with
  - the test log-likelihood in nats: AIS log Z from the data-marginal base
    model, then the mean of `log_prob` over the whole binarized test set;
  - the per-pixel reconstruction error of one up-down pass;
  - a linear probe (logistic regression on the hidden probabilities);
  - k-means clustering accuracy of the test hidden probabilities, clusters
    matched to labels by the Hungarian method (as stacked capsule
    autoencoders report it);
  - with a classifier (experiments/classifier.py), the Fréchet distance
    between model samples and the binarized test set on its features, and
    its floor: the distance of as many binarized training images
    (experiments/frechet.py), and the diversity of those samples: the
    classifier's class histogram, its entropy and the classes above 3%;
  - reverse AIS (RAISE) on a seeded random subset of the test set, beside
    forward AIS's mean over the same examples, flagged when they disagree
    by more than 3 nats;
and the run's metadata. `to_markdown` renders it as a table.

Every binarization and chain is drawn from `seed`, so two evaluations of the
same checkpoint with the same settings agree.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import platform
import time
from typing import NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from sklearn import cluster as sk_cluster
from sklearn import linear_model
from sklearn import pipeline
from sklearn import preprocessing

import capsjax
from capsjax import data as data_lib
from experiments import classifier as classifier_lib
from experiments import frechet
from experiments import front_ends
from experiments import train_lib

# --ais presets: (num_betas, num_runs). "full" is Salakhutdinov and Murray's
# (2008) MNIST setting; "quick" a monitor. On 2 CPU cores the default layer
# (784 -> 16x16) costs about 2.5 (unrouted) / 4 ms (routed) per beta with 32
# runs and 9 / 16 ms with 100: seconds for quick, 2 to 4 minutes for full.
AIS_PRESETS = {"quick": (1_000, 32), "full": (14_500, 100)}
# Below this ESS (as a fraction of the runs) the AIS estimate is flagged.
# With a few runs carrying all the weight, log Z is effectively one run's
# weight: `log_z_std`, computed from those same weights, understates the
# error, and AIS's log Z is biased low (Jensen), so the reported
# log-likelihood is biased *high*; a degenerate estimate looks optimistic.
# The floor keeps the check meaningful for few runs (ESS >= 1 always): below
# 2 a single run carries most of the weight.
MIN_ESS_FRACTION = capsjax.MIN_ESS_FRACTION
MIN_ESS = capsjax.MIN_ESS
# Fields of the config that name the run in the markdown header (the JSON
# keeps the whole config).
RUN_FIELDS = ("baseline", "dataset", "front_end", "autoencoder_workdir",
              "lower_workdir", "binarize", "patch_size",
              "num_hidden_capsules", "hidden_dim", "num_iterations", "k",
              "persistent", "mh", "reroute", "through_routing", "optimizer",
              "learning_rate", "num_steps", "seed")
# What the report says when no classifier was given.
# What the report says when the visible units are not pixels.
NOT_PIXEL_SPACE = (
    "not defined in pixel space: the visible units are not pixels (the "
    "autoencoder's decoder is deterministic, so the PoE defines no "
    "distribution over images; a stacked layer's pixel likelihood is a "
    "deep belief net's, only a bound); evaluate the bottom layer's workdir "
    "for its pixel log-likelihood")
FRECHET_HINT = ("pass --classifier_workdir=DIR, a classifier trained with "
                "`python -m experiments.train_classifier --workdir=DIR`")


# ---------------------------------------------------------------------------
# Batched helpers.


@functools.lru_cache(maxsize=16)
def _jitted_sample(front_end: front_ends.FrontEnd, mode: str):
  return jax.jit(lambda grey, key: front_end.sample(key, grey, mode))


def _capsule_batches(config, grey: np.ndarray, key, batch_size: int):
  """Yields binarized capsules (n, Nv, Dv) of consecutive batches of `grey`.

  Batch i is binarized with fold_in(key, i): fixed for a given key and
  batch size, and the full split never sits on the device at once.
  """
  sample = _jitted_sample(front_ends.get(config), config.binarize)
  for i, start in enumerate(range(0, len(grey), batch_size)):
    yield sample(grey[start:start + batch_size], jax.random.fold_in(key, i))


def binarize_capsules(config, grey: np.ndarray, key, batch_size: int
                      ) -> np.ndarray:
  """Binarized capsules (N, Nv, Dv) of grey images, as numpy."""
  return np.concatenate([np.asarray(v) for v in
                         _capsule_batches(config, grey, key, batch_size)])


def base_bias(config, train_grey: np.ndarray, key, batch_size: int
              ) -> jax.Array:
  """`base_rate_bias` of the binarized training set, computed by batches."""
  total = 0.0
  for v in _capsule_batches(config, train_grey, key, batch_size):
    total = total + jnp.sum(v, axis=0)
  # The mean as a batch of one: base_rate_bias averages over leading axes.
  return capsjax.base_rate_bias((total / len(train_grey))[None])


# ---------------------------------------------------------------------------
# The measures.


_ais = jax.jit(capsjax.ais, static_argnums=2,
               static_argnames=("num_betas", "num_runs"))


def run_ais(key, params, routing: capsjax.Routing, bias, *, num_betas: int,
            num_runs: int) -> dict:
  """AIS log Z with its diagnostics and the reliability flag."""
  result = _ais(key, params, routing, num_betas=num_betas,
                num_runs=num_runs, base_bias=bias)
  ess = float(result.ess)
  return {"log_z": float(result.log_z),
          "log_z_std": float(result.log_z_std),
          "log_z_base": float(result.log_z_base),
          "ess": ess,
          "acceptance_rate": float(result.acceptance_rate),
          "reliable": bool(ess >= ess_threshold(num_runs))}


ess_threshold = capsjax.ess_threshold


# Reverse AIS (RAISE, capsjax.reverse_ais): one chain per example on a random
# subset of the test set, this many examples by default (a routed layer's
# MH chains cost more per step).
REVERSE_AIS_EXAMPLES = {"unrouted": 500, "routed": 100}
# Forward and reverse AIS bracket the log-likelihood (forward overestimates
# it when log Z is underestimated, reverse is conservative): a gap wider
# than this many nats between their means over the same subset is flagged.
REVERSE_AIS_TOLERANCE = 3.0


@functools.partial(jax.jit, static_argnums=3,
                   static_argnames=("num_betas",))
def _reverse_ais_batch(key, params, v, routing, bias, *, num_betas):
  return capsjax.reverse_ais(key, params, v, routing, num_betas=num_betas,
                             base_bias=bias)


def reverse_ais_subset(key, num_test: int, num_examples: int) -> np.ndarray:
  """Sorted indices of a random subset of `num_examples` test examples
  (all of them when fewer), drawn from `key`."""
  perm = np.asarray(jax.random.permutation(key, num_test))
  return np.sort(perm[:min(num_examples, num_test)])


def reverse_ais_log_probs(key, params, v: np.ndarray,
                          routing: capsjax.Routing, bias, *, num_betas: int,
                          batch_size: int) -> tuple[np.ndarray, float]:
  """RAISE estimates of log p(v) (N,), one chain per example, and the mean
  MH acceptance. Batches of `batch_size` (the last padded with zeros,
  whose chains are dropped); batch i runs from fold_in(key, i)."""
  batch_size = min(batch_size, len(v))
  out, rates = [], []
  for i, start in enumerate(range(0, len(v), batch_size)):
    batch = v[start:start + batch_size]
    n = len(batch)
    if n < batch_size:
      batch = np.concatenate(
          [batch, np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)])
    result = _reverse_ais_batch(jax.random.fold_in(key, i), params, batch,
                                routing, bias, num_betas=num_betas)
    out.append(np.asarray(result.log_prob)[:n])
    rates.append(float(result.acceptance_rate))
  return np.concatenate(out), float(np.mean(rates))


def mean_and_sem(x) -> tuple[float, float]:
  """Mean and its standard error std(x, ddof=1) / sqrt(n) (0 for n = 1)."""
  x = np.asarray(x, np.float64)
  sem = float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
  return float(np.mean(x)), sem


def reverse_ais_report(reverse_log_p, forward_log_p, *, indices,
                       num_betas: int, acceptance_rate: float,
                       tolerance: float = REVERSE_AIS_TOLERANCE) -> dict:
  """The reverse-AIS fields of eval.json: RAISE's mean log-likelihood over
  the subset with its standard error, forward AIS's mean over the same
  examples, and whether the two disagree by more than `tolerance` nats."""
  mean, sem = mean_and_sem(reverse_log_p)
  forward_mean, forward_sem = mean_and_sem(forward_log_p)
  gap = forward_mean - mean
  return {
      "computed": True,
      "test_log_prob_mean": mean,
      "test_log_prob_sem": sem,
      "num_examples": int(len(reverse_log_p)),
      "forward_test_log_prob_mean": forward_mean,
      "forward_test_log_prob_sem": forward_sem,
      "forward_minus_reverse": gap,
      "tolerance_nats": tolerance,
      "disagree": bool(abs(gap) > tolerance),
      "num_betas": num_betas,
      "acceptance_rate": acceptance_rate,
      "subset": "a random subset of the binarized test set (seeded by "
                "--seed), one reverse chain per example",
      "subset_indices_head": [int(i) for i in np.asarray(indices)[:10]],
  }


# Per-batch kernels. Params are arguments, not closed-over constants, so one
# compilation serves any checkpoint of the same shapes (and the persistent
# compilation cache, when set, serves other processes).


@functools.partial(jax.jit, static_argnums=2)
def _log_prob_batch(params, v, routing, log_z):
  return capsjax.log_prob(params, v, routing, log_z)


@functools.partial(jax.jit, static_argnums=2)
def _reconstruction_batch(params, v, routing):
  c = capsjax.route_visible(params, v, routing)
  return jnp.mean(jnp.square(v - capsjax.reconstruct(params, v, c)),
                  axis=(-2, -1))


@functools.partial(jax.jit, static_argnums=2)
def _features_batch(params, v, routing):
  c = capsjax.route_visible(params, v, routing)
  h = capsjax.hidden_probs(params, v, c)
  return h.reshape(h.shape[0], -1)


def log_probs(params, test_v: np.ndarray, routing: capsjax.Routing, log_z,
              batch_size: int) -> np.ndarray:
  """`log p(v)` in nats of every test example, (N,)."""
  return train_lib.batched(lambda x: _log_prob_batch(params, x, routing, log_z),
                  test_v, batch_size)


def reconstruction_errors(params, v: np.ndarray, routing: capsjax.Routing,
                          batch_size: int) -> np.ndarray:
  """Per-example mean squared error of one up-down pass with c(v), (N,)."""
  return train_lib.batched(lambda x: _reconstruction_batch(params, x, routing),
                  v, batch_size)


def hidden_features(params, v: np.ndarray, routing: capsjax.Routing,
                    batch_size: int) -> np.ndarray:
  """Hidden probabilities p(h | v; c(v)), flattened to (N, Nh*Dh)."""
  return train_lib.batched(lambda x: _features_batch(params, x, routing),
                  v, batch_size)


def linear_probe_accuracy(train_x, train_y, test_x, test_y, *,
                          max_iter: int = 1_000) -> float:
  """Test accuracy of logistic regression fit on (train_x, train_y).

  The features are standardized first (still a linear probe): hidden
  probabilities near 0 or 1 otherwise slow L-BFGS down.
  """
  probe = pipeline.make_pipeline(
      preprocessing.StandardScaler(),
      linear_model.LogisticRegression(max_iter=max_iter))
  probe.fit(train_x, train_y)
  return float(probe.score(test_x, test_y))


def clustering_accuracy(labels, clusters) -> float:
  """Accuracy of the best one-to-one map from clusters to labels.

  The Hungarian method on the cluster-label contingency table; with more
  clusters than labels the unmatched clusters count as errors.
  """
  labels, clusters = np.asarray(labels), np.asarray(clusters)
  if labels.shape != clusters.shape or labels.ndim != 1:
    raise ValueError(f"labels {labels.shape} and clusters {clusters.shape} "
                     "must be equal-length vectors")
  _, label_ids = np.unique(labels, return_inverse=True)
  _, cluster_ids = np.unique(clusters, return_inverse=True)
  counts = np.zeros((cluster_ids.max() + 1, label_ids.max() + 1), np.int64)
  np.add.at(counts, (cluster_ids, label_ids), 1)
  rows, cols = scipy.optimize.linear_sum_assignment(counts, maximize=True)
  return float(counts[rows, cols].sum() / len(labels))


def kmeans_accuracy(features, labels, *, num_clusters: int = 10,
                    seed: int = 0) -> float:
  """k-means on `features`, scored by `clustering_accuracy`."""
  kmeans = sk_cluster.KMeans(n_clusters=num_clusters, random_state=seed,
                             n_init=10)
  return clustering_accuracy(labels, kmeans.fit_predict(features))


def _family(dataset: str) -> str:
  return dataset.removesuffix("_small")  # mnist_small is MNIST digits


def frechet_measures(key, config, params, train_grey: np.ndarray,
                     test_v: np.ndarray, classifier: classifier_lib.Loaded,
                     settings: "Settings",
                     timed=lambda name, fn, *a, **k: fn(*a, **k),
                     test_grey: np.ndarray | None = None) -> dict:
  """The Fréchet distance of model samples to the test set, and its floor.

  Model samples: `settings.frechet_samples` binary states of chains started
  at the data marginals after `settings.frechet_steps` steps (the model is
  a distribution over binary images and the test set is binarized, so like
  is compared with like). Floor: as many binarized training images (a
  random subset when fewer), what a model that had learned the data
  exactly would score with that many samples; the estimate is biased
  upwards for finite counts, so the floor is not 0. Both are measured
  against the same binarized test set `test_v` (M, Nv, Dv).

  Front ends other than pixel patches (`test_grey` needed): the samples
  are decoded to grey images and compared with the grey test images; see
  `_decoded_frechet_measures`.
  """
  sample_key, subset_key, binarize_key = jax.random.split(key, 3)
  n = settings.frechet_samples
  front_end = front_ends.get(config)
  if not front_end.pixel_space:
    return _decoded_frechet_measures(
        sample_key, subset_key, binarize_key, config, params, train_grey,
        test_grey, classifier, settings, timed)
  to_images = functools.partial(data_lib.capsules_to_images,
                                patch=config.patch_size)
  samples, acceptance, subset, train_v = _samples_and_floor_subset(
      sample_key, subset_key, binarize_key, config, params, train_grey,
      settings, timed)
  n_floor = len(subset)

  def stats(v):
    return frechet.feature_stats(classifier.features(to_images(v)))

  test_stats = timed("frechet_features_test", stats, test_v)
  sample_features = timed("frechet_features_samples", classifier.features,
                          to_images(samples))
  model_stats = frechet.feature_stats(sample_features)
  floor_stats = timed("frechet_features_train", stats, train_v)
  info = classifier.info
  if _family(info["config"]["dataset"]) != _family(config.dataset):
    logging.warning("The classifier was trained on %s, the run on %s: its "
                    "features may not fit these images",
                    info["config"]["dataset"], config.dataset)
  return {
      "computed": True,
      "distance": frechet.frechet_distance(*model_stats, *test_stats),
      "floor_train_vs_test": frechet.frechet_distance(*floor_stats,
                                                      *test_stats),
      "num_samples": n,
      "num_floor_train_examples": n_floor,
      "num_test_examples": len(test_v),
      "sample_steps": settings.frechet_steps,
      "mh": settings.frechet_mh,
      "sample_acceptance_rate": acceptance,
      "samples": "binary states after the last step of chains started at "
                 "Bernoulli(data marginals)",
      "diversity": sample_diversity(classifier, sample_features),
      "classifier": _classifier_summary(classifier.info),
  }


# Sample diversity: a class counts as present when more than this fraction
# of the samples fall in it.
DIVERSITY_THRESHOLD = 0.03


def class_diversity(histogram, threshold: float = DIVERSITY_THRESHOLD
                    ) -> dict:
  """Entropy in nats of a class histogram (counts), and the number of
  classes holding more than `threshold` of it. Uniform over 10 classes:
  log 10 = 2.303 nats and 10 classes; one class: 0 and 1."""
  counts = np.asarray(histogram, np.float64)
  if counts.ndim != 1 or counts.size == 0 or np.any(counts < 0) or (
      counts.sum() <= 0):
    raise ValueError(f"histogram must be a non-empty vector of counts, not "
                     f"all zero; got {histogram!r}")
  p = counts / counts.sum()
  nonzero = p[p > 0]
  return {"entropy_nats": float(-np.sum(nonzero * np.log(nonzero))),
          "max_entropy_nats": float(np.log(len(p))),
          "classes_above_threshold": int(np.sum(p > threshold)),
          "threshold": threshold}


def classify(classifier: classifier_lib.Loaded, features) -> np.ndarray:
  """Predicted classes (N,) from the classifier's penultimate `features`
  (N, F) (`classifier.features(images)`): argmax of its logits."""
  logits = classifier.model.head(jnp.asarray(features, jnp.float32))
  return np.asarray(jnp.argmax(logits, axis=-1))


def sample_diversity(classifier: classifier_lib.Loaded, features) -> dict:
  """The class histogram of samples (by their classifier `features`), its
  entropy and the classes above `DIVERSITY_THRESHOLD` (`class_diversity`).
  A `Loaded` without a network (features alone) cannot classify: not
  computed."""
  if getattr(classifier.model, "head", None) is None:
    return {"computed": False,
            "note": "the feature classifier has no class head"}
  histogram = np.bincount(classify(classifier, features),
                          minlength=classifier_lib.NUM_CLASSES)
  return {"computed": True,
          "class_histogram": [int(c) for c in histogram],
          **class_diversity(histogram)}


def _classifier_summary(info: dict) -> dict:
  """What the Fréchet results record of the feature classifier."""
  return {
      "workdir": info.get("workdir"),
      "dataset": info["config"]["dataset"],
      "num_features": info["config"]["num_features"],
      "test_accuracy": info.get("test_accuracy"),
      "test_accuracy_binarized": info.get("test_accuracy_binarized"),
  }


def _samples_and_floor_subset(sample_key, subset_key, binarize_key, config,
                              params, train_grey, settings, timed):
  """Model samples for the Fréchet distance, and the floor's random subset
  of training images (indices) with its binarized visible capsules."""
  n, bs = settings.frechet_samples, settings.batch_size
  marginals = jnp.asarray(train_lib.grey_marginals(config, train_grey))
  samples, acceptance = timed(
      "frechet_sampling", frechet.model_samples, sample_key, params,
      marginals, num_samples=n, num_steps=settings.frechet_steps,
      kernel=train_lib.sampling_kernel(config, settings.frechet_mh),
      batch_size=bs)
  # A random subset: the embedded subset's files are ordered.
  subset = np.sort(np.asarray(jax.random.permutation(
      subset_key, len(train_grey)))[:min(n, len(train_grey))])
  train_v = binarize_capsules(config, train_grey[subset], binarize_key, bs)
  return samples, acceptance, subset, train_v


def _decoded_frechet_measures(sample_key, subset_key, binarize_key, config,
                              params, train_grey, test_grey, classifier,
                              settings, timed) -> dict:
  """The Fréchet distance of decoded samples to the grey test images.

  The samples are binary visible states (codes, or hidden units of the
  layer below) decoded by the front end into grey images, so they are
  compared with grey test images. Two floors: grey training images (the
  data itself), and the front end's floor: binarized visible capsules of
  those training images, decoded (what a PoE that had learned the
  distribution of binarized codes exactly would score).
  """
  if test_grey is None:
    raise ValueError("a non-pixel front end needs the grey test images")
  n, bs = settings.frechet_samples, settings.batch_size
  front_end = front_ends.get(config)
  samples, acceptance, subset, train_v = _samples_and_floor_subset(
      sample_key, subset_key, binarize_key, config, params, train_grey,
      settings, timed)
  n_floor = len(subset)

  def stats(grey):
    return frechet.feature_stats(classifier.features(grey))

  decode = functools.partial(front_ends.to_numpy_images, front_end,
                             batch_size=bs)
  test_stats = timed("frechet_features_test", stats, test_grey)
  sample_features = timed("frechet_features_samples", classifier.features,
                          decode(samples))
  model_stats = frechet.feature_stats(sample_features)
  floor_stats = timed("frechet_features_train", stats, train_grey[subset])
  fe_stats = timed("frechet_features_front_end", stats, decode(train_v))
  return {
      "computed": True,
      "distance": frechet.frechet_distance(*model_stats, *test_stats),
      "floor_train_vs_test": frechet.frechet_distance(*floor_stats,
                                                      *test_stats),
      "floor_front_end": frechet.frechet_distance(*fe_stats, *test_stats),
      "num_samples": n,
      "num_floor_train_examples": n_floor,
      "num_test_examples": len(test_grey),
      "sample_steps": settings.frechet_steps,
      "mh": settings.frechet_mh,
      "sample_acceptance_rate": acceptance,
      "samples": "binary states after the last step of chains started at "
                 "Bernoulli(data marginals), decoded to grey images by the "
                 f"front end ({front_end.description}); compared with grey "
                 "test images",
      "diversity": sample_diversity(classifier, sample_features),
      "classifier": _classifier_summary(classifier.info),
  }


# ---------------------------------------------------------------------------
# The whole evaluation.


class Settings(NamedTuple):
  ais: str = "quick"               # a key of AIS_PRESETS
  num_betas: int | None = None     # overrides the preset
  num_runs: int | None = None      # overrides the preset
  probe_train_examples: int = 10_000  # 0: the whole train split
  num_clusters: int = 10
  batch_size: int = 1_000
  seed: int = 0
  frechet_samples: int = 10_000  # model samples (and floor train images)
  frechet_steps: int = 1_000     # Gibbs steps per chain
  frechet_mh: bool = False       # MH-corrected chains
  # Test examples of reverse AIS; None: REVERSE_AIS_EXAMPLES by routing;
  # 0: skip it.
  reverse_ais_examples: int | None = None


def ais_size(settings: Settings) -> tuple[int, int]:
  if settings.ais not in AIS_PRESETS:
    raise ValueError(f"ais must be one of {sorted(AIS_PRESETS)}; got "
                     f"{settings.ais!r}")
  betas, runs = AIS_PRESETS[settings.ais]
  return settings.num_betas or betas, settings.num_runs or runs


def reverse_ais_size(settings: Settings, routing: capsjax.Routing) -> int:
  if settings.reverse_ais_examples is not None:
    if settings.reverse_ais_examples < 0:
      raise ValueError("reverse_ais_examples must be >= 0; got "
                       f"{settings.reverse_ais_examples}")
    return settings.reverse_ais_examples
  return REVERSE_AIS_EXAMPLES["routed" if routing.routed else "unrouted"]


def reverse_ais_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(subset key, chains key) of reverse AIS: a stream of its own, so the
  other measures keep their keys."""
  subset_key, chain_key = jax.random.split(
      jax.random.fold_in(jax.random.key(seed), 5))
  return subset_key, chain_key


def evaluation_keys(seed: int) -> dict:
  """The evaluation's random streams: base model, test binarization, probe
  binarization, AIS (ais_reliability reuses the first two)."""
  return dict(zip(("base", "test", "probe", "ais"),
                  jax.random.split(jax.random.key(seed), 4)))


def evaluate(config, step: int, params, data: train_lib.Data,
             settings: Settings = Settings(),
             classifier: classifier_lib.Loaded | None = None) -> dict:
  """Every measure of the module docstring, with metadata and wall times.

  The Fréchet distance needs `classifier` (`experiments.classifier.load`);
  without it the report says it was not computed.
  """
  num_betas, num_runs = ais_size(settings)
  r = train_lib.make_routing(config)
  bs = settings.batch_size
  keys = evaluation_keys(settings.seed)
  times = {}

  def timed(name, fn, *args, **kwargs):
    logging.info("evaluate: %s ...", name)  # progress: AIS can take minutes
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(out)
    times[name] = time.perf_counter() - start
    logging.info("evaluate: %s done in %.1f s", name, times[name])
    return out

  front_end = front_ends.get(config)
  test_v = timed("binarize_test", binarize_capsules, config, data.test,
                 keys["test"], bs)
  n_test = len(test_v)
  if front_end.pixel_space:
    bias = timed("base_rate", base_bias, config, data.train, keys["base"], bs)
    logging.info("AIS with %d betas x %d runs", num_betas, num_runs)
    ais = timed("ais", run_ais, keys["ais"], params, r, bias,
                num_betas=num_betas, num_runs=num_runs)
    log_p = timed("log_prob", log_probs, params, test_v, r, ais["log_z"], bs)
    log_likelihood = {
        "test_log_prob_mean": float(np.mean(log_p)),
        # Spread over test examples (sem); log Z's own error is log_z_std.
        "test_log_prob_sem": float(np.std(log_p, ddof=1) / np.sqrt(n_test)),
        **ais,
    }
    n_reverse = reverse_ais_size(settings, r)
    if n_reverse:
      subset_key, chain_key = reverse_ais_keys(settings.seed)
      subset = reverse_ais_subset(subset_key, n_test, n_reverse)
      logging.info("Reverse AIS with %d betas on %d test examples",
                   num_betas, len(subset))
      reverse_log_p, reverse_rate = timed(
          "reverse_ais", reverse_ais_log_probs, chain_key, params,
          test_v[subset], r, bias, num_betas=num_betas, batch_size=bs)
      reverse = reverse_ais_report(reverse_log_p, log_p[subset],
                                   indices=subset, num_betas=num_betas,
                                   acceptance_rate=reverse_rate)
      if reverse["disagree"]:
        logging.warning(
            "Forward AIS (%.2f) and reverse AIS (%.2f) disagree by %.2f nats "
            "on the same %d test examples (more than %.0f): the forward "
            "estimate is unreliable; anneal longer (--ais=full or "
            "--num_betas)", reverse["forward_test_log_prob_mean"],
            reverse["test_log_prob_mean"], reverse["forward_minus_reverse"],
            reverse["num_examples"], REVERSE_AIS_TOLERANCE)
    else:
      reverse = {"computed": False, "note": "--reverse_ais_examples=0"}
    log_likelihood["reverse_ais"] = reverse
  else:
    log_likelihood = {"computed": False, "note": NOT_PIXEL_SPACE}
  recon = timed("reconstruction", reconstruction_errors, params, test_v, r, bs)

  n_probe = settings.probe_train_examples or len(data.train)
  n_probe = min(n_probe, len(data.train))
  probe_v = timed("binarize_probe", binarize_capsules, config,
                  data.train[:n_probe], keys["probe"], bs)
  train_x = timed("features_train", hidden_features, params, probe_v, r, bs)
  test_x = timed("features_test", hidden_features, params, test_v, r, bs)
  probe = timed("probe", linear_probe_accuracy, train_x,
                data.train_labels[:n_probe], test_x, data.test_labels)
  clustering = timed("clustering", kmeans_accuracy, test_x, data.test_labels,
                     num_clusters=settings.num_clusters, seed=settings.seed)
  if classifier is None:
    fd = {"computed": False, "note": FRECHET_HINT}
  else:
    # Its own stream, so the other measures keep their keys.
    fd_key = jax.random.fold_in(jax.random.key(settings.seed), 4)
    fd = frechet_measures(fd_key, config, params, data.train, test_v,
                          classifier, settings, timed, test_grey=data.test)

  return {
      "step": step,
      "num_test_examples": n_test,
      "log_likelihood": log_likelihood,
      "reconstruction_error": float(np.mean(recon)),
      "linear_probe_accuracy": probe,
      "clustering_accuracy": clustering,
      "frechet": fd,
      "settings": {"ais": settings.ais, "num_betas": num_betas,
                   "num_runs": num_runs, "beta_schedule": "piecewise",
                   "min_ess": ess_threshold(num_runs),
                   "reverse_ais_examples": (
                       log_likelihood.get("reverse_ais", {}).get(
                           "num_examples", 0)),
                   "base_model": "data marginals of the binarized train split",
                   "probe_train_examples": n_probe,
                   "num_clusters": settings.num_clusters,
                   "batch_size": bs, "seed": settings.seed,
                   "visible_units": front_end.description},
      "config": config.to_dict(),
      "wall_time_s": {k: round(v, 3) for k, v in times.items()},
      "platform": {"jax_backend": jax.default_backend(),
                   "devices": [str(d) for d in jax.devices()],
                   "jax_version": jax.__version__,
                   "machine": platform.machine()},
  }


# ---------------------------------------------------------------------------
# Output.


def _log_likelihood_cell(ll: dict) -> str:
  if not ll.get("computed", True):
    return ll["note"]
  if not ll["reliable"]:
    return f"degenerate (ESS {ll['ess']:.1f})"
  err = float(np.hypot(ll["test_log_prob_sem"], ll["log_z_std"]))
  return f"{ll['test_log_prob_mean']:.2f} ± {err:.2f}"


def _log_z_cell(ll: dict, num_runs: int) -> str:
  if not ll.get("computed", True):
    return "not computed"
  diagnostics = (f"ESS {ll['ess']:.1f} of {num_runs}, acceptance "
                 f"{ll['acceptance_rate']:.3f}")
  if not ll["reliable"]:
    return f"withheld ({diagnostics}; the number is in eval.json)"
  return f"{ll['log_z']:.2f} ± {ll['log_z_std']:.2f} ({diagnostics})"


def _reverse_ais_cell(rev: dict, forward_reliable: bool) -> str:
  if not rev.get("computed"):
    return "not computed (" + rev.get("note", "") + ")"
  cell = (f"{rev['test_log_prob_mean']:.2f} ± {rev['test_log_prob_sem']:.2f} "
          f"on {rev['num_examples']} test examples")
  if not forward_reliable:  # a degenerate forward estimate is not printed
    return cell + " (forward AIS degenerate: not compared)"
  cell += (f" (forward AIS on the same examples: "
           f"{rev['forward_test_log_prob_mean']:.2f})")
  if rev["disagree"]:
    cell += (f" **WARNING: forward and reverse differ by "
             f"{rev['forward_minus_reverse']:.2f} nats (> "
             f"{rev['tolerance_nats']:.0f}): forward AIS is not to be "
             "trusted**")
  return cell


def _frechet_cell(fd: dict | None) -> str:
  if not fd or not fd.get("computed"):
    return "not computed (" + (fd or {}).get("note", FRECHET_HINT) + ")"
  if "floor_front_end" in fd:
    return (f"{fd['distance']:.2f} (floors: grey train vs test "
            f"{fd['floor_train_vs_test']:.2f}; decoded binarized train "
            f"capsules vs test {fd['floor_front_end']:.2f})")
  return (f"{fd['distance']:.2f} (floor, binarized train vs test: "
          f"{fd['floor_train_vs_test']:.2f})")


def _diversity_cell(fd: dict | None) -> str:
  if not fd or not fd.get("computed") or "diversity" not in fd:
    return "not computed (needs the Fréchet classifier: " + FRECHET_HINT + ")"
  d = fd["diversity"]
  if not d.get("computed"):
    return "not computed (" + d["note"] + ")"
  return (f"entropy {d['entropy_nats']:.3f} nats (uniform "
          f"{d['max_entropy_nats']:.3f}), {d['classes_above_threshold']} "
          f"classes above {100 * d['threshold']:.0f}%; histogram "
          f"{d['class_histogram']}")


def _frechet_notes(fd: dict | None) -> list[str]:
  if not fd or not fd.get("computed"):
    return []
  clf = fd["classifier"]
  accuracy = clf.get("test_accuracy")
  accuracy = "" if accuracy is None else f", test accuracy {accuracy:.4f}"
  mh = ", MH-corrected" if fd["mh"] else ""
  if "floor_front_end" in fd:
    return [
        f"Fréchet distance: {fd['num_samples']} model samples "
        f"({fd['samples']}; {fd['sample_steps']} Gibbs steps{mh}); floors: "
        f"{fd['num_floor_train_examples']} grey training images, and the "
        "same images' binarized visible capsules decoded; each against the "
        f"{fd['num_test_examples']} grey test images; features of the "
        f"{clf['num_features']}-unit penultimate layer of the classifier in "
        f"{clf['workdir']} (trained on {clf['dataset']}{accuracy}).", ""]
  return [
      f"Fréchet distance: {fd['num_samples']} model samples ({fd['samples']}; "
      f"{fd['sample_steps']} Gibbs steps{mh}) and, for the floor, "
      f"{fd['num_floor_train_examples']} binarized training images, each "
      f"against the {fd['num_test_examples']} binarized test images; features "
      f"of the {clf['num_features']}-unit penultimate layer of the classifier "
      f"in {clf['workdir']} (trained on {clf['dataset']}{accuracy}).", ""]


def to_markdown(results: dict, title: str = "Evaluation") -> str:
  """The results as a markdown table, with settings, run and timing notes."""
  ll, s, cfg = results["log_likelihood"], results["settings"], results["config"]
  rows = [
      ("test log-likelihood (nats)", _log_likelihood_cell(ll)),
      ("AIS log Z", _log_z_cell(ll, s["num_runs"])),
      *([("reverse AIS test log-likelihood (nats; conservative)",
          _reverse_ais_cell(ll["reverse_ais"], ll["reliable"]))]
        if "reverse_ais" in ll else []),
      ("test reconstruction error (per-pixel MSE)"
       if ll.get("computed", True) else
       "test reconstruction error (MSE per visible unit: "
       + results["settings"].get("visible_units", "?") + ")",
       f"{results['reconstruction_error']:.4f}"),
      ("linear probe test accuracy",
       f"{results['linear_probe_accuracy']:.4f} "
       f"({s['probe_train_examples']} train examples)"),
      (f"k-means clustering accuracy ({s['num_clusters']} clusters, Hungarian)",
       f"{results['clustering_accuracy']:.4f}"),
      ("Fréchet distance, samples vs test (classifier features)",
       _frechet_cell(results.get("frechet"))),
      ("sample diversity (classifier's classes of the Fréchet samples)",
       _diversity_cell(results.get("frechet"))),
  ]
  run = ", ".join(f"{k}={cfg[k]}" for k in RUN_FIELDS if k in cfg)
  times = ", ".join(f"{k} {v:.1f} s" for k, v in results["wall_time_s"].items())
  plat = results["platform"]
  lines = [
      f"# {title} (step {results['step']})", "",
      "| measure | value |", "| --- | --- |",
      *(f"| {name} | {value} |" for name, value in rows), "",
      f"Test set: {results['num_test_examples']} examples, binarized once "
      f"(seed {s['seed']}). The log-likelihood's ± combines the spread over "
      "test examples and log Z's delta-method error.", "",
      f"AIS: {s['ais']}, {s['num_betas']} betas x {s['num_runs']} runs, "
      f"{s['beta_schedule']} schedule, base model: {s['base_model']}; "
      f"flagged degenerate below ESS {s['min_ess']:.1f}.", "",
      *([f"Reverse AIS (RAISE, Burda et al. 2015): one chain per example on "
         f"a seeded random subset of {ll['reverse_ais']['num_examples']} "
         f"test examples, {ll['reverse_ais']['num_betas']} betas, the same "
         "base model and schedule; ± is the standard error over examples. "
         "It is biased low, forward AIS tends high: a gap over "
         f"{ll['reverse_ais']['tolerance_nats']:.0f} nats is flagged.", ""]
        if ll.get("reverse_ais", {}).get("computed") else []),
      *_frechet_notes(results.get("frechet")),
      f"Run: {run}.", "",
      f"Wall time: {times}.", "",
      f"Device: {plat['jax_backend']} ({', '.join(plat['devices'])}), "
      f"jax {plat['jax_version']}.", "",
  ]
  return "\n".join(lines)


def write(results: dict, out_dir: str, title: str = "Evaluation"
          ) -> tuple[str, str]:
  """Writes eval.json and eval.md under `out_dir`; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, "eval.json")
  md_path = os.path.join(out_dir, "eval.md")
  with open(json_path, "w") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
  with open(md_path, "w") as f:
    f.write(to_markdown(results, title))
  return json_path, md_path


# ---------------------------------------------------------------------------
# AIS reliability over seeds and schedules (experiments/ais_reliability.py).
# The estimate behind any AIS number is unbiased in Z, so by Markov's
# inequality P(log Z_est > log Z + t) <= exp(-t): with n estimates the mean
# test log-likelihood is at most min over them + log(n / 0.05) with
# probability >= 95%, however degenerate their weights.


def ais_estimates(params, routing: capsjax.Routing, test_v: np.ndarray, bias,
                  *, schedules, num_betas, seeds: int, num_runs: int,
                  batch_size: int = 1_000) -> list[dict]:
  """One AIS estimate (and test log-likelihood) per schedule x length x seed."""
  rows = []
  for kind, n, seed in itertools.product(schedules, num_betas, range(seeds)):
    logging.info("AIS %s x %d betas, seed %d ...", kind, n, seed)
    result = _ais(jax.random.key(seed), params, routing, num_betas=n,
                  num_runs=num_runs, base_bias=bias,
                  betas=capsjax.beta_schedule(n, kind))
    ess = float(result.ess)
    log_z = float(result.log_z)
    reliable = ess >= capsjax.ess_threshold(num_runs)
    log_p = log_probs(params, test_v, routing, log_z, batch_size)
    rows.append({"schedule": kind, "num_betas": n, "seed": seed,
                 "num_runs": num_runs, "log_z": log_z,
                 "log_z_std": float(result.log_z_std), "ess": ess,
                 "acceptance_rate": float(result.acceptance_rate),
                 "reliable": bool(reliable),
                 "test_log_prob_mean": float(np.mean(log_p))})
  return rows


# The confidence of `ais_summary`'s upper bound.
BOUND_FAILURE_PROBABILITY = 0.05


def ais_summary(rows: list[dict]) -> list[dict]:
  """Per schedule and length: the reliable seeds' mean and spread, and the
  95% upper bound on the test log-likelihood (module docstring)."""
  out = []
  for key, group in itertools.groupby(
      rows, key=lambda r: (r["schedule"], r["num_betas"])):
    group = list(group)
    good = [r["test_log_prob_mean"] for r in group if r["reliable"]]
    out.append({
        "schedule": key[0], "num_betas": key[1], "seeds": len(group),
        "reliable_seeds": len(good),
        "test_log_prob_mean": float(np.mean(good)) if good else None,
        "test_log_prob_spread": (float(np.std(good, ddof=1))
                                 if len(good) > 1 else None),
        "upper_bound_95": (
            min(r["test_log_prob_mean"] for r in group)
            + float(np.log(len(group) / BOUND_FAILURE_PROBABILITY))),
        "min_ess": min(r["ess"] for r in group),
        "acceptance_rate": float(np.mean([r["acceptance_rate"]
                                          for r in group])),
    })
  return out


def ais_markdown(rows: list[dict], title: str) -> str:
  lines = [f"# {title}", "",
           "| schedule | betas | seeds reliable | test log p (nats), mean ± "
           "spread over reliable seeds | 95% upper bound | min ESS | "
           "MH acceptance |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for s in ais_summary(rows):
    if s["test_log_prob_mean"] is None:
      ll = "degenerate: not quoted"
    elif s["test_log_prob_spread"] is None:
      ll = f"{s['test_log_prob_mean']:.2f} (one reliable seed)"
    else:
      ll = f"{s['test_log_prob_mean']:.2f} ± {s['test_log_prob_spread']:.2f}"
    lines.append(f"| {s['schedule']} | {s['num_betas']} | "
                 f"{s['reliable_seeds']} / {s['seeds']} | {ll} | "
                 f"<= {s['upper_bound_95']:.1f} | {s['min_ess']:.1f} | "
                 f"{s['acceptance_rate']:.3f} |")
  return "\n".join(lines) + "\n"
