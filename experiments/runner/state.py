"""The training state: its random streams, its initial value and shape, and
where it lives (the device mesh and the shardings of state and batch)."""

from __future__ import annotations

from flax import nnx
import jax
import numpy as np

import capsjax
from experiments.runner import factories
from experiments.runner import sharding as sharding_lib
from experiments.runner import visible
from experiments.runner.config import IMAGE_SIZE
from experiments.runner.errors import ConfigError


def keys(config):
  """One independent stream per use, all from `config.seed`."""
  names = ("init", "chains", "train", "binarize", "eval_train", "eval_test",
           "sample", "pll")
  return dict(zip(names, jax.random.split(jax.random.key(config.seed),
                                          len(names))))


def shapes(config, front_end: visible.FrontEnd):
  """(Nv, Dv, Nh, Dh) of the layer; (Nv, Dv) from the front end."""
  nv, dv = front_end.shape
  return (nv, dv, config.num_hidden_capsules, config.hidden_dim)


def initial_state(config, front_end: visible.FrontEnd, train_grey,
                  optimizer) -> capsjax.TrainState:
  nv, dv, nh, dh = shapes(config, front_end)
  streams = keys(config)
  marginals = visible.marginals(front_end, train_grey)
  # `config.init_scale` is the std of the effective weights W / scale. The
  # key is the one nnx.Rngs gave the layer before 0.2: the same initial W.
  params = capsjax.init_params(
      nnx.Rngs(params=streams["init"]).params(), nv, dv, nh, dh,
      weight_std=config.init_scale, weight_scale=factories.weight_scale(config),
      data=marginals[None])
  chain = None
  if config.persistent:
    # PCD chains start at binarized training images.
    n = config.num_chains or config.batch_size
    v0 = visible.to_capsules(front_end, config.binarize,
                             train_grey[np.arange(n) % len(train_grey)],
                             streams["chains"])
    chain = factories.make_kernel(config).init(params, v0)
  offsets = (capsjax.init_offsets(params, marginals[None])
             if config.centering else None)
  return capsjax.init_train_state(params, optimizer, chain=chain,
                                  offsets=offsets)


def abstract_state(config, front_end: visible.FrontEnd) -> capsjax.TrainState:
  """The state's structure, shapes and dtypes, for restoring."""
  grey = np.zeros((config.batch_size, IMAGE_SIZE, IMAGE_SIZE), np.float32)
  return jax.eval_shape(lambda: initial_state(
      config, front_end, grey, factories.make_optimizer(config)))


def data_parallel_devices(config) -> int:
  """The number of devices the batch is split over, checked.

  Raises ConfigError when config.num_devices exceeds the devices JAX sees,
  leaves some out on several hosts, or does not divide the batch, the
  persistent chains (or Nh, with config.shard_weights).
  """
  available = jax.device_count()
  n = config.num_devices or available
  where = (f"{available} {jax.devices()[0].platform} device(s)"
           + (f" on {jax.process_count()} processes"
              if jax.process_count() > 1 else ""))
  if n > available:
    raise ConfigError(f"config.num_devices = {n}: JAX sees only {where}")
  if jax.process_count() > 1 and n != available:
    raise ConfigError(f"config.num_devices = {n}: a multi-process run uses "
                      f"every device ({where}); set 0")
  if config.batch_size % n:
    raise ConfigError(f"config.batch_size = {config.batch_size} must be a "
                      f"multiple of the {n} data-parallel devices")
  if config.persistent and config.num_chains % n:
    raise ConfigError(f"config.num_chains = {config.num_chains} must be a "
                      f"multiple of the {n} data-parallel devices")
  if config.shard_weights and config.num_hidden_capsules % n:
    raise ConfigError(
        f"config.num_hidden_capsules = {config.num_hidden_capsules} must be a "
        f"multiple of the {n} devices W is sharded over "
        "(config.shard_weights)")
  return n


def make_shardings(config, front_end: visible.FrontEnd
                   ) -> sharding_lib.Shardings:
  """The mesh and the shardings of the state and the batch (sharding.py)."""
  return sharding_lib.make_shardings(
      data_parallel_devices(config), abstract_state(config, front_end),
      shard_weights=config.shard_weights)
