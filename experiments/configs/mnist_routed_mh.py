r"""The best routed variant of the routed-training study (BUILD_NOTES.md,
"Routed training study"): docs/model.md section 6's MH-corrected chains with
gradients through routing, Adam 1e-3, and a routing temperature of 100.

Command (needs the four raw MNIST IDX .gz files, or internet access):

  python -m experiments.train --config=experiments/configs/mnist_routed_mh.py \
      --workdir=runs/mnist_routed_mh --config.data_manual_dir=../shared/data/mnist

Expected (2-core CPU, about 13 minutes under load): 1,000 updates, test
log-likelihood -192.27 ± 0.06 nats (`python -m experiments.ais_reliability
--workdir=runs/mnist_routed_mh --seeds=2 --schedules=linear
--num_betas=3000`; ESS 87 of 100), routing entropy 3.46 of log 32 = 3.47:
the temperature keeps routing nearly uniform. The unrouted layer with the
same optimizer and budget reaches -128.4 (mnist_norouting.py with
--config.persistent=False --config.optimizer=adam
--config.learning_rate=0.001 --config.num_steps=1000).
"""

from experiments.configs import mnist


def get_config():
  config = mnist.get_config()
  config.routing_temperature = 100.0  # not in the paper: see routing.route
  config.mh = True
  config.through_routing = True
  config.optimizer = "adam"
  config.learning_rate = 0.001
  config.num_steps = 1_000
  config.momentum_switch_step = 500
  config.eval_every_steps = 500
  config.sample_every_steps = 1_000
  config.monitor_ais_betas = 1_000
  config.monitor_ais_runs = 32
  return config
