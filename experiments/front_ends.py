r"""Front ends: what a capsule layer's visible capsules are (MODEL.md section 8).

The runner (train_lib, sample, evaluate) trains and evaluates one capsule
layer on visible capsules (N, Nv, Dv) of Bernoulli units. A front end says
where they come from and how they go back to pixels:

  config.front_end = "patches"      (default) pixel patches of
                                    config.patch_size^2 pixels;
  config.front_end = "autoencoder"  the 144 x code_dim sigmoid code of the
                                    autoencoder in config.autoencoder_workdir
                                    (python -m experiments.train_autoencoder);
  config.front_end = "layer"        the hidden probabilities p(h | v; c(v)) of
                                    the trained capsule layer in
                                    config.lower_workdir, as its Nh capsules
                                    of Dh: greedy stacking (a deep belief net
                                    of capsule layers). The lower layer may
                                    itself sit on a "layer" front end, so
                                    stacks of any depth build recursively.

`get(config)` returns a `FrontEnd`:
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

The top-down pass through a routed lower layer. Given the upper state h, the
lower visible means are E[v | h; c], but c = c(v) depends on the unknown v
(MODEL.md section 4). The decode starts from uniform coefficients (c = 1/Nh,
the unrouted layer) and runs `config.topdown_iterations` mean-field rounds
c = c(m), m = E[v | h; c]: a fixed point of the same alternation that
generates the layer's own samples, deterministic, and exact when routing is
off (r = 1: c is uniform whatever v).
"""

from __future__ import annotations

import functools
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import capsjax
from capsjax import data as data_lib

KINDS = ("patches", "autoencoder", "layer")
IMAGE_SIZE = 28


class FrontEnd(NamedTuple):
  kind: str
  shape: tuple[int, int]       # (Nv, Dv)
  means: Callable              # grey (N, 28, 28) -> (N, Nv, Dv) in [0, 1]
  sample: Callable             # (key, grey, mode) -> binary (N, Nv, Dv)
  decode: Callable             # (N, Nv, Dv) -> grey (N, 28, 28)
  pixel_space: bool
  description: str             # for reports: what the visible units are


def _config_error(field, value, why):
  from experiments import train_lib  # pylint: disable=import-outside-toplevel
  return train_lib.ConfigError(f"config.{field} = {value!r}: {why}")


def validate(config) -> None:
  """The front-end fields, before any work (names the field and the fix)."""
  kind = config.get("front_end", "patches")
  if kind not in KINDS:
    raise _config_error("front_end", kind, f"must be one of {KINDS}")
  if kind == "autoencoder" and not config.autoencoder_workdir:
    raise _config_error(
        "autoencoder_workdir", config.autoencoder_workdir,
        "front_end='autoencoder' needs the workdir of a trained autoencoder: "
        "train one with `python -m experiments.train_autoencoder "
        "--workdir=DIR` and pass --config.autoencoder_workdir=DIR")
  if kind == "layer" and not config.lower_workdir:
    raise _config_error(
        "lower_workdir", config.lower_workdir,
        "front_end='layer' needs the workdir of the trained layer below: "
        "train it with `python -m experiments.train` and pass "
        "--config.lower_workdir=DIR")
  t = config.get("topdown_iterations", 3)
  if isinstance(t, bool) or not isinstance(t, int) or t < 0:
    raise _config_error("topdown_iterations", t, "must be an integer >= 0")


def get(config) -> FrontEnd:
  """The config's front end (loaded once per workdir and checkpoint)."""
  validate(config)
  kind = config.get("front_end", "patches")
  if kind == "patches":
    return _patches(config.patch_size)
  if kind == "autoencoder":
    path = os.path.abspath(config.autoencoder_workdir)
    return _autoencoder(path, _latest_step(path))
  path = os.path.abspath(config.lower_workdir)
  return _layer(path, _latest_step(path), config.get("topdown_iterations", 3))


def _latest_step(workdir: str):
  """A cache key that changes when the workdir gets a new checkpoint."""
  try:
    return max((int(d) for d in os.listdir(os.path.join(workdir,
                                                        "checkpoints"))
                if d.isdigit()), default=None)
  except FileNotFoundError:
    return None


@functools.lru_cache(maxsize=None)
def _patches(patch: int) -> FrontEnd:
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


def _binarized_means(means):
  def sample(key, grey, mode):
    return data_lib.binarize(key, means(grey), mode)
  return sample


@functools.lru_cache(maxsize=8)
def _autoencoder(workdir: str, step) -> FrontEnd:
  from experiments import autoencoder  # pylint: disable=import-outside-toplevel
  try:
    ae = autoencoder.load(workdir)
  except autoencoder.AutoencoderError as e:
    raise _config_error("autoencoder_workdir", workdir, str(e)) from None
  del step  # only a cache key
  shape = (ae.config.num_capsules, ae.config.code_dim)
  return FrontEnd(
      kind="autoencoder", shape=shape, means=ae.encode,
      sample=_binarized_means(ae.encode), decode=ae.decode, pixel_space=False,
      description=(f"autoencoder codes ({shape[0]} capsules of {shape[1]}; "
                   f"{workdir}, step {ae.step})"))


def topdown_means(params, h, routing: capsjax.Routing, rounds: int):
  """E[v | h; c] with mean-field coefficients (module docstring)."""
  nv, nh = params["W"].shape[:2]
  c = jnp.full(h.shape[:-2] + (nv, nh), 1.0 / nh, h.dtype)
  m = capsjax.visible_probs(params, h, c)
  if routing.routed:
    for _ in range(rounds):
      c = capsjax.route_visible(params, m, routing)
      m = capsjax.visible_probs(params, h, c)
  return m


@functools.lru_cache(maxsize=8)
def _layer(workdir: str, step, rounds: int) -> FrontEnd:
  from experiments import train_lib  # pylint: disable=import-outside-toplevel
  del step  # only a cache key
  try:
    lower_config, state = train_lib.load_run(workdir)
  except train_lib.ConfigError as e:
    raise _config_error("lower_workdir", workdir, str(e)) from None
  lower = get(lower_config)
  params = jax.device_get(train_lib.model_params(lower_config, state))
  routing = train_lib.make_routing(lower_config)
  nh, dh = params["b"].shape

  def means(grey):
    m = lower.means(grey)
    return capsjax.hidden_probs(params, m,
                                capsjax.route_visible(params, m, routing))

  def decode(h):
    return lower.decode(topdown_means(params, h, routing, rounds))

  return FrontEnd(
      kind="layer", shape=(nh, dh), means=means,
      sample=_binarized_means(means), decode=decode, pixel_space=False,
      description=(f"hidden probabilities of the layer in {workdir} (step "
                   f"{int(state.step)}, r = {routing.num_iterations}; "
                   f"{lower.description})"))


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
  decode = jitted(front_end.decode)
  return np.concatenate([np.asarray(decode(jnp.asarray(v[s:s + batch_size])))
                         for s in range(0, len(v), batch_size)])
