r"""The autoencoder on the embedded MNIST subset (offline; for trying it out).

Command:

  python -m experiments.train_autoencoder --workdir=runs/autoencoder_small

Expected: a minute or two on 2 CPU cores; blurry but recognizable
reconstructions in runs/autoencoder_small/reconstructions.png.
"""

from experiments.runner.models import autoencoder


def get_config():
  return autoencoder.get_config()
