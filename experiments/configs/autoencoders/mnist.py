r"""The paper's front end on MNIST: code of 144 capsules x 8 sigmoid units.

Command (from the repository root; the IDX folder only offline):

  python -m experiments.train_autoencoder --workdir=runs/autoencoder_mnist \
      --config=experiments/configs/autoencoders/mnist.py \
      --config.data_manual_dir=../shared/data/mnist

Then the capsule PoE on its codes: experiments/configs/mnist_autoencoder_poe.py.

Expected (2-core CPU shared with other jobs, 2026-11-25): about 9 minutes;
test binary cross-entropy 61.2 nats per image decoding the code means, 66.4
decoding binary codes (autoencoder.json); sharp reconstructions either way
(reconstructions.png). BUILD_NOTES.md, "Issue 5".
"""

from experiments.runner.models import autoencoder


def get_config():
  config = autoencoder.get_config()
  config.dataset = "mnist"
  config.num_steps = 1_500  # 3.2 epochs of 60,000 at batch 128
  config.checkpoint_every_steps = 500
  return config
