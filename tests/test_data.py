"""Tests for capsjax.data: TFDS builders, loading, binarization, capsule
patches."""

import functools
import gzip
import hashlib
import http.server
import pathlib
import re
import runpy
import struct
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from capsjax import data

REPO = pathlib.Path(__file__).resolve().parents[1]
# The raw MNIST files: the `raw_mnist_dir` fixture (tests/conftest.py,
# CAPSJAX_MNIST_DIR); the tests that take it skip where it is unset.
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def parse_idx(path):
  """Independent IDX reader: magic 2051 (images) or 2049 (labels)."""
  with gzip.open(path) as f:
    raw = f.read()
  magic, n = struct.unpack(">II", raw[:8])
  if magic == 2051:
    rows, cols = struct.unpack(">II", raw[8:16])
    return np.frombuffer(raw[16:], np.uint8).reshape(n, rows, cols)
  assert magic == 2049, magic
  return np.frombuffer(raw[8:], np.uint8)


def write_idx(path, array):
  """Writes a uint8 array as a gzipped IDX file."""
  header = struct.pack(">HBB", 0, 8, array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@functools.cache
def raw_split(raw_dir, split):
  images, labels = IDX_NAMES[split]
  return parse_idx(raw_dir / images), parse_idx(raw_dir / labels)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds_small")
  data.prepare("mnist_small", data_dir=d)
  return d


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory, raw_mnist_dir):
  d = tmp_path_factory.mktemp("tfds_mnist")
  # ~8 s, once per session
  data.prepare("mnist", data_dir=d, manual_dir=raw_mnist_dir)
  return d


# --- embedded mnist_small -------------------------------------------------


