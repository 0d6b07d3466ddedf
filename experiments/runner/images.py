"""Image grids as PNG (pillow)."""

import numpy as np
from PIL import Image


def grid(images, num_cols: int, pad: int = 2, scale: int = 2) -> np.ndarray:
  """(N, H, W) values in [0, 1] -> one uint8 (rows*(H+pad), cols*(W+pad))."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w = images.shape
  num_rows = -(-n // num_cols)
  canvas = np.full((num_rows * (h + pad) + pad, num_cols * (w + pad) + pad),
                   0.5, np.float32)  # grey frame: tells 0s from the border
  for idx, image in enumerate(images):
    r, c = divmod(idx, num_cols)
    top, left = pad + r * (h + pad), pad + c * (w + pad)
    canvas[top:top + h, left:left + w] = image
  canvas = np.kron(canvas, np.ones((scale, scale), np.float32))
  return (canvas * 255).round().astype(np.uint8)


def save_png(path, *blocks: np.ndarray) -> None:
  """Stacks grids (same width) vertically with a white band and writes a PNG."""
  width = max(b.shape[1] for b in blocks)
  parts = []
  for b in blocks:
    b = np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=255)
    parts += [b, np.full((6, width), 255, np.uint8)]
  Image.fromarray(np.concatenate(parts[:-1])).save(path)
