r"""Trains a capsule layer with contrastive divergence.

  python -m experiments.train --config=experiments/configs/default.py \
      --workdir=/tmp/capsjax_default [--config.num_steps=200 ...]

Re-running the same command resumes from the latest checkpoint in workdir.

On several hosts, start the same command on every host, adding either
--distributed (a Cloud TPU VM slice, SLURM, Open MPI, Kubernetes: JAX finds
the cluster) or --coordinator_address=HOST:PORT --num_processes=N
--process_id=I (I = 0 on the coordinator's host). Only process 0 writes
metrics, samples and logs; checkpoints are written by all (Orbax).
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from experiments.runner import harness
from experiments.runner import loop
from experiments.runner import metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics "
                               "and samples go.", required=True)
config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                lock_config=True)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host: jax.distributed.initialize() from the "
    "environment (Cloud TPU, SLURM, Open MPI, Kubernetes, or "
    "JAX_COORDINATOR_ADDRESS with the two flags below).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: HOST:PORT of process 0, where "
    "the coordination service listens; implies --distributed.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-host: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-host: this process's index, 0 to "
    "num_processes - 1.")


def initialize_distributed() -> None:
  """Joins the multi-process run that the flags describe, if any.

  Must run before JAX touches a device.
  """
  if not (_DISTRIBUTED.value or _COORDINATOR.value
          or _NUM_PROCESSES.value is not None
          or _PROCESS_ID.value is not None):
    return
  try:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  except (ValueError, RuntimeError) as e:
    raise SystemExit(f"error: jax.distributed.initialize failed ({e}); pass "
                     "--coordinator_address, --num_processes and "
                     "--process_id, or run where JAX detects the cluster") \
        from None
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # process 0 logs the run


@harness.exit_on_error()
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  initialize_distributed()
  loop.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=harness.parse_flags)