@pytest.mark.parametrize("split,n", [("train", 5000), ("test", 1000)])
def test_mnist_small_loads(small_dir, split, n):
  images, labels = data.load_split("mnist_small", split, data_dir=small_dir)
  assert images.shape == (n, 28, 28) and images.dtype == np.float32
  assert labels.shape == (n,) and labels.dtype == np.int32
  assert images.min() == 0.0 and images.max() == 1.0
  np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                [n // 10] * 10)
  np.testing.assert_allclose(images * 255, np.round(images * 255), atol=1e-3)


@pytest.mark.parametrize("split,per_class", [("train", 500), ("test", 100)])
def test_mnist_small_matches_raw_at_documented_indices(small_dir, raw_mnist_dir,
                                                       split, per_class):
  raw_images, raw_labels = raw_split(raw_mnist_dir, split)
  # Documented selection: first `per_class` of each digit, in file order.
  expected = np.sort(np.concatenate(
      [np.flatnonzero(raw_labels == c)[:per_class] for c in range(10)]
  ))
  with data.SMALL_NPZ.open("rb") as f, np.load(f) as npz:
    np.testing.assert_array_equal(npz[f"{split}_index"], expected)
  images, labels = data.load_split("mnist_small", split, data_dir=small_dir)
  np.testing.assert_array_equal(labels, raw_labels[expected])
  np.testing.assert_array_equal(np.round(images * 255).astype(np.uint8),
                                raw_images[expected])


def test_make_mnist_small_reproduces_packaged_file(raw_mnist_dir):
  make = runpy.run_path(
      str(REPO / "capsjax" / "datasets" / "make_mnist_small.py"))["make"]
  fresh = make(raw_mnist_dir)
  with data.SMALL_NPZ.open("rb") as f, np.load(f) as npz:
    assert sorted(npz.files) == sorted(fresh)
    for k in npz.files:
      np.testing.assert_array_equal(npz[k], fresh[k], err_msg=k)
      assert npz[k].dtype == fresh[k].dtype


def test_packaged_file_is_small():
  assert data.SMALL_NPZ.is_file()
  assert len(data.SMALL_NPZ.read_bytes()) < 1_500_000


def test_registered_name_works_with_tfds_data_source(small_dir):
  ds = tfds.data_source("capsjax_mnist_small", split="test",
                        data_dir=small_dir, download=False)
  assert len(ds) == 1000
  ex = ds[0]
  assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
  assert 0 <= int(ex["label"]) < 10


def test_split_slicing(small_dir):
  images, labels = data.load_split("mnist_small", "test[:10]",
                                   data_dir=small_dir)
  full_images, full_labels = data.load_split("mnist_small", "test",
                                             data_dir=small_dir)
  np.testing.assert_array_equal(images, full_images[:10])
  np.testing.assert_array_equal(labels, full_labels[:10])


# --- full MNIST from the manual dir ---------------------------------------


@pytest.mark.slow
def test_full_mnist_matches_raw(mnist_dir, raw_mnist_dir):
  builder = data.get_builder("mnist", data_dir=mnist_dir)
  assert builder.info.splits["train"].num_examples == 60000
  assert builder.info.splits["test"].num_examples == 10000
  train = builder.as_data_source("train")
  raw_images, raw_labels = raw_split(raw_mnist_dir, "train")
  for i in (0, 59999):
    np.testing.assert_array_equal(train[i]["image"][..., 0], raw_images[i])
    assert train[i]["label"] == raw_labels[i]
  images, labels = data.load_split("mnist", "test", data_dir=mnist_dir)
  raw_images, raw_labels = raw_split(raw_mnist_dir, "test")
  assert images.shape == (10000, 28, 28)
  np.testing.assert_array_equal(labels, raw_labels)
  for i in (0, 9999):
    np.testing.assert_array_equal(
        np.round(images[i] * 255).astype(np.uint8), raw_images[i])
  # Prepared data is reused: no manual_dir needed any more.
  data.prepare("mnist", data_dir=mnist_dir, manual_dir=None)


# --- errors ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_missing_manual_dir_gives_clear_error(tmp_path, name):
  missing = tmp_path / "no_such_dir"
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load_split(name, "train", data_dir=tmp_path / "tfds",
                    manual_dir=missing)
  msg = str(info.value)
  assert str(missing) in msg and "--config.data_manual_dir" in msg
  assert "train-images-idx3-ubyte.gz" in msg and "internet" in msg
  assert isinstance(info.value, ValueError)
  assert str(info.traceback[-1].path).endswith("data.py")  # raised by us
  builder = data.get_builder(name, data_dir=tmp_path / "tfds")
  assert not builder.data_path.exists()


def test_offline_without_manual_dir_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "_reachable", lambda url: False)
  with pytest.raises(data.DatasetNotFoundError, match="unreachable"):
    data.prepare("mnist", data_dir=tmp_path)


def test_wrong_files_give_checksum_error(tmp_path):
  for split, (images, labels) in IDX_NAMES.items():
    write_idx(tmp_path / images, np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / labels, np.zeros((3,), np.uint8))
  with pytest.raises(data.DatasetNotFoundError,
                     match="SHA256 mismatch") as info:
    data.prepare("mnist", data_dir=tmp_path / "tfds", manual_dir=tmp_path)
  assert info.value.__suppress_context__  # no TFDS traceback attached


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(ValueError, match="mnist_small, mnist, fashion_mnist"):
    data.load_split("cifar10", "train", data_dir=tmp_path)


def test_download_path_with_local_server(tmp_path, monkeypatch):
  """The internet code path (dl_manager.download + checksums), served
  locally."""
  served = tmp_path / "served"
  served.mkdir()
  arrays = {}
  for split, (images, labels) in IDX_NAMES.items():
    x = np.random.default_rng(len(split)).integers(0, 256, (7, 28, 28),
                                                   np.uint8)
    y = np.arange(7, dtype=np.uint8)
    write_idx(served / images, x)
    write_idx(served / labels, y)
    arrays[split] = (x, y)

  class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  handler = functools.partial(Quiet, directory=str(served))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  monkeypatch.setenv("NO_PROXY", "127.0.0.1")
  try:

    class LocalIdx(data.CapsjaxMnist, skip_registration=True):
      URL = f"http://127.0.0.1:{server.server_port}/"
      SHA256 = {
          f.name: (f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest())
          for f in served.iterdir()
      }

    builder = LocalIdx(data_dir=str(tmp_path / "tfds"),
                       file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
  finally:
    server.shutdown()
    server.server_close()
  for split, (x, y) in arrays.items():
    source = builder.as_data_source(split)
    got = source.__getitems__(range(len(source)))
    np.testing.assert_array_equal(
        np.stack([e["image"][..., 0] for e in got]), x)
    np.testing.assert_array_equal([e["label"] for e in got], y)


# --- binarization ------------------------------------------------------------


def test_threshold_binarization_exact():
  images = np.array([[0.0, 0.5, 0.5001, 1.0], [0.2, 0.7, 0.49, 0.51]],
                    np.float32)
  out = data.binarize(None, images, "threshold")
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, [[0, 0, 1, 1], [0, 1, 0, 1]])


