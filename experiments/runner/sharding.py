"""Data-parallel CD training on a device mesh, on one host or many.

One mesh axis, "data". The batch and the persistent chains are split over
it along the batch axis; the parameters and the optimizer state are
replicated, or (`shard_weights`) W and the optimizer's copies of it are
split along their Nh axis over the same devices (FSDP-style: each device
stores 1/n of W, the update gathers it for the step).

The axis is explicit (`jax.make_mesh`'s default): an array's type carries
its sharding, capsjax's functions take the batch split over it and say
where their batch sums go (the all-reduce of the batch-averaged gradient),
and the runner's update (update.make_update) makes the visible capsules
under `auto_axes` and, with `shard_weights`, gathers W for the step.

Random draws do not depend on the number of devices: with
`jax_threefry_partitionable` (JAX's default) a draw of a given global shape
is the same array whatever its sharding. Results then differ across device
counts only by the order of float reductions.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA = "data"


class Shardings(NamedTuple):
  mesh: jax.sharding.Mesh
  state: Any                   # a pytree of NamedSharding, like the state
  batch: NamedSharding         # (B, ...) split over DATA
  replicated: NamedSharding    # scalars and metrics


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
  """A 1-D "data" mesh (explicit axis) over the first `num_devices` of
  `jax.devices()`."""
  return jax.make_mesh((num_devices,), (DATA,),
                       devices=jax.devices()[:num_devices])


def _path_names(path) -> set:
  return {getattr(k, "key", getattr(k, "name", None)) for k in path}


def state_shardings(mesh, abstract_state, *, shard_weights: bool = False):
  """NamedShardings for a `capsjax.TrainState` (or its abstract shape).

  The persistent chain (its visible states and coefficients, batch-first;
  a tempering ladder's after its rung axis) is split over DATA; W and every
  optimizer leaf of W's shape (momentum, Adam moments) over DATA along Nh
  when `shard_weights`; the rest is
  replicated.
  """
  w_shape = abstract_state.params["W"].shape

  def sharding(path, leaf):
    names = _path_names(path)
    if "chain" in names:
      if "parity" in names:  # a tempering ladder's scalar
        return NamedSharding(mesh, P())
      # A tempering ladder's chains are (rungs, chains, ...).
      return NamedSharding(mesh, P(None, DATA) if "ladder" in names
                           else P(DATA))
    if shard_weights and "W" in names and leaf.shape == w_shape:
      return NamedSharding(mesh, P(None, DATA))
    return NamedSharding(mesh, P())

  return jax.tree.map_with_path(sharding, abstract_state)


def make_shardings(num_devices: int, abstract_state, *,
                   shard_weights: bool = False) -> Shardings:
  mesh = make_mesh(num_devices)
  return Shardings(
      mesh=mesh,
      state=state_shardings(mesh, abstract_state, shard_weights=shard_weights),
      batch=NamedSharding(mesh, P(DATA)),
      replicated=NamedSharding(mesh, P()))


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs that carry `shardings`: Orbax restores into them."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)


def _placed(x, sharding) -> bool:
  # Equal, not merely equivalent: a single-device array is equivalent to a
  # 1-device mesh's sharding but has another type, which would retrace
  # the step once.
  return isinstance(x, jax.Array) and x.sharding == sharding


def place(tree, shardings):
  """`tree` as global arrays with `shardings` (leaves already there are kept).

  The values must be the same on every process (e.g. computed from the
  seed): each process fills its own devices from its copy.
  """
  def one(x, sharding):
    if _placed(x, sharding):
      return x
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding,
                                        lambda index: host[index])
  return jax.tree.map(one, tree, shardings)


def global_batch(images: np.ndarray, indices: np.ndarray,
                 sharding: NamedSharding) -> jax.Array:
  """`images[indices]` as one array split by `sharding`.

  Each process reads only the rows of its own devices from its host copy
  of the data, so on many hosts the global batch is never gathered.
  """
  shape = (len(indices),) + images.shape[1:]
  return jax.make_array_from_callback(
      shape, sharding, lambda index: images[indices[index[0]]][
          (slice(None),) + tuple(index[1:])])


def to_host(tree):
  """Numpy copies of a pytree of (possibly multi-host) arrays.

  A collective when the arrays span processes: call it on every process.
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))
  return jax.tree.map(one, tree)


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (a collective on several).

  SIGTERM reaches each host on its own: the hosts must agree on the update
  at which they all save and stop, or the save would wait forever.
  """
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


_barriers = itertools.count()


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Waits for every process (a no-op on one).

  A barrier of JAX's coordination service, not a device collective: a
  collective that waits for a process still compiling can time out
  (gloo's 30 s on CPUs), this waits up to `timeout_s`.
  """
  if jax.process_count() == 1:
    return
  # No public API for it; Orbax uses the same client.
  client = jax_distributed.global_state.client
  if client is None:  # multi-process without jax.distributed: a collective
    multihost_utils.sync_global_devices(name)
    return
  # Numbered: every process passes the same points in the same order, and
  # a point may be passed twice (train_and_evaluate called again).
  client.wait_at_barrier(f"{name}#{next(_barriers)}", timeout_s * 1000)
