r"""Stacked capsule layers, layer 1: 49 pixel patches of 4x4 -> 32 capsules of 16.

The bottom of the greedy stack (docs/model.md section 8): the unrouted CD-1 layer
of the full-MNIST table (mnist_norouting.py, CD-1, SGD 0.1, 3,000 updates),
which reconstructs best and has the only reliable pixel log-likelihood of
that table; routed layers go on top of it (mnist_stacked_layer2.py). A
routed bottom layer: add --config.num_iterations=3 --config.learning_rate=0.02.

Command (from the repository root; the IDX folder only offline):

  python -m experiments.train --config=experiments/configs/mnist_stacked_layer1.py \
      --workdir=runs/mnist_stacked_layer1 --config.data_manual_dir=../shared/data/mnist

Expected (2-core CPU shared with other jobs): a few minutes; test
reconstruction error about 0.02; pixel log-likelihood about -214 nats (AIS,
README's table); BUILD_NOTES.md, "Issue 5".
"""

from experiments.configs import mnist_norouting


def get_config():
  config = mnist_norouting.get_config()
  config.persistent = False
  config.num_steps = 3_000          # 5 epochs of 60,000 at batch 100
  config.momentum_switch_step = 500
  config.sample_every_steps = 3_000
  return config
