"""Builds capsjax/datasets/mnist_small.npz from the four MNIST IDX files.

Selection (deterministic, no RNG): the first 500 examples of each digit in the
official train file (5000) and the first 100 of each digit in the official
test file (1000), kept in their original file order. The npz also stores the
chosen indices into the official files (`train_index`, `test_index`).

Usage (from the repo root):
  python capsjax/datasets/make_mnist_small.py \
      --raw_dir ../shared/data/mnist --out capsjax/datasets/mnist_small.npz

Self-contained (numpy only) so it runs without capsjax installed.
"""

import argparse
import gzip
import pathlib
import struct

import numpy as np

PER_CLASS = {"train": 500, "test": 100}
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path):
  raw = gzip.decompress(pathlib.Path(path).read_bytes())
  zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
  if zero != 0 or dtype != 0x08:
    raise ValueError(f"{path}: not an unsigned-byte IDX file")
  dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def first_per_class(labels, per_class):
  """Indices of the first `per_class` examples of each class, sorted."""
  idx = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
  return np.sort(np.concatenate(idx)).astype(np.int32)


def make(raw_dir):
  out = {}
  for split, (img_file, lbl_file) in FILES.items():
    images = read_idx(pathlib.Path(raw_dir) / img_file)
    labels = read_idx(pathlib.Path(raw_dir) / lbl_file)
    index = first_per_class(labels, PER_CLASS[split])
    out[f"{split}_images"] = images[index]
    out[f"{split}_labels"] = labels[index]
    out[f"{split}_index"] = index
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--raw_dir", required=True)
  parser.add_argument(
      "--out", default=str(pathlib.Path(__file__).with_name("mnist_small.npz"))
  )
  args = parser.parse_args()
  np.savez_compressed(args.out, **make(args.raw_dir))


if __name__ == "__main__":
  main()
