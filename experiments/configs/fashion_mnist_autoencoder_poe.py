r"""mnist_autoencoder_poe.py on Fashion-MNIST.

Needs internet access (TFDS downloads the IDX files) or
--config.data_manual_dir=DIR with them; not run on the development machine.

Commands:

  python -m experiments.train_autoencoder --workdir=runs/autoencoder_fashion_mnist \
      --config=experiments/configs/autoencoders/fashion_mnist.py
  python -m experiments.train --config=experiments/configs/fashion_mnist_autoencoder_poe.py \
      --workdir=runs/fashion_mnist_autoencoder_poe

Expected: not measured (no internet on the development machines).
"""

from experiments.configs import mnist_autoencoder_poe


def get_config():
  config = mnist_autoencoder_poe.get_config()
  config.dataset = "fashion_mnist"
  config.autoencoder_workdir = "runs/autoencoder_fashion_mnist"
  return config
