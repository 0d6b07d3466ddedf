r"""Draws the routing of one image through a trained layer (the paper's Figure 1).

  python -m experiments.routing_diagram --workdir=runs/diagram_r3 --index=0 \
      --out=docs/images/routing_diagram_test0.png [--split=test] [--seed=0]

Loads the config recorded in the workdir and its latest checkpoint, takes
image `--index` of `--split`, makes its visible capsules exactly as training
does (`train_lib.to_capsules`: for the pixel-patch front end, a stochastic
binarization drawn with `--seed`, cut into patches; the model never sees
grey levels), routes them with the config's routing (`num_iterations`,
`routing_temperature`; `capsjax.route`) and writes a PNG:

- left: the grey input image (ink on white), with the patch grid;
- middle: the lower capsules on a square-ish grid (for patches, the image's
  patch grid), each box shaded by the capsule's activation, the mean of its
  visible neuron values (for binary pixels, the fraction of pixels on),
  and for the patch front end the binarized patch itself drawn inside;
- right: one row per upper capsule j: a box shaded by its activation, the
  mean over its neurons of p(h_jk = 1 | v; c) (MODEL.md section 3: the
  routing-weighted input s_j = sum_i c_ij W_ij v_i through the hidden
  biases), then a map of c_ij over the lower grid (where capsule j takes its
  input from), then three numbers: mean p(h = 1), the squash length |o_j|
  and sum_i c_ij (how many lower capsules' worth of input it receives);
- edges from lower capsule i to upper capsule j with opacity c_ij (drawn
  weakest first, so the strong ones lie on top; those with c_ij >= 0.5
  start at a dot and are drawn over the lower boxes, the rest under them);
- a caption: the step, r, the mean routing entropy in nats (log Nh when
  routing is uniform, 0 when every lower capsule picks one upper capsule)
  and the mean of max_j c_ij, over all lower capsules and over the non-zero
  ones (an all-zero capsule votes 0 for every upper capsule, so its
  coefficients stay uniform whatever the weights).

The boxes are shaded by the mean hidden probability rather than by the
squash length |o_j| because that is what the energy model uses (the upper
capsule's neurons are experts fed by s_j); |o_j| is the routing's own
notion of presence and only enters through the coefficients, so it is
printed beside it.

Everything darker means "more": more pixels on, higher probability, larger
c_ij. `draw_routing` (arrays in, an RGB uint8 array out) is the reusable
drawing, `layout` its geometry; `routing_figure` computes its inputs from a
config and parameters; `run` is the command.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

import capsjax
from capsjax import data
from experiments import metrics
from experiments import train_lib

# Colours (RGB). Edges and coefficient maps share one hue, distinct from the
# grey ink of activations.
WHITE = (255, 255, 255)
OUTLINE = (150, 150, 150)
TEXT = (20, 20, 20)
EDGE = (200, 40, 20)

_FONT_SIZE = 12


def _font(size: int = _FONT_SIZE):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # pillow without FreeType: the bitmap font
    return ImageFont.load_default()


def _ink(value: float) -> tuple[int, int, int]:
  """Grey for a value in [0, 1]: 0 white, 1 black."""
  g = int(round(255 * (1.0 - float(np.clip(value, 0.0, 1.0)))))
  return (g, g, g)


def _tint(value: float) -> tuple[int, int, int]:
  """White -> EDGE for a coefficient in [0, 1] (the edge colour at c = 1)."""
  t = float(np.clip(value, 0.0, 1.0))
  return tuple(int(round(255 + t * (e - 255))) for e in EDGE)


def grid_shape(num_lower: int) -> tuple[int, int]:
  """(rows, cols) of a square-ish grid holding `num_lower` boxes."""
  cols = math.ceil(math.sqrt(num_lower))
  return math.ceil(num_lower / cols), cols


class Layout(NamedTuple):
  """Pixel geometry of a diagram; boxes are (x0, y0, x1, y1), inclusive."""
  size: tuple[int, int]                 # (width, height)
  image_box: tuple[int, int, int, int]
  lower_boxes: np.ndarray               # (Nv, 4)
  upper_boxes: np.ndarray               # (Nh, 4)
  map_boxes: np.ndarray                 # (Nh, 4): the c_ij maps
  map_cell: int                         # pixels per lower capsule in a map
  text_x: int                           # where the per-capsule numbers start
  caption_y: int
  grid: tuple[int, int]                 # (rows, cols) of the lower capsules

  def lower_anchor(self, i: int) -> tuple[float, float]:
    """Where edges leave lower capsule i (its box centre)."""
    x0, y0, x1, y1 = self.lower_boxes[i]
    return (x0 + x1) / 2, (y0 + y1) / 2

  def upper_anchor(self, j: int) -> tuple[float, float]:
    """Where edges reach upper capsule j (the middle of its box's left side)."""
    x0, y0, _, y1 = self.upper_boxes[j]
    return float(x0), (y0 + y1) / 2


def layout(num_lower: int, num_upper: int, *,
           grid: tuple[int, int] | None = None, image_size: int = 168,
           row_height: int = 34, edge_width: int = 300,
           caption_lines: int = 4) -> Layout:
  """The geometry of `draw_routing` for Nv lower and Nh upper capsules."""
  rows, cols = grid or grid_shape(num_lower)
  if rows * cols < num_lower:
    raise ValueError(f"grid {rows}x{cols} holds fewer than {num_lower} "
                     "lower capsules")
  margin, title_h = 14, 22
  top = margin + title_h
  upper_h = num_upper * row_height
  # Lower boxes: as large as the upper column's height allows, 12-48 px.
  cell = int(np.clip(max(upper_h, image_size) // rows, 12, 48))
  gap = max(2, cell // 8)
  lower_h = rows * cell
  body_h = max(upper_h, lower_h, image_size)

  image_box = (margin, top + (body_h - image_size) // 2,
               margin + image_size - 1,
               top + (body_h - image_size) // 2 + image_size - 1)
  gx0 = image_box[2] + 1 + 2 * margin
  gy0 = top + (body_h - lower_h) // 2
  lower = np.array([[gx0 + (i % cols) * cell, gy0 + (i // cols) * cell,
                     gx0 + (i % cols + 1) * cell - gap - 1,
                     gy0 + (i // cols + 1) * cell - gap - 1]
                    for i in range(num_lower)], np.int64)
  ux0 = gx0 + cols * cell + edge_width
  uy0 = top + (body_h - upper_h) // 2
  box = row_height - 6
  upper = np.array([[ux0, uy0 + j * row_height + 3, ux0 + box - 1,
                     uy0 + j * row_height + 3 + box - 1]
                    for j in range(num_upper)], np.int64)
  map_cell = max(2, (row_height - 4) // max(rows, cols))
  mx0 = ux0 + box + 8
  maps = np.array([[mx0, y0 - 1, mx0 + cols * map_cell - 1,
                    y0 - 1 + rows * map_cell - 1] for _, y0, _, _ in upper],
                  np.int64)
  text_x = mx0 + max(cols * map_cell, 56) + 8
  caption_y = top + body_h + margin
  width = text_x + 170 + margin
  height = caption_y + caption_lines * (_FONT_SIZE + 4) + 40 + margin
  return Layout((width, height), image_box, lower, upper, maps, map_cell,
                text_x, caption_y, (rows, cols))


def draw_routing(image: np.ndarray | None, lower_activation: np.ndarray,
                 upper_activation: np.ndarray, coefficients: np.ndarray, *,
                 patches: np.ndarray | None = None,
                 upper_length: np.ndarray | None = None,
                 grid: tuple[int, int] | None = None,
                 title: str = "", caption: Sequence[str] = (),
                 min_coefficient: float = 0.004,
                 strong_coefficient: float = 0.5) -> np.ndarray:
  """A routing diagram as an RGB uint8 array (H, W, 3).

  Args:
    image: the input image (h, w), grey levels in [0, 1], drawn as ink on
      white (1 = black); None draws no image.
    lower_activation: (Nv,) in [0, 1], the shade of each lower box.
    upper_activation: (Nh,) in [0, 1], the shade of each upper box.
    coefficients: (Nv, Nh) routing coefficients; edge i -> j has opacity
      c_ij. Edges with c_ij < min_coefficient are not drawn (invisible
      anyway: below 1/255 of full opacity). Edges with c_ij >=
      strong_coefficient are drawn over the lower boxes, from a dot.
    patches: optional (Nv, ph, pw) in [0, 1], drawn inside the lower boxes.
    upper_length: optional (Nh,) squash lengths |o_j|, printed beside the
      upper capsules.
    grid: (rows, cols) of the lower capsules (row-major); default square-ish.
    title, caption: text above and below.
  """
  lower_activation = np.asarray(lower_activation, np.float64)
  upper_activation = np.asarray(upper_activation, np.float64)
  c = np.asarray(coefficients, np.float64)
  nv, nh = c.shape
  if lower_activation.shape != (nv,) or upper_activation.shape != (nh,):
    raise ValueError(
        f"coefficients {c.shape} need lower_activation ({nv},) and "
        f"upper_activation ({nh},); got {lower_activation.shape} and "
        f"{upper_activation.shape}")
  if patches is not None and len(patches) != nv:
    raise ValueError(f"patches: {len(patches)} for {nv} lower capsules")
  geo = layout(nv, nh, grid=grid, caption_lines=len(caption))
  canvas = Image.new("RGB", geo.size, WHITE)
  draw = ImageDraw.Draw(canvas, "RGBA")  # RGBA fills blend onto the canvas
  font, small = _font(), _font(10)

  draw.text((geo.image_box[0], 10), title, fill=TEXT, font=_font(14))

  # The input image, with the patch grid.
  if image is not None:
    x0, y0, x1, y1 = geo.image_box
    size = (x1 - x0 + 1, y1 - y0 + 1)
    grey = np.asarray(image, np.float64)
    ink = Image.fromarray(_to_uint8(1.0 - grey)).resize(size, Image.NEAREST)
    canvas.paste(ink.convert("RGB"), (x0, y0))
    if patches is not None:
      rows, cols = geo.grid
      for k in range(1, cols):
        x = x0 + k * size[0] / cols
        draw.line([(x, y0), (x, y1)], fill=(90, 140, 220, 160))
      for k in range(1, rows):
        y = y0 + k * size[1] / rows
        draw.line([(x0, y), (x1, y)], fill=(90, 140, 220, 160))
    draw.rectangle(geo.image_box, outline=OUTLINE)
    draw.text((x0, y1 + 4), "input", fill=TEXT, font=small)

  # Edges, weakest first so that strong ones are not hidden. Weak edges go
  # under the lower boxes; strong ones (c_ij >= strong_coefficient) are
  # drawn over them from a dot at the source, so that an edge leaving an
  # inner box is not mistaken for one leaving a box on its way.
  order = [divmod(int(flat), nh)
           for flat in np.argsort(c, axis=None, kind="stable")
           if c.flat[flat] >= min_coefficient]
  def edge(i, j):
    alpha = int(round(255 * min(1.0, c[i, j])))
    draw.line([geo.lower_anchor(i), geo.upper_anchor(j)],
              fill=EDGE + (alpha,), width=2)
  for i, j in order:
    if c[i, j] < strong_coefficient:
      edge(i, j)

  # Lower capsules: boxes shaded by activation, the patch inside.
  for i, (x0, y0, x1, y1) in enumerate(geo.lower_boxes):
    draw.rectangle((x0, y0, x1, y1), fill=_ink(lower_activation[i]),
                   outline=OUTLINE)
    if patches is not None:
      side = x1 - x0 + 1
      inset = max(2, side // 5)
      inner = side - 2 * inset
      patch = Image.fromarray(_to_uint8(1.0 - np.asarray(patches[i])))
      canvas.paste(patch.resize((inner, inner), Image.NEAREST).convert("RGB"),
                   (int(x0 + inset), int(y0 + inset)))
      draw.rectangle((x0 + inset - 1, y0 + inset - 1, x0 + inset + inner,
                      y0 + inset + inner), outline=(150, 175, 225))
  for i, j in order:
    if c[i, j] >= strong_coefficient:
      edge(i, j)
      x, y = geo.lower_anchor(i)
      draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=EDGE)
  gx0, gy0 = geo.lower_boxes[0][:2]
  draw.text((gx0, gy0 - 16), f"{nv} lower capsules", fill=TEXT, font=small)

  # Upper capsules: box, coefficient map, numbers.
  rows, cols = geo.grid
  received = c.sum(axis=0)
  for j, (x0, y0, x1, y1) in enumerate(geo.upper_boxes):
    draw.rectangle((x0, y0, x1, y1), fill=_ink(upper_activation[j]),
                   outline=OUTLINE)
    label = str(j)
    tw = draw.textlength(label, font=small)
    draw.text(((x0 + x1 + 1 - tw) / 2, y0 + (y1 - y0 - 10) / 2), label,
              fill=(255, 255, 255) if upper_activation[j] > 0.5 else TEXT,
              font=small)
    mx0, my0, mx1, my1 = geo.map_boxes[j]
    m = geo.map_cell
    for i in range(nv):
      r, q = divmod(i, cols)
      draw.rectangle((mx0 + q * m, my0 + r * m, mx0 + (q + 1) * m - 1,
                      my0 + (r + 1) * m - 1), fill=_tint(c[i, j]))
    draw.rectangle((mx0 - 1, my0 - 1, mx1 + 1, my1 + 1), outline=OUTLINE)
    columns = [f"{upper_activation[j]:.2f}", f"{received[j]:.1f}"]
    if upper_length is not None:
      columns.insert(1, f"{upper_length[j]:.2f}")
    for k, text in enumerate(columns):
      draw.text((geo.text_x + 52 * k, (y0 + y1) / 2 - 6), text, fill=TEXT,
                font=small)
  ux0, uy0 = geo.upper_boxes[0][:2]
  draw.text((ux0, uy0 - 32), f"{nh} upper capsules", fill=TEXT, font=small)
  headers = ["p(h=1)", "sum_i c_ij"]
  if upper_length is not None:
    headers.insert(1, "|o_j|")
  for k, text in enumerate(["j", "c_ij map"] + headers):
    x = (ux0, geo.map_boxes[0][0], *(geo.text_x + 52 * m for m in
                                     range(len(headers))))[k]
    draw.text((x, uy0 - 16), text, fill=TEXT, font=small)

  # Legend: the two scales, then the caption lines.
  y = geo.caption_y
  x = geo.image_box[0]
  for name, colour in (("activation", _ink), ("c_ij", _tint)):
    draw.text((x, y), f"{name} 0", fill=TEXT, font=small)
    bx = x + int(draw.textlength(f"{name} 0", font=small)) + 4
    for k in range(100):
      draw.line([(bx + k, y + 1), (bx + k, y + 11)], fill=colour(k / 99))
    draw.rectangle((bx - 1, y, bx + 100, y + 12), outline=OUTLINE)
    draw.text((bx + 104, y), "1", fill=TEXT, font=small)
    x = bx + 130
  y += 20
  for line in caption:
    draw.text((geo.image_box[0], y), line, fill=TEXT, font=font)
    y += _FONT_SIZE + 4
  return np.asarray(canvas)


def _to_uint8(x) -> np.ndarray:
  return (np.clip(np.asarray(x, np.float64), 0.0, 1.0) * 255).round().astype(
      np.uint8)


# ---------------------------------------------------------------------------
# From a trained layer.


class Routing(NamedTuple):
  visible: np.ndarray         # (Nv, Dv) the visible capsules
  coefficients: np.ndarray    # (Nv, Nh)
  hidden_probs: np.ndarray    # (Nh, Dh) p(h = 1 | v; c)
  lengths: np.ndarray         # (Nh,) squash lengths |o_j|
  entropy: np.ndarray         # (Nv,) nats


def route_image(config, params, grey: np.ndarray, key: jax.Array) -> Routing:
  """Visible capsules of one grey image (as training makes them), routed."""
  v = train_lib.to_capsules(config, jnp.asarray(grey)[None], key)
  v = v.astype(params["W"].dtype)
  routed = capsjax.route(capsjax.predictions(params, v),
                         train_lib.make_routing(config))
  c = routed.coefficients
  p = capsjax.hidden_probs(params, v, c)
  return Routing(np.asarray(v[0]), np.asarray(c[0]), np.asarray(p[0]),
                 np.linalg.norm(np.asarray(routed.outputs[0]), axis=-1),
                 np.asarray(capsjax.routing_entropy(c)[0]))


def routing_figure(config, params, grey: np.ndarray, key: jax.Array, *,
                   title: str = "", step: int | None = None) -> np.ndarray:
  """`draw_routing` of one grey image (28, 28) through a trained layer."""
  routed = route_image(config, params, grey, key)
  nv, _, nh, _ = train_lib.shapes(config)
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


def select_image(d: train_lib.Data, split: str, index: int):
  """(grey image, label) of `split`; ValueError naming the range if none."""
  grey, labels = (d.test, d.test_labels) if split == "test" else (
      d.train, d.train_labels)
  if not 0 <= index < len(grey):
    raise ValueError(f"--index={index} is out of range: the {split} split "
                     f"has {len(grey)} images (0 to {len(grey) - 1})")
  return np.asarray(grey[index]), int(labels[index])


def run(workdir: str, index: int, out: str, *, split: str = "test",
        seed: int = 0) -> None:
  """The command: writes the diagram of image `index` of `split` to `out`.

  Errors (no workdir or checkpoint, a missing dataset, an index out of
  range, an unwritable `out`) exit with a one-line message.
  """
  try:
    config, state = train_lib.load_run(workdir)
    d = train_lib.load_data(config)
    grey, label = select_image(d, split, index)
  except (train_lib.ConfigError, train_lib.DataError,
          data.DatasetNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  step = int(state.step)
  title = (f"{config.dataset} {split} image {index} (label {label}), "
           f"routed by {workdir}")
  figure = routing_figure(config, train_lib.model_params(config, state), grey, jax.random.key(seed),
                          title=title, step=step)
  try:
    save_png(out, figure)
  except OSError as e:
    raise SystemExit(f"error: cannot write {out}: {e}") from None
  logging.info("Step %d: wrote %s", step, out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  f = flags.FLAGS
  run(f.workdir, f.index, f.out, split=f.split, seed=f.seed)
  print(f.out)


def _define_flags():
  # Defined only when run as a program: the tests import this module beside
  # other mains (bars_and_stripes) that define flags of the same names.
  flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
  flags.DEFINE_integer("index", None, "Which image of the split.",
                       required=True)
  flags.DEFINE_enum("split", "test", ["test", "train"],
                    "The split the image comes from.")
  flags.DEFINE_string("out", None, "The PNG to write.", required=True)
  flags.DEFINE_integer("seed", 0, "Seed of the binarization.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
