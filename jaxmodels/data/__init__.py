"""Datasets: `load(name, data_dir=None, **options)` returns a Dataset (see base.py).

Prepare a dataset once with `python -m jaxmodels.data.prepare <name|all> [--data_dir=DIR]`
(default data dir: $TFDS_DATA_DIR or ~/tensorflow_datasets); `load` of an unprepared dataset
raises DatasetNotPreparedError naming that command.

  name           splits (train/validation/test)   batch keys; load options
  fashion_mnist  60000 / - / 10000 28x28x1        inputs float32, targets; augment (crop, pad 2,
                                                  + flip), crop_padding, flip, normalize,
                                                  validation_size, in_memory
  mnist          60000 / - / 10000 28x28x1        same (augment: crop only)
  digits         1437 / - / 360 8x8x1 (0..16)     same (augment: crop, pad 1)
  cifar10        50000 / - / 10000 32x32x3        same (augment: crop, pad 4, + flip)
  shakespeare    90% / 5% / 5% of each work        inputs, targets int32 [B, block_size];
                                                  block_size (256), max_eval_windows (None)
  imdb           80% / 10% / 10% by text hash     inputs, lengths, targets; max_len (256),
                                                  vocab_size (20000), in_memory,
                                                  length_buckets (0: off; k: batches by length)
  cmudict        90% / 5% / 5% by word hash       inputs, targets (BOS 1 ... EOS 2, pad 0);
                                                  max_src_len, max_tgt_len (default: longest),
                                                  length_buckets (0: off; k: batches by length)
Every dataset also takes num_threads (2) and prefetch (4): grain's batch-making threads and
the number of batches kept ready. `info` keys are listed in each class of datasets.py.

Each dataset is one module of sets/ defining its DatasetSpec (spec.py): TFDS features and how
examples and metadata are made from the raw files, the raw files and their checksums, sources,
the Dataset class serving it (datasets.py) with its defaults, and its test fixture. registry.py
lists them; NAMES comes from there. Adding a dataset: a module in sets/, its line in
registry.py, and its rows above.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import contextvars
from typing import Any

from jaxmodels.data.base import Batch, Dataset
from jaxmodels.data.errors import (
    CorruptDataError,
    DataError,
    DataOptionError,
    DatasetNotPreparedError,
    PrepareError,
)
from jaxmodels.data.formats import tokenize_review
from jaxmodels.data.registry import NAMES
from jaxmodels.data.synthetic import SyntheticDataset

# Errors a user can fix (the experiment CLI prints them as one paragraph).
USER_ERRORS = (DataError,)

__all__ = [
    "Batch",
    "CorruptDataError",
    "DataError",
    "DataOptionError",
    "Dataset",
    "DatasetNotPreparedError",
    "NAMES",
    "PrepareError",
    "SyntheticDataset",
    "USER_ERRORS",
    "default_data_dir",
    "load",
    "splits_only",
    "tokenize_review",
]


_SPLITS_ONLY = contextvars.ContextVar("jaxmodels_data_splits_only", default=False)


def load(name: str, data_dir: str | None = None, **options: Any) -> Dataset:
  """The prepared dataset `name` (see the table above for the options); inside `splits_only()`
  its datasets.SplitSizes instead."""
  from jaxmodels.data import datasets  # imports TFDS and grain only when data is used

  if _SPLITS_ONLY.get():
    return datasets.describe(name, data_dir, **options)
  return datasets.load(name, data_dir, **options)


@contextlib.contextmanager
def splits_only() -> Iterator[None]:
  """Within this context `load` reads only a dataset's metadata and returns what it would serve
  (eval_splits, num_examples) with the errors load would raise, so that a check before a run (a
  sweep's, of an experiment's get_data) costs milliseconds instead of reading every split."""
  token = _SPLITS_ONLY.set(True)
  try:
    yield
  finally:
    _SPLITS_ONLY.reset(token)


def default_data_dir() -> str:
  """$TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  from jaxmodels.data import datasets

  return datasets.default_data_dir()