def test_stochastic_binarization_statistics():
  grey = np.array([0.0, 0.1, 0.5, 0.8, 1.0], np.float32)
  images = np.broadcast_to(grey[:, None], (5, 20000))
  key = jax.random.key(0)
  out = data.binarize(key, images, "stochastic")
  assert out.dtype == jnp.float32 and out.shape == images.shape
  assert set(np.unique(np.asarray(out))) <= {0.0, 1.0}
  # 20000 draws: std of the mean <= 0.0036, so 0.02 is > 5 sigma.
  np.testing.assert_allclose(out.mean(axis=1), grey, atol=0.02)
  np.testing.assert_array_equal(out[0], 0)
  np.testing.assert_array_equal(out[-1], 1)
  np.testing.assert_array_equal(out, data.binarize(key, images, "stochastic"))
  other = data.binarize(jax.random.key(1), images, "stochastic")
  assert not np.array_equal(out, other)


def test_binarize_errors():
  with pytest.raises(ValueError, match="'otsu'"):
    data.binarize(jax.random.key(0), np.zeros((2, 2)), "otsu")
  with pytest.raises(ValueError, match="key"):
    data.binarize(None, np.zeros((2, 2)), "stochastic")


# --- capsule patches ------------------------------------------------------


def test_capsules_hand_checked():
  image = np.arange(16).reshape(1, 4, 4)
  caps = data.images_to_capsules(image, 2)
  np.testing.assert_array_equal(
      caps[0], [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
  )
  np.testing.assert_array_equal(data.capsules_to_images(caps, 2), image)


@pytest.mark.parametrize("patch", [1, 2, 4, 7, 14, 28])
def test_capsules_round_trip(patch):
  images = np.random.default_rng(patch).random((3, 28, 28), dtype=np.float32)
  caps = data.images_to_capsules(images, patch)
  assert caps.shape == (3, (28 // patch) ** 2, patch * patch)
  np.testing.assert_array_equal(data.capsules_to_images(caps, patch), images)
  # Patch k is rows/cols (k // g, k % g) of the patch grid, flattened row-major.
  g = 28 // patch
  k = len(caps[0]) - 1
  r, c = divmod(k, g)
  np.testing.assert_array_equal(
      caps[1, k],
      images[1, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].ravel())


def test_capsules_jax_and_jit():
  images = jnp.asarray(
      np.random.default_rng(0).random((2, 28, 28), dtype=np.float32))
  to_caps = jax.jit(data.images_to_capsules, static_argnums=1)
  caps = to_caps(images, 7)
  assert isinstance(caps, jax.Array) and caps.shape == (2, 16, 49)
  np.testing.assert_array_equal(data.capsules_to_images(caps, 7), images)


@pytest.mark.parametrize("patch", [3, 5, 0, -2, 2.0])
def test_bad_patch_size(patch):
  with pytest.raises(ValueError, match=re.escape(f"patch={patch!r}")):
    data.images_to_capsules(np.zeros((1, 28, 28)), patch)


def test_capsules_to_images_bad_shape():
  with pytest.raises(ValueError, match="patch=7"):
    data.capsules_to_images(np.zeros((1, 15, 49)), 7)
  with pytest.raises(ValueError, match="patch=4"):
    data.capsules_to_images(np.zeros((1, 16, 49)), 4)
