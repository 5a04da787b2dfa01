"""CIFAR-10 from its python archive (no package ships it, so it is not offline-capable)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from typing import Any
import zlib

import numpy as np

from jaxmodels.data import sources, spec
from jaxmodels.data.errors import CorruptDataError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
COUNTS = {"train": 50000, "test": 10000}


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles only plain containers and numpy arrays: a downloaded pickle cannot run code."""

  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy", "ndarray"),
      ("numpy", "dtype"),
      ("numpy.core.multiarray", "scalar"),
      ("numpy._core.multiarray", "scalar"),
      ("_codecs", "encode"),
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    return super().find_class(module, name)


def _unpickle(data: bytes, path: str) -> dict[str, object]:
  try:
    obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as e:  # any unpickling failure means the member is damaged
    raise CorruptDataError(path, f"cannot be unpickled ({e})") from e
  if not isinstance(obj, dict):
    raise CorruptDataError(path, "does not hold a dict")
  return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read(path: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
  """{'train': (images [50000,32,32,3] uint8, labels), 'test': (...)} and the 10 class names.

  Reads the standard python archive: cifar-10-batches-py/{data_batch_1..5, test_batch,
  batches.meta}, each a pickled dict with 'data' [N, 3072] (R, G, B planes) and 'labels'.
  """
  members = {}
  try:
    with tarfile.open(path, "r:*") as tar:
      for member in tar.getmembers():
        base = member.name.rsplit("/", 1)[-1]
        if member.isfile() and (
            base.startswith(("data_batch_", "test_batch")) or base == "batches.meta"
        ):
          members[base] = tar.extractfile(member).read()
  except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
    raise CorruptDataError(path, f"cannot be read as a tar archive ({e})") from e
  wanted = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
  missing = [m for m in wanted if m not in members]
  if missing:
    raise CorruptDataError(path, f"lacks cifar-10-batches-py/{', '.join(missing)}")
  names = [
      n.decode() if isinstance(n, bytes) else n
      for n in _unpickle(members["batches.meta"], f"{path}:batches.meta")["label_names"]
  ]
  splits = {
      "train": [_batch(members[m], f"{path}:{m}") for m in wanted[:5]],
      "test": [_batch(members["test_batch"], f"{path}:test_batch")],
  }
  out = {
      k: (np.concatenate([b[0] for b in v]), np.concatenate([b[1] for b in v]))
      for k, v in splits.items()
  }
  return out, names


def _batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  batch = _unpickle(data, where)
  try:
    pixels = np.asarray(batch["data"], np.uint8)
    labels = np.asarray(batch["labels"], np.int64)
  except KeyError as e:
    raise CorruptDataError(where, f"lacks the key {e}") from e
  if pixels.ndim != 2 or pixels.shape[1] != 3072 or len(pixels) != len(labels):
    raise CorruptDataError(where, f"data {pixels.shape} and labels {labels.shape} do not match")
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise CorruptDataError(where, "holds labels outside 0..9")
  return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def generate(raw_dir: str) -> tuple[dict[str, Any], dict[str, spec.Examples]]:
  path = os.path.join(raw_dir, ARCHIVE)
  splits, names = read(path)
  if tuple(names) != LABELS:
    raise CorruptDataError(path, f"has class names {names}; expected {LABELS}")
  return spec.image_examples(splits, 255)


def write_fixture(
    directory: str, rng: np.random.Generator, sizes: tuple[int, int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The archive layout: train split over data_batch_1..5, pickled dicts with bytes keys (as the
  original Python 2 pickles load) and rows of R, G, B planes."""
  from jaxmodels.data import testing

  splits = {
      "train": testing.random_images(rng, sizes[0], (32, 32, 3)),
      "test": testing.random_images(rng, sizes[1], (32, 32, 3)),
  }

  def batch(images, labels):
    rows = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    return pickle.dumps(
        {
            b"batch_label": b"fixture",
            b"labels": [int(x) for x in labels],
            b"data": rows,
            b"filenames": [b"x.png"] * len(labels),
        },
        protocol=2,
    )

  images, labels = splits["train"]
  with tarfile.open(os.path.join(directory, ARCHIVE), "w:gz") as tar:
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), 1):
      testing.add_to_tar(
          tar, f"cifar-10-batches-py/data_batch_{i}", batch(images[part], labels[part])
      )
    testing.add_to_tar(tar, "cifar-10-batches-py/test_batch", batch(*splits["test"]))
    meta = {b"label_names": [n.encode() for n in LABELS], b"num_vis": 3072}
    testing.add_to_tar(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
  return splits


class _Spec(spec.DatasetSpec):
  """Checked by the number of images: the archive may be any of its re-packagings."""

  def verify(self, directory: str) -> None:
    path = os.path.join(directory, ARCHIVE)
    splits, _ = read(path)
    counts = {k: len(v[1]) for k, v in splits.items()}
    if counts != COUNTS:
      raise CorruptDataError(
          path,
          f"holds {counts} images; the CIFAR-10 release has "
          f"{COUNTS}. Pass --skip_verify to accept it anyway.",
      )


SPEC = _Spec(
    name="cifar10",
    description="CIFAR-10 from the python archive: 50000 train / 10000 test 32x32 colour, "
    "10 classes.",
    features=spec.image_features((32, 32, 3), LABELS),
    generate=generate,
    dataset="ImageDataset",
    sources=(sources.url_source([URL]),),
    manual=f"{ARCHIVE} (from {URL})",
    write_fixture=write_fixture,
    files=(ARCHIVE,),
    defaults={"crop_padding": 4, "flip": True},
    offline=False,
)
