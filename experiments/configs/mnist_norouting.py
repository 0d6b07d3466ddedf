r"""The no-routing ablation of mnist.py: num_iterations = 1 (c = 1/Nh).

The layer is then an ordinary RBM (784 visible, 512 hidden neurons) whose
weight blocks are scaled by 1/Nh; with weight_scale = "num_hidden_capsules"
it trains exactly like that RBM. Its learning rate is its own best stable
one (0.1; the routed model diverges above 0.02), as the comparison of
equal budgets at each model's best setting requires.

Command:

  python -m experiments.train --config=experiments/configs/mnist_norouting.py \
      --workdir=/tmp/capsjax_mnist_norouting \
      --config.data_manual_dir=../shared/data/mnist

Expected: not yet measured at full length (the embedded-subset version is
experiments/configs/default.py).
"""

from experiments.configs import mnist


def get_config():
  config = mnist.get_config()
  config.num_iterations = 1
  config.learning_rate = 0.1
  return config
