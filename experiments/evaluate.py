r"""Evaluates a training workdir's latest checkpoint on the test set.

  python -m experiments.evaluate --workdir=/tmp/capsjax_default \
      [--ais=quick|full] [--out=/tmp/capsjax_default/eval] \
      [--classifier_workdir=runs/classifier]

Writes eval.json and eval.md (a markdown table) under --out: the test
log-likelihood in nats (AIS log Z from the data-marginal base model;
--ais=quick is 1,000 betas x 32 runs, --ais=full the literature's 14,500 x
100), beside it reverse AIS (RAISE: a conservative estimate, one chain per
example on a seeded random subset of --reverse_ais_examples test examples,
flagged when it and forward AIS differ by more than 3 nats on that subset),
the one-pass reconstruction error, a linear probe's test accuracy and
k-means clustering accuracy on the hidden probabilities, and with
--classifier_workdir (a classifier from `python -m
experiments.train_classifier`) the Fréchet distance between
--frechet_samples model samples and the binarized test set on its features,
with the train-versus-test distance as the floor. See
experiments/runner/evaluation/.
"""

import os

from absl import app
from absl import flags
from absl import logging

from experiments.runner import data as data_io
from experiments.runner import factories
from experiments.runner import front_ends
from experiments.runner import harness
from experiments.runner import metrics
from experiments.runner.evaluation import likelihood
from experiments.runner.evaluation import report
from experiments.runner.evaluation import suite
from experiments.runner.models import classifier

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.",
                               required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder (default: "
                           "WORKDIR/eval).")
_AIS = flags.DEFINE_enum("ais", "quick", sorted(likelihood.AIS_PRESETS),
                         "AIS preset: quick (1,000 betas x 32 runs) or full "
                         "(14,500 x 100).")
_NUM_BETAS = flags.DEFINE_integer("num_betas", None, "Overrides the preset's "
                                  "number of betas.", lower_bound=2)
_NUM_RUNS = flags.DEFINE_integer("num_runs", None, "Overrides the preset's "
                                 "number of AIS runs.", lower_bound=1)
_PROBE = flags.DEFINE_integer("probe_train_examples", 10_000, "Training "
                              "examples of the linear probe (0: all).",
                              lower_bound=0)
_CLUSTERS = flags.DEFINE_integer("num_clusters", 10, "k-means clusters.",
                                 lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 1_000, "Examples per device "
                              "batch (bounds memory).", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the binarization, AIS and "
                             "k-means.")
_CLASSIFIER = flags.DEFINE_string(
    "classifier_workdir", None, "A classifier workdir (python -m "
    "experiments.train_classifier): adds the Fréchet distance.")
_FD_SAMPLES = flags.DEFINE_integer("frechet_samples", 10_000, "Model samples "
                                   "(and floor train images) of the Fréchet "
                                   "distance.", lower_bound=2)
_FD_STEPS = flags.DEFINE_integer("frechet_steps", 1_000, "Gibbs steps of each "
                                 "sampling chain.", lower_bound=1)
_FD_MH = flags.DEFINE_bool("frechet_mh", False, "MH-corrected sampling "
                           "chains.")
_BLOCK = flags.DEFINE_float(
    "ais_block_fraction", 1.0, "The AIS and reverse-AIS MH transitions "
    "propose new states for this random fraction of the lower capsules "
    "(capsjax.mh's block_fraction; 1: the whole image). Routed layers only.",
    lower_bound=0.0, upper_bound=1.0)
_REVERSE = flags.DEFINE_integer(
    "reverse_ais_examples", None, "Test examples (a seeded random subset) of "
    "reverse AIS, one chain each, with the AIS preset's betas and base model "
    "(default: 500 for an unrouted layer, 100 for a routed one; 0: skip).",
    lower_bound=0)


@harness.exit_on_error()
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  workdir = _WORKDIR.value
  config, state = front_ends.load_run(workdir)
  front_end = front_ends.get(config)
  d = data_io.load_data(config)
  clf = (classifier.load(_CLASSIFIER.value, batch_size=_BATCH.value)
         if _CLASSIFIER.value else None)
  settings = suite.Settings(
      ais=_AIS.value, num_betas=_NUM_BETAS.value, num_runs=_NUM_RUNS.value,
      probe_train_examples=_PROBE.value, num_clusters=_CLUSTERS.value,
      batch_size=_BATCH.value, seed=_SEED.value,
      frechet_samples=_FD_SAMPLES.value, frechet_steps=_FD_STEPS.value,
      frechet_mh=_FD_MH.value, reverse_ais_examples=_REVERSE.value,
      ais_block_fraction=_BLOCK.value)
  results = suite.evaluate(config, front_end, int(state.step),
                           factories.model_params(config, state), d,
                           settings, classifier=clf)
  out = _OUT.value or os.path.join(workdir, "eval")
  paths = report.write(results, out, title=f"Evaluation of {workdir}")
  logging.info("Step %d: wrote %s", results["step"], ", ".join(paths))
  print(report.to_markdown(results, title=f"Evaluation of {workdir}"))


if __name__ == "__main__":
  app.run(main, flags_parser=harness.parse_flags)
