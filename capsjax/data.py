"""Data layer: MNIST-family datasets through TFDS (no TensorFlow needed).

Datasets (names for `load_split`):
  "mnist_small"    5000 train / 1000 test MNIST digits shipped in the package
                   (first 500 / 100 of each class, see
                   datasets/make_mnist_small.py).
  "mnist"          full MNIST (60000 / 10000) from the official IDX files.
  "fashion_mnist"  Fashion-MNIST (60000 / 10000), same IDX format.

The TFDS builders are registered as `capsjax_mnist_small`, `capsjax_mnist` and
`capsjax_fashion_mnist` (TFDS already owns `mnist` and `fashion_mnist`, and its
stock builders need TensorFlow). They write array_record files, which
`tfds.data_source` reads with random access and without tf.data.

The datasets need TFDS (`pip install "capsjax[experiments]"`); the rest of
this module (`read_idx`, `binarize`, the capsule patches) needs only the
library's own dependencies, and so does importing it.
"""

from __future__ import annotations

import gzip
import importlib.resources
import math
import os
import socket
import struct
from typing import Any
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np

from capsjax import _sharding

try:  # the datasets only: part of capsjax[experiments], not of the library
  from absl import logging
  import tensorflow_datasets as tfds
except ImportError as e:
  tfds = None
  _TFDS_IMPORT_ERROR: ImportError | None = e
else:
  _TFDS_IMPORT_ERROR = None

