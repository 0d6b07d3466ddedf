"""`evaluate(config, front_end, step, params, data, settings)`: every
measure on the test set, as a JSON-ready dict with the run's metadata:

  - the test log-likelihood in nats: AIS log Z from the data-marginal base
    model, then the mean of `log_prob` over the whole binarized test set;
  - reverse AIS (RAISE) on a seeded random subset of the test set, beside
    forward AIS's mean over the same examples, flagged when they disagree
    by more than 3 nats;
  - the per-pixel reconstruction error of one up-down pass;
  - a linear probe (logistic regression on the hidden probabilities);
  - k-means clustering accuracy of the test hidden probabilities;
  - with a classifier (models/classifier.py), the Fréchet distance between
    model samples and the binarized test set on its features, its floor,
    and the diversity of those samples.

`report.to_markdown` renders it as a table. Every binarization and chain is
drawn from `seed`, so two evaluations of the same checkpoint with the same
settings agree.
"""

from __future__ import annotations

import platform
import time
from typing import NamedTuple

from absl import logging
import jax
import numpy as np

import capsjax
from experiments.runner import data as data_io
from experiments.runner import factories
from experiments.runner import visible
from experiments.runner.evaluation import capsules
from experiments.runner.evaluation import frechet
from experiments.runner.evaluation import likelihood
from experiments.runner.evaluation import probes
from experiments.runner.evaluation import report
from experiments.runner.models import classifier as classifier_lib


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
  # The AIS transitions' MH proposal block (capsjax.mh's block_fraction).
  ais_block_fraction: float = 1.0


def ais_size(settings: Settings) -> tuple[int, int]:
  if settings.ais not in likelihood.AIS_PRESETS:
    raise ValueError("ais must be one of "
                     f"{sorted(likelihood.AIS_PRESETS)}; got {settings.ais!r}")
  betas, runs = likelihood.AIS_PRESETS[settings.ais]
  return settings.num_betas or betas, settings.num_runs or runs


def evaluation_keys(seed: int) -> dict:
  """The evaluation's random streams: base model, test binarization, probe
  binarization, AIS (ais_reliability reuses the first two)."""
  return dict(zip(("base", "test", "probe", "ais"),
                  jax.random.split(jax.random.key(seed), 4)))


def evaluate(config, front_end: visible.FrontEnd, step: int, params,
             data: data_io.Data,
             settings: Settings = Settings(),
             classifier: classifier_lib.Loaded | None = None) -> dict:
  """Every measure of the module docstring, with metadata and wall times.

  The Fréchet distance needs `classifier` (`models.classifier.load`);
  without it the report says it was not computed.
  """
  num_betas, num_runs = ais_size(settings)
  r = factories.make_routing(config)
  mode = config.binarize
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

  test_v = timed("binarize_test", capsules.binarize_capsules, front_end, mode,
                 data.test, keys["test"], bs)
  n_test = len(test_v)
  if front_end.pixel_space:
    bias = timed("base_rate", capsules.base_bias, front_end, mode, data.train,
                 keys["base"], bs)
    logging.info("AIS with %d betas x %d runs", num_betas, num_runs)
    ais = timed("ais", likelihood.run_ais, keys["ais"], params, r, bias,
                num_betas=num_betas, num_runs=num_runs,
                block_fraction=settings.ais_block_fraction)
    log_p = timed("log_prob", likelihood.log_probs, params, test_v, r,
                  ais["log_z"], bs)
    log_likelihood = {
        "test_log_prob_mean": float(np.mean(log_p)),
        # Spread over test examples (sem); log Z's own error is log_z_std.
        "test_log_prob_sem": float(np.std(log_p, ddof=1) / np.sqrt(n_test)),
        "mh_block_fraction": settings.ais_block_fraction,
        **ais,
    }
    n_reverse = likelihood.reverse_ais_size(settings, r)
    if n_reverse:
      subset_key, chain_key = likelihood.reverse_ais_keys(settings.seed)
      subset = likelihood.reverse_ais_subset(subset_key, n_test, n_reverse)
      logging.info("Reverse AIS with %d betas on %d test examples",
                   num_betas, len(subset))
      reverse_log_p, reverse_rate = timed(
          "reverse_ais", likelihood.reverse_ais_log_probs, chain_key, params,
          test_v[subset], r, bias, num_betas=num_betas, batch_size=bs,
          block_fraction=settings.ais_block_fraction)
      reverse = likelihood.reverse_ais_report(
          reverse_log_p, log_p[subset], indices=subset, num_betas=num_betas,
          acceptance_rate=reverse_rate)
      if reverse["disagree"]:
        logging.warning(
            "Forward AIS (%.2f) and reverse AIS (%.2f) disagree by %.2f nats "
            "on the same %d test examples (more than %.0f): the forward "
            "estimate is unreliable; anneal longer (--ais=full or "
            "--num_betas)", reverse["forward_test_log_prob_mean"],
            reverse["test_log_prob_mean"], reverse["forward_minus_reverse"],
            reverse["num_examples"],
            likelihood.REVERSE_AIS_TOLERANCE)
    else:
      reverse = {"computed": False, "note": "--reverse_ais_examples=0"}
    log_likelihood["reverse_ais"] = reverse
  else:
    log_likelihood = {"computed": False, "note": report.NOT_PIXEL_SPACE}
  recon = timed("reconstruction", probes.reconstruction_errors, params, test_v,
                r, bs)

  routing_parse = timed("routing", probes.routing_diagnostics, params,
                        test_v, data.test_labels, r, bs)
  n_probe = settings.probe_train_examples or len(data.train)
  n_probe = min(n_probe, len(data.train))
  probe_v = timed("binarize_probe", capsules.binarize_capsules, front_end,
                  mode, data.train[:n_probe], keys["probe"], bs)
  train_x = timed("features_train", probes.hidden_features, params, probe_v,
                  r, bs)
  test_x = timed("features_test", probes.hidden_features, params, test_v, r,
                 bs)
  probe = timed("probe", probes.linear_probe_accuracy, train_x,
                data.train_labels[:n_probe], test_x, data.test_labels)
  clustering = timed("clustering", probes.kmeans_accuracy, test_x,
                     data.test_labels, num_clusters=settings.num_clusters,
                     seed=settings.seed)
  if classifier is None:
    fd = {"computed": False, "note": report.FRECHET_HINT}
  else:
    # Its own stream, so the other measures keep their keys.
    fd_key = jax.random.fold_in(jax.random.key(settings.seed), 4)
    fd = frechet.frechet_measures(fd_key, config, front_end, params,
                                  data.train, test_v, classifier, settings,
                                  timed, test_grey=data.test)

  return {
      "step": step,
      "num_test_examples": n_test,
      "log_likelihood": log_likelihood,
      "reconstruction_error": float(np.mean(recon)),
      "linear_probe_accuracy": probe,
      "clustering_accuracy": clustering,
      "routing": routing_parse,
      "frechet": fd,
      "settings": {"ais": settings.ais, "num_betas": num_betas,
                   "num_runs": num_runs, "beta_schedule": "piecewise",
                   "min_ess": capsjax.ess_threshold(num_runs),
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
