r"""Writes a PNG of model samples and test reconstructions from a workdir.

  python -m experiments.sample --workdir=/tmp/capsjax_default \
      --out=/tmp/capsjax_default/samples.png [--mh] [--steps=1000]

Loads the config recorded in the workdir and its latest checkpoint. The top
block shows the means of Gibbs chains with routing (MH-corrected with
--mh) started from the data marginals; below it, rows of test images each
followed by a row of their one-pass reconstructions. Layers on an
autoencoder or on a lower capsule layer (config.front_end) are decoded to
pixels by their front end (experiments/front_ends.py): there each test row
is followed by the decoded visible capsules and the decoded reconstruction.
"""

from absl import app
from absl import flags
from absl import logging
import jax

from capsjax import data
from experiments import images
from experiments import metrics
from experiments import train_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.",
                               required=True)
_OUT = flags.DEFINE_string("out", None, "The PNG to write.", required=True)
_MH = flags.DEFINE_bool("mh", False, "Metropolis-Hastings-corrected chains.")
_STEPS = flags.DEFINE_integer("steps", None, "Gibbs steps (default: the "
                              "config's sample_steps).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the chains.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  try:
    config, state = train_lib.load_run(_WORKDIR.value)
    d = train_lib.load_data(config)
  except (train_lib.ConfigError, train_lib.DataError,
          data.DatasetNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  if _STEPS.value is not None:
    config.sample_steps = _STEPS.value
  marginals = train_lib.grey_marginals(config, d.train)
  blocks, acceptance = train_lib.sample_figure(
      config, train_lib.make_sampler(config, mh=_MH.value), state.params,
      jax.random.key(_SEED.value), d.test, marginals)
  images.save_png(_OUT.value, *blocks)
  logging.info("Step %d: wrote %s (%d chains x %d steps%s)", int(state.step),
               _OUT.value, config.num_samples, config.sample_steps,
               f", MH acceptance {acceptance:.3f}" if _MH.value else "")
  print(_OUT.value)


if __name__ == "__main__":
  app.run(main)
