r"""Writes model samples from a workdir: a PNG figure or the arrays (.npz).

  python -m experiments.sample --workdir=/tmp/capsjax_default \
      --out=/tmp/capsjax_default/samples.png [--mh] [--steps=1000]
  python -m experiments.sample --workdir=/tmp/capsjax_default \
      --out=/tmp/capsjax_default/samples.npz [--method=anneal --num_betas=1000]

Loads the config recorded in the workdir and its latest checkpoint.

--method=gibbs (the default): Gibbs chains with routing (MH-corrected with
--mh) started from the data marginals, --steps steps each.
--method=anneal: the final states of annealing runs along the AIS path
(`capsjax.ais(...).samples`: from the data-marginal base model to the model
through --num_betas inverse temperatures, MH-corrected for a routed
layer).

A .png --out: the top block shows the samples (the chains' last visible
means for gibbs, the binary final states for anneal); below it, rows of
test images each followed by a row of their one-pass reconstructions.
Layers on an autoencoder or on a lower capsule layer (config.front_end) are
decoded to pixels by their front end (experiments/front_ends.py): there
each test row is followed by the decoded visible capsules and the decoded
reconstruction.

A .npz --out: the arrays
  samples  (N, 28, 28) float32 in [0, 1]: the samples as images (gibbs: the
           decoded visible means of the last step; anneal: the decoded
           binary final states)
  states   (N, Nv, Dv) uint8: the final binary visible states
  acceptance_rate, step, method, num_steps (gibbs) or num_betas (anneal)
with N = --num_samples (default: the config's num_samples).
"""

import functools
import os

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import capsjax
from capsjax import data
from experiments import front_ends
from experiments import images
from experiments import metrics
from experiments import train_lib

def anneal_sampler(config, num_betas: int):
  """Jitted `(params, key, marginals) -> (binary states, acceptance)`: the
  final states of `config.num_samples` AIS runs from the base model with
  the data's marginals (`capsjax.base_rate_bias`) to the model."""
  routing = train_lib.make_routing(config)

  @jax.jit
  def sample(params, key, marginals):
    result = capsjax.ais(key, params, routing, num_betas=num_betas,
                         num_runs=config.num_samples,
                         base_bias=capsjax.base_rate_bias(marginals[None]))
    return result.samples, result.acceptance_rate

  return sample


def draw(config, params, key, marginals, *, method: str, mh: bool = False,
         num_betas: int = 1_000) -> tuple[np.ndarray, np.ndarray, float]:
  """(binary states (N, Nv, Dv), images (N, 28, 28) in [0, 1], acceptance)
  of `config.num_samples` samples by `method` ("gibbs" or "anneal")."""
  marginals = jnp.asarray(marginals)
  if method == "gibbs":
    states, means, rate = train_lib.make_sampler(config, mh, states=True)(
        params, key, marginals)
  elif method == "anneal":
    states, rate = anneal_sampler(config, num_betas)(params, key, marginals)
    means = states
  else:
    raise ValueError(f"method must be 'gibbs' or 'anneal'; got {method!r}")
  to_images = functools.partial(front_ends.to_numpy_images,
                                front_ends.get(config))
  samples = np.clip(to_images(means), 0.0, 1.0).astype(np.float32)
  return np.asarray(states), samples, float(rate)


FLAGS = flags.FLAGS


def _define_flags():
  """The command's flags, defined only when it runs as a program (tests
  import this module beside others that define --steps and --seed)."""
  flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
  flags.DEFINE_string("out", None, "The file to write: a PNG figure, or the "
                      "sample arrays if it ends in .npz.", required=True)
  flags.DEFINE_enum("method", "gibbs", ["gibbs", "anneal"],
                    "gibbs: Gibbs chains from the data marginals; anneal: "
                    "final states of AIS annealing runs.")
  flags.DEFINE_bool("mh", False, "Metropolis-Hastings-corrected chains "
                    "(--method=gibbs).")
  flags.DEFINE_integer("steps", None, "Gibbs steps (default: the config's "
                       "sample_steps).", lower_bound=1)
  flags.DEFINE_integer("num_betas", 1_000, "Inverse temperatures of each "
                       "annealing run (--method=anneal; the piecewise AIS "
                       "schedule).", lower_bound=2)
  flags.DEFINE_integer("num_samples", None, "Samples (chains or annealing "
                       "runs; default: the config's num_samples).",
                       lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Seed of the chains.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  try:
    config, state = train_lib.load_run(FLAGS.workdir)
    d = train_lib.load_data(config)
  except (train_lib.ConfigError, train_lib.DataError,
          data.DatasetNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  if FLAGS.steps is not None:
    config.sample_steps = FLAGS.steps
  if FLAGS.num_samples is not None:
    config.num_samples = FLAGS.num_samples
  method, out = FLAGS.method, FLAGS.out
  marginals = train_lib.grey_marginals(config, d.train)
  key = jax.random.key(FLAGS.seed)
  if out.lower().endswith(".npz"):
    states, samples, acceptance = draw(
        config, train_lib.model_params(config, state), key, marginals,
        method=method, mh=FLAGS.mh, num_betas=FLAGS.num_betas)
    length = ({"num_steps": config.sample_steps, "mh": FLAGS.mh}
              if method == "gibbs" else {"num_betas": FLAGS.num_betas})
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez_compressed(out, samples=samples,
                        states=states.astype(np.uint8),
                        acceptance_rate=np.float32(acceptance),
                        step=np.int64(state.step), method=method, **length)
  else:
    if method == "gibbs":
      sampler = train_lib.make_sampler(config, mh=FLAGS.mh)
    else:
      sampler = anneal_sampler(config, FLAGS.num_betas)
    blocks, acceptance = train_lib.sample_figure(
        config, sampler, train_lib.model_params(config, state), key, d.test,
        marginals)
    images.save_png(out, *blocks)
  what = (f"{config.num_samples} chains x {config.sample_steps} steps"
          + (", MH" if FLAGS.mh else "") if method == "gibbs" else
          f"{config.num_samples} annealing runs x {FLAGS.num_betas} betas")
  logging.info("Step %d: wrote %s (%s, acceptance %.3f)", int(state.step),
               out, what, acceptance)
  print(out)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
