r"""The paper's pipeline with the normalized routing rule (issue 20).

mnist_autoencoder_poe.py (144 autoencoder capsules of 8 -> 10 capsules of
16, r = 3, the paper's alternation, CD-1, SGD 0.02) with routing on the
votes' directions (`capsjax.Routing(rule="normalized")`, T = 1) instead of
Sabour's agreement.

Commands (the autoencoder first, as in mnist_autoencoder_poe.py):

  python -m experiments.train_autoencoder --workdir=runs/autoencoder_mnist \
      --config=experiments/configs/autoencoders/mnist.py \
      --config.data_manual_dir=../shared/data/mnist
  python -m experiments.train \
      --config=experiments/configs/mnist_autoencoder_poe_normalized.py \
      --workdir=runs/mnist_autoencoder_poe_normalized \
      --config.data_manual_dir=../shared/data/mnist
  python -m experiments.evaluate --workdir=runs/mnist_autoencoder_poe_normalized \
      --classifier_workdir=runs/classifier_mnist --frechet_samples=1000 \
      --frechet_steps=500

Measured (2026-12-02, 2-core Xeon shared with two other runs: 285 s of
training; docs/results.md section 4.5, row poe_norm_t1_cd1): routing stays
soft and follows the digit (entropy 2.22 of 2.30 nats, parse fraction 1.0,
class information 0.34 nats). Against its r = 1 ablation with the same
recipe (--config.num_iterations=1): decoded samples of 10 classes (class
entropy 1.94 nats) against 6 (1.83), Fréchet distance 168.5 against 292.1,
reconstruction error of the codes 0.068 against 0.076; linear probe 0.908
against 0.912, k-means 0.606 against 0.628. One seed. With Sabour's rule
(mnist_autoencoder_poe.py) routing hardens and every sample is one blob.
"""

from experiments.configs import mnist_autoencoder_poe


def get_config():
  config = mnist_autoencoder_poe.get_config()
  config.routing_rule = "normalized"
  config.routing_temperature = 1.0
  return config
