r"""How far to trust an AIS log-likelihood: several seeds and schedules.

  python -m experiments.ais_reliability --workdir=runs/study/r1_cd1 \
      --seeds=3 --schedules=piecewise,linear --num_betas=1000,14500 \
      --num_runs=100 [--out=WORKDIR/ais_reliability]

For every schedule (`capsjax.beta_schedule` kinds), length and seed, runs
AIS (data-marginal base, as `experiments.evaluate`) on the workdir's latest
checkpoint and the mean test log-probability with it; an estimate whose
importance weights are degenerate (ESS below
`capsjax.ess_threshold`) is flagged and kept out of the summary.
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

import json
import os

from absl import app
from absl import flags

import capsjax
from experiments.runner import data as data_io
from experiments.runner import factories
from experiments.runner import front_ends
from experiments.runner import harness
from experiments.runner import metrics
from experiments.runner.evaluation import capsules
from experiments.runner.evaluation import likelihood
from experiments.runner.evaluation import report
from experiments.runner.evaluation import suite

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

@harness.exit_on_error(ValueError)
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  num_betas = [int(n) for n in _NUM_BETAS.value]
  if min(num_betas) < 2:
    raise ValueError("every --num_betas must be >= 2")
  for kind in _SCHEDULES.value:
    capsjax.beta_schedule(2, kind)  # raises for an unknown kind
  config, state = front_ends.load_run(_WORKDIR.value)
  front_end = front_ends.get(config)
  if not front_end.pixel_space:
    raise ValueError(report.NOT_PIXEL_SPACE)
  d = data_io.load_data(config)
  # The same test binarization and base model as experiments.evaluate.
  keys = suite.evaluation_keys(0)
  bs = _BATCH.value
  test_v = capsules.binarize_capsules(front_end, config.binarize, d.test,
                                      keys["test"], bs)
  bias = capsules.base_bias(front_end, config.binarize, d.train, keys["base"],
                            bs)
  rows = likelihood.ais_estimates(
      factories.model_params(config, state), factories.make_routing(config),
      test_v, bias,
      schedules=_SCHEDULES.value, num_betas=num_betas, seeds=_SEEDS.value,
      num_runs=_NUM_RUNS.value, batch_size=bs)
  out = _OUT.value or os.path.join(_WORKDIR.value, "ais_reliability")
  os.makedirs(out, exist_ok=True)
  title = f"AIS reliability of {_WORKDIR.value} (update {int(state.step)})"
  with open(os.path.join(out, "ais_reliability.json"), "w") as f:
    json.dump({"workdir": _WORKDIR.value, "step": int(state.step),
               "rows": rows, "summary": likelihood.ais_summary(rows)}, f,
              indent=1)
  markdown = report.ais_markdown(rows, title)
  with open(os.path.join(out, "ais_reliability.md"), "w") as f:
    f.write(markdown)
  print(markdown)


if __name__ == "__main__":
  app.run(main, flags_parser=harness.parse_flags)
