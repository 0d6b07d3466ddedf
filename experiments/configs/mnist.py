r"""Binarized MNIST, 49 pixel-patch capsules of 4x4 -> 32 capsules of 16.

The paper's alternation: 3 routing iterations, CD-1 with rerouted negative
samples, SGD 0.02 with momentum, the effective-weight parameterization.

Command (needs the four raw MNIST IDX .gz files, or internet access):

  python -m experiments.train --config=experiments/configs/mnist.py \
      --workdir=/tmp/capsjax_mnist --config.data_manual_dir=../shared/data/mnist

Expected (measured, 2-core CPU under load, 25 minutes): all 18,000 updates
run without divergence, but routing collapses within the first 1,000
updates (test routing entropy 2.36 nats from update 2,000 to 18,000: hard
for every capsule with a pixel on; uniform would be log 32 = 3.47), the
agreement logits grow to a spread of about 280 and the learned model is
poor: the AIS weights are degenerate and the 95% upper bound on the test
log-likelihood is -5,338 nats (the unrouted layer: -214.5 with SGD, -128.4
with Adam). BUILD_NOTES.md, "Routed training study"; the best routed variant
found is mnist_routed_mh.py.
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  # The recipe of this config's measured rows (CD-1 at a constant rate),
  # not default.py's PCD-10 with a decaying rate and a parameter average.
  config.k = 1
  config.lr_schedule = "constant"
  config.final_learning_rate = 0.0
  config.ema_decay = 0.0
  config.dataset = "mnist"
  config.num_hidden_capsules = 32
  config.num_iterations = 3
  config.persistent = False
  config.learning_rate = 0.02
  config.num_steps = 18_000  # 30 epochs of 60,000 at batch 100
  config.momentum_switch_step = 3_000
  config.checkpoint_every_steps = 1_000
  config.eval_every_steps = 2_000
  config.sample_every_steps = 6_000
  return config
