"""Fréchet distance on classifier features, and binary samples to feed it.

The Fréchet (2-Wasserstein) distance between Gaussians fit to two feature
sets (Heusel et al. 2017's FID, with a small MNIST classifier,
models/classifier.py, in place of Inception):

  d^2 = |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2).

`model_samples` draws binary samples from Gibbs chains started at the data
marginals; `frechet_measures` compares their features
with the binarized test set's, next to the floor.
"""

from __future__ import annotations

import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import capsjax
from capsjax import data as data_lib
from experiments.runner import factories
from experiments.runner import visible
from experiments.runner.evaluation import capsules
from experiments.runner.evaluation import diversity
from experiments.runner.models import classifier as classifier_lib


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean (F,) and unbiased covariance (F, F) of (N, F) features, float64."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f"features must be (N >= 2, F); got {x.shape}")
  return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
  """Symmetric square root of a covariance, negative rounding clipped."""
  w, u = np.linalg.eigh(c)
  return (u * np.sqrt(np.clip(w, 0.0, None))) @ u.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """The Fréchet distance (squared, as FID) between N(mu1, cov1), N(mu2, cov2).

  tr((C1 C2)^1/2) is computed as the sum of the square roots of the
  eigenvalues of the symmetric PSD matrix C1^1/2 C2 C1^1/2 (same spectrum as
  C1 C2): real by construction, exact for singular covariances (dead ReLU
  features), with no complex square root whose small imaginary parts would
  have to be dropped.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  if mu1.shape != mu2.shape or cov1.shape != cov2.shape or (
      cov1.shape != mu1.shape * 2):
    raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; "
                     f"cov {cov1.shape}, {cov2.shape}")
  s1 = _sqrt_psd(cov1)
  m = s1 @ cov2 @ s1
  eig = np.linalg.eigvalsh((m + m.T) / 2)  # symmetrize the rounding
  tr_sqrt = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  d = np.sum(np.square(mu1 - mu2)) + np.trace(cov1) + np.trace(cov2) - (
      2 * tr_sqrt)
  return float(max(d, 0.0))  # >= 0 in exact arithmetic


def features_distance(features1, features2) -> float:
  """`frechet_distance` of the Gaussians fit to two (N, F) feature sets."""
  return frechet_distance(*feature_stats(features1),
                          *feature_stats(features2))


@functools.partial(jax.jit, static_argnames=("num_chains", "num_steps",
                                             "kernel"))
def _sample_chunk(params, key, marginals, *, num_chains: int, num_steps: int,
                  kernel: capsjax.Kernel):
  """Binary states (num_chains, Nv, Dv) after `num_steps` steps, acceptance."""
  state, info = capsjax.sample_from_marginals(
      key, kernel, params, marginals, num_chains=num_chains,
      num_steps=num_steps)
  return state.v, jnp.mean(info.acceptance_rate)


def model_samples(key, params, marginals, *, num_samples: int,
                  num_steps: int, kernel: capsjax.Kernel,
                  batch_size: int = 1_000) -> tuple[np.ndarray, float]:
  """`num_samples` binary visible states (N, Nv, Dv) and the mean acceptance.

  As `monitors.make_sampler`: chains start at Bernoulli(data marginals) and
  run `num_steps` steps of `kernel` (`factories.sampling_kernel`: Gibbs
  with routing, or MH-corrected). They run in chunks of `batch_size`
  chains (chunk i from fold_in(key, i)), so memory stays at one chunk's
  votes; one compilation serves every chunk.
  """
  batch_size = min(batch_size, num_samples)
  chunks, rates = [], []
  for i, start in enumerate(range(0, num_samples, batch_size)):
    v, rate = _sample_chunk(params, jax.random.fold_in(key, i), marginals,
                            num_chains=batch_size, num_steps=num_steps,
                            kernel=kernel)
    chunks.append(np.asarray(v)[:num_samples - start])
    rates.append(float(rate))
  return np.concatenate(chunks), float(np.mean(rates))


def _family(dataset: str) -> str:
  return dataset.removesuffix("_small")  # mnist_small is MNIST digits


def frechet_measures(key, config, front_end: visible.FrontEnd, params,
                     train_grey: np.ndarray, test_v: np.ndarray,
                     classifier: classifier_lib.Loaded, settings,
                     timed=lambda name, fn, *a, **k: fn(*a, **k),
                     test_grey: np.ndarray | None = None) -> dict:
  """The Fréchet distance of model samples to the test set, and its floor.

  `settings`: the evaluation's (suite.Settings). Model samples:
  `settings.frechet_samples` binary states of chains started
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
  if not front_end.pixel_space:
    return _decoded_frechet_measures(
        sample_key, subset_key, binarize_key, config, front_end, params,
        train_grey,
        test_grey, classifier, settings, timed)
  to_images = functools.partial(data_lib.capsules_to_images,
                                patch=config.patch_size)
  samples, acceptance, subset, train_v = _samples_and_floor_subset(
      sample_key, subset_key, binarize_key, config, front_end, params,
      train_grey, settings, timed)
  n_floor = len(subset)

  def stats(v):
    return feature_stats(classifier.features(to_images(v)))

  test_stats = timed("frechet_features_test", stats, test_v)
  sample_features = timed("frechet_features_samples", classifier.features,
                          to_images(samples))
  model_stats = feature_stats(sample_features)
  floor_stats = timed("frechet_features_train", stats, train_v)
  info = classifier.info
  if _family(info["config"]["dataset"]) != _family(config.dataset):
    logging.warning("The classifier was trained on %s, the run on %s: its "
                    "features may not fit these images",
                    info["config"]["dataset"], config.dataset)
  return {
      "computed": True,
      "distance": frechet_distance(*model_stats, *test_stats),
      "floor_train_vs_test": frechet_distance(*floor_stats,
                                                      *test_stats),
      "num_samples": n,
      "num_floor_train_examples": n_floor,
      "num_test_examples": len(test_v),
      "sample_steps": settings.frechet_steps,
      "mh": settings.frechet_mh,
      "sample_acceptance_rate": acceptance,
      "samples": "binary states after the last step of chains started at "
                 "Bernoulli(data marginals)",
      "diversity": diversity.sample_diversity(classifier,
                                              sample_features),
      "classifier": _classifier_summary(classifier.info),
  }


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
                              front_end, params, train_grey, settings, timed):
  """Model samples for the Fréchet distance, and the floor's random subset
  of training images (indices) with its binarized visible capsules."""
  n, bs = settings.frechet_samples, settings.batch_size
  marginals = jnp.asarray(visible.marginals(front_end, train_grey))
  samples, acceptance = timed(
      "frechet_sampling", model_samples, sample_key, params,
      marginals, num_samples=n, num_steps=settings.frechet_steps,
      kernel=factories.sampling_kernel(config, settings.frechet_mh),
      batch_size=bs)
  # A random subset: the embedded subset's files are ordered.
  subset = np.sort(np.asarray(jax.random.permutation(
      subset_key, len(train_grey)))[:min(n, len(train_grey))])
  train_v = capsules.binarize_capsules(front_end, config.binarize,
                                       train_grey[subset], binarize_key, bs)
  return samples, acceptance, subset, train_v


