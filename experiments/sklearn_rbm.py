r"""An external baseline: scikit-learn's BernoulliRBM, loaded into capsjax.

  python -m experiments.sklearn_rbm --config=experiments/configs/default.py \
      --workdir=runs/sklearn_rbm [--n_iter=60] [--learning_rate=0.1]
  python -m experiments.evaluate --workdir=runs/sklearn_rbm

Trains `sklearn.neural_network.BernoulliRBM` with as many hidden neurons as
the config's layer (num_hidden_capsules x hidden_dim) on the config's
training images, binarized the same way, with the config's batch size, then
writes a workdir that `experiments.evaluate` reads like any training run:

  config.json     the config with one upper capsule (num_hidden_capsules=1,
                  hidden_dim=n_components, num_iterations=1) and the RBM's
                  optimizer settings, plus `baseline`
  checkpoints/    a capsjax TrainState holding the converted weights
  sklearn_rbm.json  the sklearn settings, version and training wall time

With one upper capsule every coupling coefficient is softmax over one logit,
1, so the capsule layer *is* that RBM: W[i, 0] is the block of sklearn's
`components_` that connects pixel patch i to the hidden neurons, in the
order `capsjax.data.images_to_capsules` lays out pixels.

Defaults: n_iter (epochs) gives as many updates as config.num_steps;
learning_rate is config.learning_rate / (1 - config.momentum_final), the
long-run step of SGD with that momentum (sklearn has none), which for the
default configs' effective weights (weight_scale="num_hidden_capsules") is
the same step per update: 0.1 for the default config, sklearn's own default.

scikit-learn trains with persistent CD-1 (its "SML"), on one fixed
binarization of the training set (capsjax redraws it every batch), in
numpy on the host.

The machinery: experiments/runner/baselines/sklearn_rbm.py.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments.runner import harness
from experiments.runner import metrics
from experiments.runner.baselines import sklearn_rbm


def _define_flags():
  """The command's flags, defined only when run as a command: the module is
  also a library (tests import it next to other commands' flags)."""
  flags.DEFINE_string("workdir", None, "Where the baseline run goes.",
                      required=True)
  config_flags.DEFINE_config_file("config", None, "The capsjax run config to "
                                  "match (data, hidden neurons, batch size).",
                                  lock_config=True)
  flags.DEFINE_integer("n_iter", None, "Epochs (default: as many updates as "
                       "config.num_steps).", lower_bound=1)
  flags.DEFINE_float("learning_rate", None, "sklearn's learning_rate "
                     "(default: config.learning_rate / (1 - "
                     "config.momentum_final)).", lower_bound=0)
  flags.DEFINE_integer("blas_threads", 1, "BLAS threads of the fit (small "
                       "products: one is fastest on a few cores).",
                       lower_bound=1)
  flags.DEFINE_bool("verbose", False, "sklearn's per-epoch pseudo-likelihood.")
  flags.mark_flags_as_required(["config"])


@harness.exit_on_error()
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  f = flags.FLAGS
  info = sklearn_rbm.train_baseline(
      f.config, f.workdir, n_iter=f.n_iter, learning_rate=f.learning_rate,
      blas_threads=f.blas_threads, verbose=f.verbose)
  print(f"{sklearn_rbm.BASELINE}(n_components={info['n_components']}, "
        f"learning_rate={info['learning_rate']:g}, "
        f"batch_size={info['batch_size']}, n_iter={info['n_iter']}) trained "
        f"in {info['train_time_s']:.1f} s; wrote {f.workdir}")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=harness.parse_flags)
