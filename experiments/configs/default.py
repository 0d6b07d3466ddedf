r"""The default run: the embedded MNIST subset, offline, a minute or two on 2 CPUs.

Command:

  python -m experiments.train --config=experiments/configs/default.py \
      --workdir=runs/default

Trains 49 capsules of 4x4 pixels -> 16 capsules of 16 neurons on the 5,000
embedded training digits (stochastically binarized) with the field's
recipe at a small budget (docs/design.md section 6.2): persistent
contrastive divergence with 10 Gibbs steps (PCD-10, 100 chains), SGD 0.02
with momentum 0.5 -> 0.9, the rate decayed linearly to 0.0002 over the
3,000 updates; the model is the exponential moving average of the
parameters (decay 0.99).

The default is the no-routing baseline (num_iterations = 1, every c_ij =
1/Nh: an RBM with 784 visible and 256 hidden neurons) because it is the
setting whose samples a person recognizes as digits. Routed training with
the paper's alternation does not give recognizable samples: routing
collapses to hard, positional routing within the first updates
(docs/results.md). The routed layer is

  ... --config.num_iterations=3

Measured (2026-12-02, this project's 2-core CPU, shared with a second
training): 72 s of training; the samples (runs/default/samples/
step_0003000.png) are varied digits of every class. Their class
diversity, 500 chains from uniform noise, 1,000 Gibbs steps each:

  python -m experiments.train_classifier --workdir=runs/classifier_mnist \
      --config.dataset=mnist --config.data_manual_dir=../shared/data/mnist
  python -m experiments.sample --workdir=runs/default --init=noise \
      --num_samples=500 --steps=1000 \
      --classifier_workdir=runs/classifier_mnist \
      --out=runs/default/noise_samples.npz

gives class entropy 2.16 nats (uniform 2.30), all 10 classes above 3%
(histogram [37, 29, 50, 137, 30, 41, 54, 28, 47, 47]; the CNN's test
accuracy 0.989). Seeds 1 and 2 (--config.seed=1, 2): 2.22 and 2.19
nats, all 10 classes each.
Without the average (--config.ema_decay=0.0): 1.79 nats, 6 classes. The
default until 2026-12-01 (PCD-1, constant SGD 0.01, no average:
--config.k=1 --config.learning_rate=0.01 --config.lr_schedule=constant
--config.final_learning_rate=0.0 --config.ema_decay=0.0): 1.21 nats, 4
classes (mostly 4s and 3s). docs/results.md section 2 has the table.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # Data.
  config.dataset = "mnist_small"
  config.data_dir = ""         # TFDS data dir; "" = ~/tensorflow_datasets
  config.data_manual_dir = ""  # folder with raw IDX files (mnist offline)
  config.binarize = "stochastic"  # re-drawn each time a batch is used
  # Model.
  config.patch_size = 4        # capsules of patch_size^2 pixels
  config.num_hidden_capsules = 16
  config.hidden_dim = 16
  config.num_iterations = 1    # 1 = no routing; 3 = routing by agreement
  config.visible = "bernoulli"
  config.init_scale = 0.01     # std of the effective weights at init
  # Routing variant (not in the paper): every routing softmax is taken of
  # logits / T. 1.0 = Sabour's routing-by-agreement; larger T routes
  # more softly (T -> infinity: the unrouted model). Part of the model
  # (capsjax.Routing), not of the params.
  config.routing_temperature = 1.0
  # The agreement rule (capsjax.Routing.rule): "sabour" (the paper's
  # u.o), or the scale-free "cosine" (cos(u, o); pair it with a
  # temperature below 1, e.g. 0.2 = 5 cos) and "normalized" (Procedure 1
  # on unit votes). Part of the model.
  config.routing_rule = "sabour"
  # "num_hidden_capsules": optimize W / Nh (docs/model.md section 5), so the
  # effective weights c W start and move like an RBM's.
  config.weight_scale = "num_hidden_capsules"
  # Contrastive divergence.
  config.k = 10
  # CD-k with k ramped over training (Salakhutdinov & Murray 2008: one more
  # Gibbs step every 10 epochs): k = min(config.k, 1 + step //
  # k_ramp_every_steps); 0 = k constant. k_ramp_divides_lr: the learning
  # rate is divided by the current k, as in their code.
  config.k_ramp_every_steps = 0
  config.k_ramp_divides_lr = False
  config.persistent = True     # PCD: chains carry over between updates
  config.num_chains = 0        # persistent chains; 0 = batch_size
  # Parallel tempering of the persistent chains (capsjax.tempering):
  # tempering_rungs inverse temperatures evenly spaced from
  # tempering_min_beta to 1; 0 = off (plain Gibbs / MH chains).
  config.tempering_rungs = 0
  config.tempering_min_beta = 0.5
  # Centering (Melchior et al. 2016, capsjax.centering): the CD gradient
  # of an unrouted layer taken in the centered parameterization, offsets
  # at the data means of the units moving by this sliding-average rate
  # (0.01 is theirs); 0 = off. The params stay the ordinary ones.
  config.centering = 0.0
  config.mh = False
  # With mh: the expected fraction of the lower capsules each MH step
  # proposes to resample (capsjax.mh's block_fraction; 1 = the whole image).
  config.mh_block_fraction = 1.0
  config.reroute = True
  config.through_routing = False
  config.mean_field_negative = False
  # Optimizer.
  config.optimizer = "sgd"
  config.learning_rate = 0.02
  config.momentum_initial = 0.5
  config.momentum_final = 0.9
  config.momentum_switch_step = 250
  config.weight_decay = 2e-4
  # Step-size control (0 = off): clip the CD gradient's global norm; ramp
  # the step linearly from 1/warmup_steps to 1 over the first updates.
  config.grad_clip_norm = 0.0
  config.warmup_steps = 0
  # Learning-rate schedule over num_steps: "constant", "linear" or
  # "cosine" decay to final_learning_rate, or "step": times lr_decay_factor
  # every lr_decay_every_steps. It multiplies the rate (so a roll-back's
  # reduction of config.learning_rate carries over). Linear and cosine
  # decay run over num_steps, which a resumed run then may not change.
  # Exponential moving average of the parameters (capsjax.params_ema),
  # the model that evaluation, samples and stacking use; 0 = off. 0.99
  # averages about the last 100 updates: its samples cover more digits
  # than the last iterate's (docs/results.md section 2).
  config.ema_decay = 0.99
  config.lr_schedule = "linear"
  config.final_learning_rate = 0.0002
  config.lr_decay_every_steps = 0
  config.lr_decay_factor = 0.1
  config.batch_size = 100
  config.num_steps = 3_000     # total number of CD updates
  config.seed = 0
  # A non-finite update: "stop" (the error names the update and the
  # quantity), or "rollback": restore the latest checkpoint and multiply the
  # learning rate by rollback_lr_factor, at most max_rollbacks times.
  config.on_divergence = "stop"
  config.rollback_lr_factor = 0.5
  config.max_rollbacks = 3
  # Bookkeeping.
  config.log_every_steps = 100
  config.eval_every_steps = 500
  config.sample_every_steps = 1_000
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.num_eval_examples = 1_000
  config.num_samples = 100
  config.sample_steps = 1_000
  # A cheap likelihood monitor at every evaluation: AIS with this many
  # betas x runs (0 = off), reported with its ESS and MH acceptance; its
  # test log-likelihood is NaN when the importance weights degenerate.
  config.monitor_ais_betas = 300
  config.monitor_ais_runs = 16
  # --- Front end (issue 5, experiments/runner/front_ends.py): what the visible
  # capsules are. "patches": pixel patches of patch_size^2 (the default);
  # "autoencoder": the code of the autoencoder in autoencoder_workdir
  # (python -m experiments.train_autoencoder); "layer": the hidden
  # probabilities of the trained capsule layer in lower_workdir (stacking).
  config.front_end = "patches"
  config.autoencoder_workdir = ""
  config.lower_workdir = ""
  # Mean-field rounds c = c(m), m = E[v | h; c] of the top-down pass through
  # a routed lower layer ("layer" front end), from uniform c.
  config.topdown_iterations = 3
  # --- end of the front-end block.
  # Devices (experiments/runner/sharding.py). The batch and the PCD chains are
  # split over num_devices devices (0 = all, on every host); batch_size must
  # be a multiple. shard_weights also splits W over them along Nh.
  config.num_devices = 0
  config.shard_weights = False
  return config
