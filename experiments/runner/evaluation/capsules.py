"""The binarized visible capsules of a split, by batches: batch i is
binarized with fold_in(key, i), fixed for a given key and batch size, and
the full split never sits on the device at once."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import capsjax
from experiments.runner import visible


@functools.lru_cache(maxsize=16)
def _jitted_sample(front_end: visible.FrontEnd, mode: str):
  return jax.jit(lambda grey, key: front_end.sample(key, grey, mode))


def capsule_batches(front_end: visible.FrontEnd, mode: str, grey: np.ndarray,
                    key, batch_size: int):
  """Yields binarized capsules (n, Nv, Dv) of consecutive batches of `grey`
  (`mode`: config.binarize)."""
  sample = _jitted_sample(front_end, mode)
  for i, start in enumerate(range(0, len(grey), batch_size)):
    yield sample(grey[start:start + batch_size], jax.random.fold_in(key, i))


def binarize_capsules(front_end: visible.FrontEnd, mode: str,
                      grey: np.ndarray, key, batch_size: int) -> np.ndarray:
  """Binarized capsules (N, Nv, Dv) of grey images, as numpy."""
  return np.concatenate([np.asarray(v) for v in capsule_batches(
      front_end, mode, grey, key, batch_size)])


def base_bias(front_end: visible.FrontEnd, mode: str, train_grey: np.ndarray,
              key, batch_size: int) -> jax.Array:
  """`base_rate_bias` of the binarized training set, computed by batches."""
  total = 0.0
  for v in capsule_batches(front_end, mode, train_grey, key, batch_size):
    total = total + jnp.sum(v, axis=0)
  # The mean as a batch of one: base_rate_bias averages over leading axes.
  return capsjax.base_rate_bias((total / len(train_grey))[None])
