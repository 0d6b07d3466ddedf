"""Log-likelihoods: AIS log Z from the data-marginal base model, the test
examples' log p(v), reverse AIS (RAISE) on a random test subset beside
forward AIS, and the AIS reliability study over seeds and schedules
(experiments/ais_reliability.py) with its 95% upper bound
(`capsjax.ais_upper_bound`)."""

from __future__ import annotations

import functools
import itertools

from absl import logging
import jax
import numpy as np

import capsjax
from experiments.runner import data as data_io

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


_ais = jax.jit(capsjax.ais, static_argnums=2,
               static_argnames=("num_betas", "num_runs", "block_fraction"))


def run_ais(key, params, routing: capsjax.Routing, bias, *, num_betas: int,
            num_runs: int, block_fraction: float = 1.0) -> dict:
  """AIS log Z with its diagnostics and the reliability flag
  (`block_fraction`: the MH transitions' proposal block, `capsjax.mh`)."""
  result = _ais(key, params, routing, num_betas=num_betas,
                num_runs=num_runs, base_bias=bias,
                block_fraction=block_fraction)
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
                   static_argnames=("num_betas", "block_fraction"))
def _reverse_ais_batch(key, params, v, routing, bias, *, num_betas,
                       block_fraction):
  return capsjax.reverse_ais(key, params, v, routing, num_betas=num_betas,
                             base_bias=bias, block_fraction=block_fraction)


def reverse_ais_subset(key, num_test: int, num_examples: int) -> np.ndarray:
  """Sorted indices of a random subset of `num_examples` test examples
  (all of them when fewer), drawn from `key`."""
  perm = np.asarray(jax.random.permutation(key, num_test))
  return np.sort(perm[:min(num_examples, num_test)])


def reverse_ais_log_probs(key, params, v: np.ndarray,
                          routing: capsjax.Routing, bias, *, num_betas: int,
                          batch_size: int, block_fraction: float = 1.0
                          ) -> tuple[np.ndarray, float]:
  """RAISE estimates of log p(v) (N,), one chain per example, and the mean
  MH acceptance. Batches of `batch_size` (`data.batched`: the last padded
  with zeros, whose chains are dropped); batch i runs from fold_in(key, i)."""
  rates = []

  def batch_log_probs(batch):
    result = _reverse_ais_batch(jax.random.fold_in(key, len(rates)), params,
                                batch, routing, bias, num_betas=num_betas,
                                block_fraction=block_fraction)
    rates.append(float(result.acceptance_rate))
    return result.log_prob

  log_p = data_io.batched(batch_log_probs, v, batch_size)
  return log_p, float(np.mean(rates))


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


def reverse_ais_size(settings, routing: capsjax.Routing) -> int:
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


@functools.partial(jax.jit, static_argnums=2)
def _log_prob_batch(params, v, routing, log_z):
  return capsjax.log_prob(params, v, routing, log_z)


def log_probs(params, test_v: np.ndarray, routing: capsjax.Routing, log_z,
              batch_size: int) -> np.ndarray:
  """`log p(v)` in nats of every test example, (N,)."""
  return data_io.batched(
      lambda x: _log_prob_batch(params, x, routing, log_z), test_v, batch_size)


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
  95% upper bound on the test log-likelihood (`capsjax.ais_upper_bound`)."""
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
        "upper_bound_95": capsjax.ais_upper_bound(
            [r["test_log_prob_mean"] for r in group],
            failure_probability=BOUND_FAILURE_PROBABILITY),
        "min_ess": min(r["ess"] for r in group),
        "acceptance_rate": float(np.mean([r["acceptance_rate"]
                                          for r in group])),
    })
  return out
