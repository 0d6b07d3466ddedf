"""What a capsule layer's visible capsules are: the `FrontEnd` interface,
the pixel-patch front end, and what the runner does with any front end
(binarized capsules, the data's marginals, decoding to images).

A `FrontEnd` (front_ends.get builds one from a config):
  kind             "patches", "autoencoder" or "layer"
  shape            (Nv, Dv)
  means(grey)      grey images (N, 28, 28) -> visible means (N, Nv, Dv) in
                   [0, 1]; pure jax (the runner jits it into the update)
  sample(key, grey, mode)
                   binary visible capsules: the means binarized like pixels
                   (config.binarize); for patches, the image is binarized and
                   then cut, exactly as before front ends existed
  decode(v)        visible states or means (N, Nv, Dv) -> grey images
                   (N, 28, 28)
  pixel_space      whether the visible units are pixels (a log-likelihood of
                   the layer is then one of images)
  description      for reports: what the visible units are
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from capsjax import data as data_lib
from experiments.runner import data as data_io
from experiments.runner.config import IMAGE_SIZE


class FrontEnd(NamedTuple):
  kind: str
  shape: tuple[int, int]       # (Nv, Dv)
  means: Callable              # grey (N, 28, 28) -> (N, Nv, Dv) in [0, 1]
  sample: Callable             # (key, grey, mode) -> binary (N, Nv, Dv)
  decode: Callable             # (N, Nv, Dv) -> grey (N, 28, 28)
  pixel_space: bool
  description: str             # for reports: what the visible units are


@functools.lru_cache(maxsize=None)
def patches(patch: int) -> FrontEnd:
  def sample(key, grey, mode):
    # Binarize the image, then cut: the random bits of the runner before
    # front ends existed, so old runs and checkpoints are reproduced exactly.
    return data_lib.images_to_capsules(data_lib.binarize(key, grey, mode),
                                       patch)

  return FrontEnd(
      kind="patches", shape=((IMAGE_SIZE // patch) ** 2, patch * patch),
      means=functools.partial(data_lib.images_to_capsules, patch=patch),
      sample=sample,
      decode=functools.partial(data_lib.capsules_to_images, patch=patch),
      pixel_space=True,
      description=f"pixels, patches of {patch}x{patch}")


def binarized_means(means):
  def sample(key, grey, mode):
    return data_lib.binarize(key, means(grey), mode)
  return sample


def marginals(front_end: FrontEnd, grey) -> np.ndarray:
  """Mean of the visible means over `grey`, (Nv, Dv): the data's marginals
  (for patches, the mean grey level per pixel)."""
  if front_end.kind == "patches":
    return front_end.means(grey.mean(0))
  return batched_mean(front_end, grey)


def to_capsules(front_end: FrontEnd, mode: str, grey, key):
  """Binary visible capsules (..., Nv, Dv) of grey images: the front end's
  means, binarized like pixels (`mode`: config.binarize)."""
  return front_end.sample(key, grey, mode)


@functools.lru_cache(maxsize=32)
def jitted(fn: Callable) -> Callable:
  """One jit wrapper per front-end function (so one compilation per shape)."""
  return jax.jit(fn)


def batched_mean(front_end: FrontEnd, grey, batch_size: int = 1_000):
  """Mean visible means over `grey`, (Nv, Dv), by batches (jnp; traceable)."""
  means = jitted(front_end.means)
  total = 0.0
  for start in range(0, len(grey), batch_size):
    total = total + jnp.sum(means(jnp.asarray(grey[start:start + batch_size])),
                            axis=0)
  return total / len(grey)


def to_numpy_images(front_end: FrontEnd, v, batch_size: int = 1_000
                    ) -> np.ndarray:
  """`decode` over batches of visible capsules, as numpy (N, 28, 28)."""
  return data_io.batched(jitted(front_end.decode), np.asarray(v), batch_size)