def _decoded_frechet_measures(sample_key, subset_key, binarize_key, config,
                              front_end, params, train_grey, test_grey,
                              classifier, settings, timed) -> dict:
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
  samples, acceptance, subset, train_v = _samples_and_floor_subset(
      sample_key, subset_key, binarize_key, config, front_end, params,
      train_grey, settings, timed)
  n_floor = len(subset)

  def stats(grey):
    return feature_stats(classifier.features(grey))

  decode = functools.partial(visible.to_numpy_images, front_end,
                             batch_size=bs)
  test_stats = timed("frechet_features_test", stats, test_grey)
  sample_features = timed("frechet_features_samples", classifier.features,
                          decode(samples))
  model_stats = feature_stats(sample_features)
  floor_stats = timed("frechet_features_train", stats, train_grey[subset])
  fe_stats = timed("frechet_features_front_end", stats, decode(train_v))
  return {
      "computed": True,
      "distance": frechet_distance(*model_stats, *test_stats),
      "floor_train_vs_test": frechet_distance(*floor_stats,
                                                      *test_stats),
      "floor_front_end": frechet_distance(*fe_stats, *test_stats),
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
      "diversity": diversity.sample_diversity(classifier, sample_features),
      "classifier": _classifier_summary(classifier.info),
  }
