r"""How far to trust an AIS log-likelihood: several seeds and schedules.

  python -m experiments.ais_reliability --workdir=runs/study/r1_cd1 \
      --seeds=3 --schedules=piecewise,linear --num_betas=1000,14500 \
      --num_runs=100 [--out=WORKDIR/ais_reliability]

For every schedule (`capsjax.beta_schedule` kinds), length and seed, runs
AIS (data-marginal base, as `experiments.evaluate`) on the workdir's latest
checkpoint and the mean test log-probability with it; an estimate whose
importance weights are degenerate (ESS below
`capsjax.likelihood.ess_threshold`) is flagged and kept out of the summary.
The summary gives, per schedule and length, the mean and the spread (std)
over the reliable seeds: a model's likelihood is quoted only where several
seeds agree. It also gives an upper bound that holds whatever the weights
look like: AIS's Z estimate is unbiased, so (Markov's inequality)
P(log Z_est > log Z + t) <= exp(-t), and with n seeds the mean test
log-likelihood is at most min over seeds of its estimate + log(n / 0.05)
with probability >= 95%. A degenerate model may be far below that bound,
never (but with 5%) above it. Writes ais_reliability.json and .md under
--out.
"""

from __future__ import annotations

import itertools
import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

import capsjax
from capsjax import data
from experiments import evaluation
from experiments import front_ends
from experiments import metrics
from experiments import train_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.",
                               required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder (default: "
                           "WORKDIR/ais_reliability).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "AIS seeds per setting.",
                              lower_bound=1)
_SCHEDULES = flags.DEFINE_list("schedules", ["piecewise", "linear"],
                               "beta_schedule kinds.")
_NUM_BETAS = flags.DEFINE_list("num_betas", ["1000", "14500"],
                               "Schedule lengths.")
_NUM_RUNS = flags.DEFINE_integer("num_runs", 100, "AIS runs per estimate.",
                                 lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 1_000, "Test examples per batch.",
                              lower_bound=1)

_ais = jax.jit(capsjax.ais, static_argnames=("num_iterations", "num_betas",
                                             "num_runs"))


def estimates(params, num_iterations: int, test_v: np.ndarray, bias, *,
              schedules, num_betas, seeds: int, num_runs: int,
              batch_size: int = 1_000) -> list[dict]:
  """One AIS estimate (and test log-likelihood) per schedule x length x seed."""
  rows = []
  for kind, n, seed in itertools.product(schedules, num_betas, range(seeds)):
    logging.info("AIS %s x %d betas, seed %d ...", kind, n, seed)
    result = _ais(jax.random.key(seed), params, num_iterations, num_betas=n,
                  num_runs=num_runs, base_bias=bias,
                  betas=capsjax.beta_schedule(n, kind))
    ess = float(result.ess)
    log_z = float(result.log_z)
    reliable = ess >= capsjax.likelihood.ess_threshold(num_runs)
    log_p = evaluation.log_probs(params, test_v, num_iterations, log_z,
                                 batch_size)
    rows.append({"schedule": kind, "num_betas": n, "seed": seed,
                 "num_runs": num_runs, "log_z": log_z,
                 "log_z_std": float(result.log_z_std), "ess": ess,
                 "acceptance_rate": float(result.acceptance_rate),
                 "reliable": bool(reliable),
                 "test_log_prob_mean": float(np.mean(log_p))})
  return rows


# The confidence of `summary`'s upper bound.
BOUND_FAILURE_PROBABILITY = 0.05


def summary(rows: list[dict]) -> list[dict]:
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


def to_markdown(rows: list[dict], title: str) -> str:
  lines = [f"# {title}", "",
           "| schedule | betas | seeds reliable | test log p (nats), mean ± "
           "spread over reliable seeds | 95% upper bound | min ESS | "
           "MH acceptance |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for s in summary(rows):
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  try:
    num_betas = [int(n) for n in _NUM_BETAS.value]
    if min(num_betas) < 2:
      raise ValueError("every --num_betas must be >= 2")
    for kind in _SCHEDULES.value:
      capsjax.beta_schedule(2, kind)  # raises for an unknown kind
    config, state = train_lib.load_run(_WORKDIR.value)
    if not front_ends.get(config).pixel_space:
      raise ValueError(evaluation.NOT_PIXEL_SPACE)
    d = train_lib.load_data(config)
  except (ValueError, data.DatasetNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  # The same test binarization and base model as experiments.evaluate.
  keys = dict(zip(("base", "test", "probe", "ais"),
                  jax.random.split(jax.random.key(0), 4)))
  bs = _BATCH.value
  test_v = evaluation.binarize_capsules(config, d.test, keys["test"], bs)
  bias = evaluation.base_bias(config, d.train, keys["base"], bs)
  rows = estimates(state.params, config.num_iterations, test_v, bias,
                   schedules=_SCHEDULES.value, num_betas=num_betas,
                   seeds=_SEEDS.value, num_runs=_NUM_RUNS.value,
                   batch_size=bs)
  out = _OUT.value or os.path.join(_WORKDIR.value, "ais_reliability")
  os.makedirs(out, exist_ok=True)
  title = f"AIS reliability of {_WORKDIR.value} (update {int(state.step)})"
  with open(os.path.join(out, "ais_reliability.json"), "w") as f:
    json.dump({"workdir": _WORKDIR.value, "step": int(state.step),
               "rows": rows, "summary": summary(rows)}, f, indent=1)
  markdown = to_markdown(rows, title)
  with open(os.path.join(out, "ais_reliability.md"), "w") as f:
    f.write(markdown)
  print(markdown)


if __name__ == "__main__":
  app.run(main)
