r"""Trains a capsule layer with contrastive divergence.

  python -m experiments.train --config=experiments/configs/default.py \
      --workdir=/tmp/capsjax_default [--config.num_steps=200 ...]

Re-running the same command resumes from the latest checkpoint in workdir.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from capsjax import data
from experiments import metrics
from experiments import train_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics "
                               "and samples go.", required=True)
config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  try:
    train_lib.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
  except (train_lib.ConfigError, train_lib.DataError,
          train_lib.DivergenceError, data.DatasetNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None  # a message, not a traceback


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
