"""The routing diagram's inputs from a config and parameters: one grey
image made into visible capsules exactly as training makes them, routed
(`route_image`), and drawn with its caption (`routing_figure`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import capsjax
from experiments.runner import data as data_io
from experiments.runner import factories
from experiments.runner import visible
from experiments.runner.diagram.drawing import draw_routing


class Routing(NamedTuple):
  visible: np.ndarray         # (Nv, Dv) the visible capsules
  coefficients: np.ndarray    # (Nv, Nh)
  hidden_probs: np.ndarray    # (Nh, Dh) p(h = 1 | v; c)
  lengths: np.ndarray         # (Nh,) squash lengths |o_j|
  entropy: np.ndarray         # (Nv,) nats


def route_image(config, front_end: visible.FrontEnd, params, grey: np.ndarray,
                key: jax.Array) -> Routing:
  """Visible capsules of one grey image (as training makes them), routed."""
  v = visible.to_capsules(front_end, config.binarize, jnp.asarray(grey)[None],
                          key)
  v = v.astype(params["W"].dtype)
  routed = capsjax.route(capsjax.predictions(params, v),
                         factories.make_routing(config))
  c = routed.coefficients
  p = capsjax.hidden_probs(params, v, c)
  return Routing(np.asarray(v[0]), np.asarray(c[0]), np.asarray(p[0]),
                 np.linalg.norm(np.asarray(routed.outputs[0]), axis=-1),
                 np.asarray(capsjax.routing_entropy(c)[0]))


def routing_figure(config, front_end: visible.FrontEnd, params,
                   grey: np.ndarray, key: jax.Array, *, title: str = "",
                   step: int | None = None) -> np.ndarray:
  """`draw_routing` of one grey image (28, 28) through a trained layer."""
  routed = route_image(config, front_end, params, grey, key)
  nv, _ = front_end.shape
  nh = config.num_hidden_capsules
  patches = grid = None
  if config.get("front_end", "patches") == "patches":
    p = config.patch_size
    patches = routed.visible.reshape(nv, p, p)
    grid = (grey.shape[0] // p, grey.shape[1] // p)
  c = routed.coefficients
  # An all-zero capsule votes 0 for every upper capsule, so its
  # coefficients stay uniform whatever the weights.
  active = np.any(routed.visible != 0, axis=-1)
  def stats(mask):
    return (f"entropy {routed.entropy[mask].mean():.2f} nats, "
            f"mean max_j c_ij {c[mask].max(axis=1).mean():.2f}")
  caption = [
      (f"{'step ' + str(step) + ', ' if step is not None else ''}"
       f"r = {config.num_iterations} routing iterations. Uniform routing "
       f"would give entropy log {nh} = {math.log(nh):.2f} nats and max_j c_ij "
       f"= 1/{nh}; here:"),
      (f"over all {nv} lower capsules {stats(np.ones_like(active))}; over the "
       f"{active.sum()} non-zero ones "
       + (stats(active) if active.any() else "(none)")
       + " (an all-zero capsule votes 0, so its c_ij stay uniform)"),
      ("lower box: mean of the capsule's visible values"
       + (" (fraction of pixels on; inset: the binarized patch)"
          if patches is not None else "")
       + "; upper box: mean p(h=1 | v; c) over its neurons"),
      "edge i -> j: opacity c_ij (from a dot, over the boxes, if c_ij >= "
      "0.5); beside each upper capsule j: c_ij of every lower capsule i on "
      "the lower grid, p(h=1), the squash length |o_j|, sum_i c_ij",
  ]
  return draw_routing(grey, routed.visible.mean(axis=-1),
                      routed.hidden_probs.mean(axis=-1), c, patches=patches,
                      upper_length=routed.lengths, grid=grid, title=title,
                      caption=caption)


def save_png(path: str, figure: np.ndarray) -> None:
  """Writes an RGB figure as a 256-colour PNG (undithered; a few times
  smaller than RGB, with no visible change)."""
  Image.fromarray(figure).quantize(256, dither=Image.Dither.NONE).save(
      path, optimize=True)


def select_image(d: data_io.Data, split: str, index: int):
  """(grey image, label) of `split`; ValueError naming the range if none."""
  grey, labels = (d.test, d.test_labels) if split == "test" else (
      d.train, d.train_labels)
  if not 0 <= index < len(grey):
    raise ValueError(f"--index={index} is out of range: the {split} split "
                     f"has {len(grey)} images (0 to {len(grey) - 1})")
  return np.asarray(grey[index]), int(labels[index])
