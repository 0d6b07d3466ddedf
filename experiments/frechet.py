"""Fréchet distance on classifier features, and binary samples to feed it.

The Fréchet (2-Wasserstein) distance between Gaussians fit to two feature
sets (Heusel et al. 2017's FID, with a small MNIST classifier,
experiments/classifier.py, in place of Inception):

  d^2 = |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2).

`model_samples` draws binary samples from Gibbs chains started at the data
marginals; `experiments.evaluation.frechet_measures` compares their features
with the binarized test set's, next to the floor.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import capsjax


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


# ---------------------------------------------------------------------------
# Model samples.


@functools.partial(jax.jit, static_argnames=("num_chains", "num_steps",
                                             "kernel"))
def _sample_chunk(params, key, marginals, *, num_chains: int, num_steps: int,
                  kernel: capsjax.Kernel):
  """Binary states (num_chains, Nv, Dv) after `num_steps` steps, acceptance."""
  init_key, run_key = jax.random.split(key)
  v0 = jax.random.bernoulli(init_key, marginals,
                            (num_chains,) + marginals.shape)
  state = kernel.init(params, v0.astype(params["W"].dtype))
  state, info = capsjax.run_chain(run_key, kernel, state, params, num_steps)
  return state.v, jnp.mean(info.acceptance_rate)


def model_samples(key, params, marginals, *, num_samples: int,
                  num_steps: int, kernel: capsjax.Kernel,
                  batch_size: int = 1_000) -> tuple[np.ndarray, float]:
  """`num_samples` binary visible states (N, Nv, Dv) and the mean acceptance.

  As `train_lib.make_sampler`: chains start at Bernoulli(data marginals) and
  run `num_steps` steps of `kernel` (`train_lib.sampling_kernel`: Gibbs
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
