"""Tiny datasets written in the real raw file formats, for tests (and for trying the pipelines
without downloading anything).

`write_raw(name, directory, seed)` writes the raw files of a small random dataset in the layout
`prepare --manual_dir` accepts, and returns the content it wrote (the reference a test compares
the prepared dataset against): arrays per split for image datasets, the texts / rows / pairs for
the others. Each dataset's writer is in its module of jaxmodels/data/sets/ (its spec's
`write_fixture`); the helpers they share are here.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
from typing import Any

import numpy as np


def write_raw(name: str, directory: str, seed: int = 0, sizes: tuple[int, int] = (40, 12)) -> Any:
  """Writes a tiny random `name` dataset's raw files into `directory`; returns its content."""
  from jaxmodels.data import registry  # the dataset modules use the helpers below

  if name not in registry.SPECS:
    raise ValueError(f"no fixture for {name!r}")
  os.makedirs(directory, exist_ok=True)
  return registry.SPECS[name].write_fixture(directory, np.random.default_rng(seed), sizes)


def idx_bytes(array: np.ndarray) -> bytes:
  """The IDX encoding of a uint8 array (what MNIST's *-ubyte files hold)."""
  array = np.asarray(array, np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
      f">{array.ndim}I", *array.shape
  )
  return header + array.tobytes()


def write_idx_files(
    directory: str, splits: dict[str, tuple[np.ndarray, np.ndarray]], gz: bool = True
) -> None:
  """{'train': (images [N,28,28], labels), 'test': ...} as the four MNIST files."""
  os.makedirs(directory, exist_ok=True)
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = splits[split]
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
      data = idx_bytes(array)
      path = os.path.join(directory, f"{prefix}-{kind}-ubyte" + (".gz" if gz else ""))
      with open(path, "wb") as f:
        f.write(gzip.compress(data, mtime=0) if gz else data)


def write_idx_fixture(
    directory: str, rng: np.random.Generator, sizes: tuple[int, int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Random 28x28 images as the four gzipped IDX files; returns images [N,28,28,1], labels."""
  splits = {
      "train": random_images(rng, sizes[0], (28, 28)),
      "test": random_images(rng, sizes[1], (28, 28)),
  }
  write_idx_files(directory, splits)
  return {k: (v[0][..., None], v[1]) for k, v in splits.items()}


def add_to_tar(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  """Adds a member `name` holding `data`."""
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def random_images(
    rng: np.random.Generator, n: int, shape: tuple[int, ...], high: int = 256
) -> tuple[np.ndarray, np.ndarray]:
  """n uint8 images of `shape` with values below `high`, and labels 0..9 (int64)."""
  return rng.integers(0, high, (n, *shape), dtype=np.int64).astype(np.uint8), rng.integers(
      0, 10, n
  ).astype(np.int64)