IMAGE_SIZE = 28
_IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
# split -> (images, labels); the same names for MNIST and Fashion-MNIST
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DatasetNotFoundError(ValueError):
  """A dataset's raw files could not be found, downloaded or read."""


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads a gzipped unsigned-byte IDX file into a uint8 array."""
  with open(path, "rb") as f:
    raw = gzip.decompress(f.read())
  zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
  if zero != 0 or dtype != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file")
  dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


# ----------------------------------------------------------------------------
# TFDS builders
# ----------------------------------------------------------------------------

SMALL_NPZ = (importlib.resources.files("capsjax") / "datasets"
             / "mnist_small.npz")
DATASETS = ("mnist_small", "mnist", "fashion_mnist")  # _BUILDERS' keys


def _require_tfds() -> None:
  if tfds is None:
    raise ImportError(
        "capsjax.data's datasets need tensorflow-datasets: pip install"
        f' "capsjax[experiments]" ({_TFDS_IMPORT_ERROR})'
    ) from _TFDS_IMPORT_ERROR


if tfds is not None:
  class _MnistLikeBuilder(tfds.core.GeneratorBasedBuilder,
                          skip_registration=True):
    """28x28 uint8 digits + int64 label, stored in the original file order."""

    VERSION = tfds.core.Version("1.0.0")
    DESCRIPTION = ""
    HOMEPAGE = ""

    def _info(self) -> tfds.core.DatasetInfo:
      return tfds.core.DatasetInfo(
          builder=self,
          description=self.DESCRIPTION,
          # Tensor, not Image/ClassLabel: Image encodes PNG with TensorFlow.
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Tensor(shape=_IMAGE_SHAPE, dtype=np.uint8),
              "label": tfds.features.Tensor(shape=(), dtype=np.int64),
          }),
          supervised_keys=("image", "label"),
          homepage=self.HOMEPAGE,
          disable_shuffling=True,  # keep the source order (documented indices)
      )

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
      if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
      for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {"image": image.reshape(_IMAGE_SHAPE), "label": int(label)}

  class _IdxBuilder(_MnistLikeBuilder, skip_registration=True):
    """Prepares from the four IDX .gz files: manual_dir first, else download."""

    URL = ""  # folder URL holding the four files
    SHA256: dict[str, tuple[int, str]] = {}  # file name -> (size, sha256)

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
      # Registered checksums make the download manager look for each file by
      # name in manual_dir, and verify manual and downloaded files alike.
      return {
          cls.URL + name: tfds.download.checksums.UrlInfo(
              size=tfds.core.units.Size(size), checksum=sha, filename=name
          )
          for name, (size, sha) in cls.SHA256.items()
      }

    def _split_generators(self, dl_manager):
      names = [n for pair in _IDX_FILES.values() for n in pair]
      paths = dl_manager.download({n: self.URL + n for n in names})
      return {
          split: self._generate_examples(
              read_idx(paths[images]), read_idx(paths[labels])
          )
          for split, (images, labels) in _IDX_FILES.items()
      }

  class CapsjaxMnist(_IdxBuilder):
    """Full MNIST (60000 train, 10000 test) from the official IDX files."""

    name = "capsjax_mnist"
    DESCRIPTION = ("MNIST handwritten digits (LeCun, Cortes, Burges;"
                   " CC BY-SA 3.0).")
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"  # as TFDS mnist
    SHA256 = {
        "train-images-idx3-ubyte.gz": (
            9912422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train-labels-idx1-ubyte.gz": (
            28881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz": (
            1648877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz": (
            4542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    }

  class CapsjaxFashionMnist(_IdxBuilder):
    """Fashion-MNIST (60000 train, 10000 test); needs internet or manual_dir."""

    name = "capsjax_fashion_mnist"
    DESCRIPTION = ("Fashion-MNIST, Zalando article images (Xiao et al. 2017;"
                   " MIT).")
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    # As TFDS.
    URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    SHA256 = {
        "train-images-idx3-ubyte.gz": (
            26421880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "train-labels-idx1-ubyte.gz": (
            29515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "t10k-images-idx3-ubyte.gz": (
            4422102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        "t10k-labels-idx1-ubyte.gz": (
            5148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    }

  class CapsjaxMnistSmall(_MnistLikeBuilder):
    """5000/1000 MNIST digits embedded in the package; never downloads."""

    name = "capsjax_mnist_small"
    DESCRIPTION = (
        "First 500 (train) / 100 (test) examples of each digit of the official"
        " MNIST files, in file order; indices in the package's mnist_small.npz."
    )
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"

    def _split_generators(self, dl_manager):
      del dl_manager  # package data only
      with SMALL_NPZ.open("rb") as f, np.load(f) as npz:
        data = {k: npz[k] for k in npz.files}
      return {
          split: self._generate_examples(
              data[f"{split}_images"], data[f"{split}_labels"]
          )
          for split in ("train", "test")
      }

  _BUILDERS: dict[str, type[_MnistLikeBuilder]] = {
      "mnist_small": CapsjaxMnistSmall,
      "mnist": CapsjaxMnist,
      "fashion_mnist": CapsjaxFashionMnist,
  }


_BUILDER_NAMES = ("CapsjaxMnist", "CapsjaxFashionMnist", "CapsjaxMnistSmall")


def __getattr__(name: str) -> Any:
  if name in _BUILDER_NAMES:  # without TFDS (defined above otherwise)
    _require_tfds()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------


def get_builder(
    name: str, *, data_dir: str | os.PathLike[str]
) -> tfds.core.DatasetBuilder:
  """Returns the TFDS builder (array_record) for a capsjax dataset name."""
  if name not in DATASETS:
    raise ValueError(
        f"Unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}"
    )
  _require_tfds()
  data_dir = os.path.expanduser(os.fspath(data_dir))
  return _BUILDERS[name](data_dir=data_dir, file_format="array_record")


def _reachable(url: str, timeout: float = 5.0) -> bool:
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == "https" else 80)
  try:
    socket.create_connection((parts.hostname, port), timeout=timeout).close()
    return True
  except OSError:
    return False


def prepare(
    name: str,
    *,
    data_dir: str | os.PathLike[str],
    manual_dir: str | os.PathLike[str] | None = None,
) -> tfds.core.DatasetBuilder:
  """Prepares `name` under `data_dir` (a no-op when already prepared).

  For "mnist" / "fashion_mnist": if `manual_dir` is given it must hold the
  four IDX .gz files and nothing is downloaded; otherwise the files are taken
  from `<data_dir>/downloads/manual` or downloaded from the canonical URLs.
  Files are checked against the published SHA256 sums either way.

  Raises:
    ValueError: unknown name.
    DatasetNotFoundError: the raw files cannot be found, downloaded or verified.
  """
  builder = get_builder(name, data_dir=data_dir)
  if builder.data_path.exists():  # TFDS renames it into place once complete
    return builder
  # "" (an unset flag) means none.
  manual_dir = os.path.expanduser(os.fspath(manual_dir)) if manual_dir else None
  hint = ""
  if isinstance(builder, _IdxBuilder):
    hint = (
        "; pass manual_dir (--config.data_manual_dir) = a folder with the four"
        f" IDX .gz files ({', '.join(builder.SHA256)}), or run with internet"
        " access"
    )
    folder = os.fspath(
        manual_dir or builder.data_dir_root / "downloads" / "manual"
    )
    missing = [f for f in builder.SHA256
               if not os.path.isfile(os.path.join(folder, f))]
    # An explicit manual_dir must be complete (never download). Otherwise probe
    # the host: offline, TFDS's downloader retries for minutes before failing.
    if missing and (manual_dir is not None or not _reachable(builder.URL)):
      what = ("none there" if len(missing) == 4
              else f"missing {', '.join(missing)}")
      if not manual_dir:
        what += f"; {urllib.parse.urlsplit(builder.URL).hostname} unreachable"
      raise DatasetNotFoundError(
          f"{name} raw files not found in {folder} ({what}){hint}."
      )
  config = tfds.download.DownloadConfig(
      manual_dir=manual_dir,
      try_download_gcs=False,  # would query GCS; our builders are not there
  )
  logging.info("Preparing %s in %s", builder.name, builder.data_dir)
  try:
    builder.download_and_prepare(download_config=config)
  except tfds.download.download_manager.NonMatchingChecksumError as e:
    path = str(e).split("downloaded to ", 1)[-1].split(",", 1)[0]
    raise DatasetNotFoundError(
        f"{path} is not the official {name} file (SHA256 mismatch){hint}."
    ) from None
  except ImportError:
    raise  # a broken install, not a missing dataset
  except Exception as e:  # pylint: disable=broad-except
    # TFDS raises deep tracebacks (e.g. after download retries); keep it short.
    reason = (str(e).strip().splitlines() or [""])[0][:200]
    raise DatasetNotFoundError(
        f"could not prepare {name} ({type(e).__name__}: {reason}){hint}."
    ) from None
  return builder


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike[str],
    manual_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads a whole split into memory, preparing the dataset if needed.

  Args:
    name: one of `DATASETS`.
    split: a TFDS split, e.g. "train", "test" or "train[:1000]".
    data_dir: TFDS data directory (prepared files are cached there).
    manual_dir: folder holding the raw IDX .gz files (see `prepare`).

  Returns:
    images: float32 (N, 28, 28) in [0, 1] (byte / 255).
    labels: int32 (N,).
  """
  builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
  source = builder.as_data_source(split=split)
  examples = source.__getitems__(range(len(source)))  # one batched read
  images = np.stack([ex["image"] for ex in examples]).reshape(
      -1, IMAGE_SIZE, IMAGE_SIZE)
  labels = np.array([ex["label"] for ex in examples], dtype=np.int32)
  return images.astype(np.float32) / 255.0, labels


