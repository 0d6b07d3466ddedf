r"""Trains the convolutional autoencoder whose code the capsule PoE routes.

  python -m experiments.train_autoencoder --workdir=runs/autoencoder_mnist \
      --config=experiments/configs/autoencoders/mnist.py \
      --config.data_manual_dir=../shared/data/mnist

(the IDX folder is only needed offline). Re-running the command resumes
from the latest checkpoint. Then train the PoE on its codes
(experiments/configs/mnist_autoencoder_poe.py). Without --config,
experiments/configs/autoencoders/default.py (the embedded subset, a short
run) is used. See experiments/runner/models/autoencoder.py for what
is written (experiments/runner/models/autoencoder_training.py trains).
"""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments.runner import harness
from experiments.runner import metrics
from experiments.runner.models import autoencoder_training

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the autoencoder goes.",
                               required=True)
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs",
                           "autoencoders", "default.py"),
    "An autoencoder config file; override fields with --config.FIELD=VALUE.",
    lock_config=True)


@harness.exit_on_error()
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  results = autoencoder_training.train_and_evaluate(flags.FLAGS.config,
                                                    _WORKDIR.value)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main, flags_parser=harness.parse_flags)
