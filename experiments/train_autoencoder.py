r"""Trains the convolutional autoencoder whose code the capsule PoE routes.

  python -m experiments.train_autoencoder --workdir=runs/autoencoder_mnist \
      --config=experiments/configs/autoencoders/mnist.py \
      --config.data_manual_dir=../shared/data/mnist

(the IDX folder is only needed offline). Re-running the command resumes from the latest checkpoint. Then train the
PoE on its codes (experiments/configs/mnist_autoencoder_poe.py). Without
--config, experiments/configs/autoencoders/default.py (the embedded subset,
a short run) is used. See experiments/autoencoder.py for what is written.
"""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from capsjax import data
from experiments import autoencoder
from experiments import metrics
from experiments import train_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the autoencoder goes.",
                               required=True)
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs",
                           "autoencoders", "default.py"),
    "An autoencoder config file; override fields with --config.FIELD=VALUE.",
    lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  try:
    results = autoencoder.train_and_evaluate(flags.FLAGS.config,
                                             _WORKDIR.value)
  except (autoencoder.AutoencoderError, train_lib.ConfigError,
          train_lib.CheckpointError, data.DatasetNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
