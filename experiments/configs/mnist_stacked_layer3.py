r"""Stacked capsule layers, layer 3: layer 2's 10 capsules of 16 -> 10 capsules of 16.

The third layer of the greedy stack, on the hidden probabilities of
runs/mnist_stacked_layer2 (which sits on runs/mnist_stacked_layer1).
Generation: Gibbs chains in this layer, then top-down through layers 2
and 1.

Commands (after mnist_stacked_layer2.py; the IDX folder only offline):

  python -m experiments.train --config=experiments/configs/mnist_stacked_layer3.py \
      --workdir=runs/mnist_stacked_layer3 --config.data_manual_dir=../shared/data/mnist

Expected: not measured at full length (the tiny end-to-end test trains a
three-layer stack).
"""

from experiments.configs import mnist_stacked_layer2


def get_config():
  config = mnist_stacked_layer2.get_config()
  config.lower_workdir = "runs/mnist_stacked_layer2"
  return config
