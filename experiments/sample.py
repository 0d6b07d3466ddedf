r"""Writes model samples from a workdir: a PNG figure or the arrays (.npz).

  python -m experiments.sample --workdir=/tmp/capsjax_default \
      --out=/tmp/capsjax_default/samples.png [--mh] [--steps=1000]
  python -m experiments.sample --workdir=/tmp/capsjax_default \
      --out=/tmp/capsjax_default/samples.npz [--method=anneal --num_betas=1000]

Loads the config recorded in the workdir and its latest checkpoint.

--method=gibbs (the default): Gibbs chains with routing (MH-corrected with
--mh) started from the data marginals (--init=noise: from uniform noise),
--steps steps each.
--method=anneal: the final states of annealing runs along the AIS path
(`capsjax.ais(...).samples`: from the data-marginal base model to the model
through --num_betas inverse temperatures, MH-corrected for a routed
layer).

A .png --out: the top block shows the samples (the chains' last visible
means for gibbs, the binary final states for anneal); below it, rows of
test images each followed by a row of their one-pass reconstructions.
Layers on an autoencoder or on a lower capsule layer (config.front_end) are
decoded to pixels by their front end (experiments/runner/front_ends.py): there
each test row is followed by the decoded visible capsules and the decoded
reconstruction.

A .npz --out: the arrays
  samples  (N, 28, 28) float32 in [0, 1]: the samples as images (gibbs: the
           decoded visible means of the last step; anneal: the decoded
           binary final states)
  states   (N, Nv, Dv) uint8: the final binary visible states
  acceptance_rate, step, method, num_steps and init (gibbs) or num_betas
  (anneal)
with N = --num_samples (default: the config's num_samples); with
--classifier_workdir also class_histogram, entropy_nats and
classes_above_threshold, the samples' class diversity under that
classifier (printed too). The default config's check (docs/results.md):

  python -m experiments.sample --workdir=runs/default --init=noise \
      --num_samples=500 --steps=1000 \
      --classifier_workdir=runs/classifier_mnist \
      --out=runs/default/noise_samples.npz
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from experiments.runner import data as data_io
from experiments.runner import errors
from experiments.runner import factories
from experiments.runner import front_ends
from experiments.runner import harness
from experiments.runner import images
from experiments.runner import metrics
from experiments.runner import monitors
from experiments.runner import visible
from experiments.runner.evaluation import diversity
from experiments.runner.models import classifier

FLAGS = flags.FLAGS


def _define_flags():
  """The command's flags, defined only when it runs as a program (tests
  import this module beside others that define --steps and --seed)."""
  flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
  flags.DEFINE_string("out", None, "The file to write: a PNG figure, or the "
                      "sample arrays if it ends in .npz.", required=True)
  flags.DEFINE_enum("method", "gibbs", ["gibbs", "anneal"],
                    "gibbs: Gibbs chains (from the data marginals, or see "
                    "--init); anneal: "
                    "final states of AIS annealing runs.")
  flags.DEFINE_bool("mh", False, "Metropolis-Hastings-corrected chains "
                    "(--method=gibbs).")
  flags.DEFINE_integer("steps", None, "Gibbs steps (default: the config's "
                       "sample_steps).", lower_bound=1)
  flags.DEFINE_integer("num_betas", 1_000, "Inverse temperatures of each "
                       "annealing run (--method=anneal; the piecewise AIS "
                       "schedule).", lower_bound=2)
  flags.DEFINE_integer("num_samples", None, "Samples (chains or annealing "
                       "runs; default: the config's num_samples).",
                       lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Seed of the chains.")
  flags.DEFINE_enum("init", "marginals", ["marginals", "noise"],
                    "Where Gibbs chains start: Bernoulli(data marginals) or "
                    "uniform noise, Bernoulli(0.5) (--method=gibbs).")
  flags.DEFINE_string("classifier_workdir", None, "A classifier workdir "
                      "(python -m experiments.train_classifier): also "
                      "report the samples' class diversity (needs a .npz "
                      "--out).")


@harness.exit_on_error()
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  method, out = FLAGS.method, FLAGS.out
  if FLAGS.classifier_workdir and not out.lower().endswith(".npz"):
    raise errors.ConfigError("--classifier_workdir needs --out=FILE.npz")
  if FLAGS.init == "noise" and method != "gibbs":
    raise errors.ConfigError("--init=noise is for --method=gibbs")
  metrics.quiet_orbax_logging()
  config, state = front_ends.load_run(FLAGS.workdir)
  front_end = front_ends.get(config)
  d = data_io.load_data(config)
  if FLAGS.steps is not None:
    config.sample_steps = FLAGS.steps
  if FLAGS.num_samples is not None:
    config.num_samples = FLAGS.num_samples
  marginals = visible.marginals(front_end, d.train)
  if FLAGS.init == "noise":
    marginals = np.full_like(marginals, 0.5)
  key = jax.random.key(FLAGS.seed)
  if out.lower().endswith(".npz"):
    states, samples, acceptance = monitors.draw(
        config, front_end, factories.model_params(config, state), key,
        marginals,
        method=method, mh=FLAGS.mh, num_betas=FLAGS.num_betas)
    length = ({"num_steps": config.sample_steps, "mh": FLAGS.mh,
               "init": FLAGS.init}
              if method == "gibbs" else {"num_betas": FLAGS.num_betas})
    scores = {}
    if FLAGS.classifier_workdir:
      clf = classifier.load(FLAGS.classifier_workdir)
      div = diversity.sample_diversity(clf, clf.features(samples))
      logging.info("Sample diversity: %s", json.dumps(div))
      print(json.dumps({"diversity": div}))
      scores = {k: np.asarray(div[k]) for k in
                ("class_histogram", "entropy_nats", "classes_above_threshold")
                if k in div}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez_compressed(out, samples=samples,
                        states=states.astype(np.uint8),
                        acceptance_rate=np.float32(acceptance),
                        step=np.int64(state.step), method=method, **length,
                        **scores)
  else:
    if method == "gibbs":
      sampler = monitors.make_sampler(config, mh=FLAGS.mh)
    else:
      sampler = monitors.anneal_sampler(config, FLAGS.num_betas)
    blocks, acceptance = monitors.sample_figure(
        config, front_end, sampler, factories.model_params(config, state), key,
        d.test, marginals)
    images.save_png(out, *blocks)
  what = (f"{config.num_samples} chains x {config.sample_steps} steps"
          + (", MH" if FLAGS.mh else "") if method == "gibbs" else
          f"{config.num_samples} annealing runs x {FLAGS.num_betas} betas")
  logging.info("Step %d: wrote %s (%s, acceptance %.3f)", int(state.step),
               out, what, acceptance)
  print(out)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=harness.parse_flags)
