"""What the public functions need to know about a sharded batch.

Under a mesh whose axes are explicit (`jax.make_mesh`'s default), an
array's type carries its sharding, and a contraction over a sharded axis
must say how its result is sharded. The functions here read that type; on
one device, under `AxisType.Auto` and inside `shard_map` (whose arrays are
per-shard) they change nothing.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec


def _explicit_mesh(x):
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty:
    return None
  if not any(t == AxisType.Explicit for t in mesh.axis_types):
    return None
  return mesh


def is_sharded(x) -> bool:
  """Whether x is split over a mesh's explicit axes."""
  if _explicit_mesh(x) is None:
    return False
  return any(axis is not None for axis in jax.typeof(x).sharding.spec)


def replicated(x):
  """`out_sharding` for a sum over x's batch axes: replicated on x's mesh
  when x is split over explicit axes, else None (XLA decides)."""
  mesh = _explicit_mesh(x)
  if mesh is None or not is_sharded(x):
    return None
  return NamedSharding(mesh, PartitionSpec())


def keep_leading(x, ndim: int):
  """`out_sharding` for a reshape of x into `ndim` axes that changes only
  axes x does not split: the split (leading) axes keep their mesh axes.
  None when x is not split over explicit axes."""
  if not is_sharded(x):
    return None
  spec = tuple(jax.typeof(x).sharding.spec)
  split = [i for i, axis in enumerate(spec) if axis is not None]
  keep = max(split) + 1
  return NamedSharding(_explicit_mesh(x),
                       PartitionSpec(*spec[:keep], *([None] * (ndim - keep))))
