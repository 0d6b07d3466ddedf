"""The data: both splits in memory, checked; the batches of each step; and
the one helper that maps a function over fixed-size batches (`batched`)."""

from __future__ import annotations

import functools
import os
from typing import Callable, NamedTuple

import jax
import numpy as np

from capsjax import data as data_lib
from experiments.runner import sharding as sharding_lib
from experiments.runner.config import IMAGE_SIZE
from experiments.runner.errors import ConfigError
from experiments.runner.errors import DataError


class Data(NamedTuple):
  train: np.ndarray        # (N, 28, 28) grey levels in [0, 1]
  train_labels: np.ndarray
  test: np.ndarray
  test_labels: np.ndarray


def load_data(config) -> Data:
  """Every process holds the whole dataset (it slices its part of a batch).

  With several processes, process 0 reads (and, the first time, prepares)
  it first: TFDS preparations racing on a shared data_dir would collide.
  """
  if jax.process_index() == 0:
    data = _read_data(config)
  sharding_lib.barrier("capsjax: dataset prepared")
  if jax.process_index() != 0:
    data = _read_data(config)
  return data


def read_data(config) -> Data:
  """Both splits of config.dataset as grey images in [0, 1], unchecked
  (config.data_dir: "" is ~/tensorflow_datasets; config.data_manual_dir:
  raw files for offline preparation)."""
  kwargs = dict(data_dir=config.data_dir or os.path.join(
      os.path.expanduser("~"), "tensorflow_datasets"),
                manual_dir=config.data_manual_dir or None)
  train, train_labels = data_lib.load_split(config.dataset, "train", **kwargs)
  test, test_labels = data_lib.load_split(config.dataset, "test", **kwargs)
  return Data(train, train_labels, test, test_labels)


def _read_data(config) -> Data:
  data = read_data(config)
  for split, grey in (("train", data.train), ("test", data.test)):
    check_images(f"{config.dataset} {split}", grey)
  if len(data.train) < config.batch_size:
    raise ConfigError(f"config.batch_size = {config.batch_size} exceeds the "
                      f"{len(data.train)} training images of {config.dataset}")
  return data


def check_images(name: str, images: np.ndarray) -> None:
  """Grey images (N, 28, 28), finite, in [0, 1]; the error names the first
  offending example and how many there are."""
  if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise DataError(f"{name}: images must have shape (N, {IMAGE_SIZE}, "
                    f"{IMAGE_SIZE}); got {images.shape}")
  if len(images) == 0:
    raise DataError(f"{name}: the split is empty")
  for problem, bad in (("non-finite values", ~np.isfinite(images)),
                       ("values outside [0, 1]", (images < 0) | (images > 1))):
    per_example = bad.reshape(len(images), -1).any(axis=1)
    if per_example.any():
      raise DataError(f"{name}: {per_example.sum()} images have {problem}; "
                      f"the first is index {int(np.argmax(per_example))}")


def batch_indices(config, num_examples: int, step: int) -> np.ndarray:
  """The examples of `step`: a fresh permutation each epoch, from the seed."""
  steps_per_epoch = num_examples // config.batch_size
  epoch, position = divmod(step, steps_per_epoch)
  perm = _permutation(config.seed, epoch, num_examples)
  return perm[position * config.batch_size:(position + 1) * config.batch_size]


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  key = jax.random.fold_in(jax.random.key(seed), epoch)
  return np.asarray(jax.random.permutation(key, n))


def batched(fn: Callable, v: np.ndarray, batch_size: int) -> np.ndarray:
  """`fn` over fixed-size batches of `v`, concatenated along axis 0.

  The last batch is padded to `batch_size` and trimmed, so `fn` (jitted)
  compiles once and memory stays at one batch whatever the data size; data
  smaller than one batch is one batch of its own size (no padding). `fn`
  must treat examples independently.
  """
  batch_size = min(batch_size, len(v))
  out = []
  for start in range(0, len(v), batch_size):
    batch = v[start:start + batch_size]
    n = len(batch)
    if n < batch_size:
      pad = np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, pad])
    out.append(np.asarray(fn(batch))[:n])
  return np.concatenate(out)
