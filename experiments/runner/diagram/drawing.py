"""Drawing the routing of one image through a capsule layer (the paper's
Figure 1): `draw_routing` (arrays in, an RGB uint8 array out) and `layout`,
its geometry. What the figure shows: experiments/routing_diagram.py.
Everything darker means "more": more pixels on, higher probability, larger
c_ij."""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

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
