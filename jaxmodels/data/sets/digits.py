"""scikit-learn's 8x8 digits, from the digits.csv.gz that scikit-learn ships."""

from __future__ import annotations

import gzip
import importlib.util
import io
import math
import os
from typing import Any

import numpy as np

from jaxmodels.data import formats, sources, spec
from jaxmodels.data.errors import CorruptDataError

FILE = "digits.csv.gz"


def read(path: str) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits.csv.gz: rows of 64 pixel values (0..16) and the label."""
  text = formats.read_bytes(path).decode("ascii", errors="replace")
  try:
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
  except ValueError as e:
    raise CorruptDataError(path, f"is not a table of integers ({e})") from e
  if table.shape[1] != 65 or table.min() < 0 or table[:, :64].max() > 16 or table[:, 64].max() > 9:
    raise CorruptDataError(path, f"rows must be 64 pixels in 0..16 and a label; got {table.shape}")
  return table[:, :64].reshape(-1, 8, 8, 1).astype(np.uint8), table[:, 64]


def split(n: int, test_fraction: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
  """Fixed held-out split of the digits: a permutation by default_rng(seed); the first
  ceil(test_fraction * n) indices are the test split (360 of 1797), the rest train (1437)."""
  order = np.random.default_rng(seed).permutation(n)
  n_test = math.ceil(test_fraction * n)
  return {"train": np.sort(order[n_test:]), "test": np.sort(order[:n_test])}


def generate(raw_dir: str) -> tuple[dict[str, Any], dict[str, spec.Examples]]:
  images, labels = read(os.path.join(raw_dir, FILE))
  return spec.image_examples(
      {k: (images[idx], labels[idx]) for k, idx in split(len(images)).items()}, 16
  )


def sklearn_source() -> sources.Source:
  """The copy of the digits that scikit-learn ships in sklearn/datasets/data/."""

  def get(scratch: str) -> list[str]:
    found = importlib.util.find_spec("sklearn")
    if found is None or not found.submodule_search_locations:
      raise ModuleNotFoundError("scikit-learn is not installed (pip install scikit-learn)")
    return [os.path.join(found.submodule_search_locations[0], "datasets", "data", FILE)]

  return sources.Source("scikit-learn's bundled sklearn/datasets/data/digits.csv.gz", get)


def write_fixture(
    directory: str, rng: np.random.Generator, sizes: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
  """digits.csv.gz of sum(sizes) random images; returns (images [N,8,8,1], labels)."""
  from jaxmodels.data import testing

  images, labels = testing.random_images(rng, sum(sizes), (8, 8), high=17)
  table = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1)
  text = "\n".join(",".join(str(int(v)) for v in row) for row in table) + "\n"
  with open(os.path.join(directory, FILE), "wb") as f:
    f.write(gzip.compress(text.encode(), mtime=0))
  return images[..., None], labels


SPEC = spec.DatasetSpec(
    name="digits",
    description="scikit-learn's 8x8 digits (values 0..16): 1797 images split by a fixed "
    "permutation\n(default_rng(0)) into 1437 train / 360 test.",
    features=spec.image_features((8, 8, 1)),
    generate=generate,
    dataset="ImageDataset",
    sources=(sklearn_source(),),
    manual=f"{FILE} (found in an installed scikit-learn at sklearn/datasets/data/)",
    write_fixture=write_fixture,
    files=(FILE,),
    sha256={FILE: "6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8"},
    defaults={"crop_padding": 1, "flip": False},
)
