r"""The autoencoder front end on Fashion-MNIST (144 capsules x 8).

Needs internet access (TFDS downloads the IDX files) or
--config.data_manual_dir=DIR with them; not run on the development machine
(no internet).

Command:

  python -m experiments.train_autoencoder --workdir=runs/autoencoder_fashion_mnist \
      --config=experiments/configs/autoencoders/fashion_mnist.py

Expected: not measured.
"""

from experiments.configs.autoencoders import mnist


def get_config():
  config = mnist.get_config()
  config.dataset = "fashion_mnist"
  return config
