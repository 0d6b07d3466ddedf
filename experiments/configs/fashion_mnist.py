r"""Binarized Fashion-MNIST with the layer of mnist.py.

Needs internet access (TFDS downloads the four IDX files), or a folder with
them: --config.data_manual_dir=DIR.

Command:

  python -m experiments.train --config=experiments/configs/fashion_mnist.py \
      --workdir=/tmp/capsjax_fashion_mnist

Expected: not yet measured (no internet on the development machines).
"""

from experiments.configs import mnist


def get_config():
  config = mnist.get_config()
  config.dataset = "fashion_mnist"
  return config
