r"""mnist_stacked_layer1.py on Fashion-MNIST (then fashion_mnist_stacked_layer2.py).

Needs internet access (TFDS downloads the IDX files) or
--config.data_manual_dir=DIR; not run on the development machine.

Command:

  python -m experiments.train --config=experiments/configs/fashion_mnist_stacked_layer1.py \
      --workdir=runs/fashion_mnist_stacked_layer1

Expected: not measured (no internet on the development machines).
"""

from experiments.configs import mnist_stacked_layer1


def get_config():
  config = mnist_stacked_layer1.get_config()
  config.dataset = "fashion_mnist"
  return config