# ----------------------------------------------------------------------------
# Binarization and capsule patches
# ----------------------------------------------------------------------------

BINARIZE_MODES = ("stochastic", "threshold")


def binarize(key: jax.Array | None, images: Any, mode: str) -> jax.Array:
  """Binarizes grey levels in [0, 1] to float32 {0, 1}.

  "stochastic": pixel ~ Bernoulli(grey level); pass a fresh key each time the
    data is used (e.g. each epoch) to get a new draw.
  "threshold": pixel = grey level > 0.5; `key` is ignored (may be None).
  """
  if mode == "stochastic":
    if key is None:
      raise ValueError("binarize mode 'stochastic' needs a PRNG key")
    return jax.random.bernoulli(key, jnp.asarray(images)).astype(jnp.float32)
  if mode == "threshold":
    return (jnp.asarray(images) > 0.5).astype(jnp.float32)
  raise ValueError(
      f"Unknown binarize mode {mode!r}; expected one of {BINARIZE_MODES}"
  )


def _check_patch(patch: int, height: int, width: int) -> None:
  if (isinstance(patch, bool) or not isinstance(patch, (int, np.integer))
      or not (0 < patch and height % patch == 0 and width % patch == 0)
  ):
    divisors = [d for d in range(1, math.gcd(height, width) + 1)
                if height % d == 0 and width % d == 0]
    raise ValueError(
        f"patch={patch!r} does not tile a {height}x{width} image;"
        f" use one of {divisors}"
    )


def images_to_capsules(images: Any, patch: int) -> Any:
  """(..., H, W) -> (..., Nv, patch*patch) non-overlapping patches.

  Patches are in row-major order over the patch grid (Nv = H/patch * W/patch)
  and each patch is flattened row-major. Works on numpy and jax arrays.
  """
  *lead, h, w = images.shape
  _check_patch(patch, h, w)
  gh, gw = h // patch, w // patch
  x = _reshape(images, (*lead, gh, patch, gw, patch)).swapaxes(-3, -2)
  return _reshape(x, (*lead, gh * gw, patch * patch))


def _reshape(x: Any, shape: tuple[int, ...]) -> Any:
  """`x.reshape(shape)` for a reshape of the trailing (image) axes that
  keeps the leading (batch) axes: under a mesh with explicit axes, the
  leading axes keep their sharding (JAX asks for it to be named)."""
  if isinstance(x, np.ndarray):
    return x.reshape(shape)
  return jnp.reshape(x, shape, out_sharding=_sharding.keep_leading(
      x, len(shape)))


def capsules_to_images(capsules: Any, patch: int) -> Any:
  """Inverse of `images_to_capsules` for square images.

  (..., Nv, p*p) -> (..., H, H).
  """
  *lead, nv, d = capsules.shape
  g = math.isqrt(nv)
  if g * g != nv or d != patch * patch:
    raise ValueError(
        f"capsules of shape (..., {nv}, {d}) are not a square grid of"
        f" patch={patch!r} patches"
    )
  x = _reshape(capsules, (*lead, g, g, patch, patch)).swapaxes(-3, -2)
  return _reshape(x, (*lead, g * patch, g * patch))
