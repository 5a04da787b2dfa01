"""What the engine needs from a dataset: batches as dicts of numpy arrays.

Batch keys by kind of task (all numpy, leading axis = examples):
  image classification     inputs float32 [B,H,W,C] (normalised), targets int32 [B]
  sequence classification  inputs int32 [B,T] (0 = padding), lengths int32 [B], targets int32 [B]
  language model           inputs int32 [B,T], targets int32 [B,T] (inputs shifted by one)
  seq2seq                  inputs int32 [B,S], targets int32 [B,T] (0 = padding; targets start
                           with BOS=1 and end with EOS=2)
Evaluation batches also carry mask float32 [B]: 1 for a real example, 0 for padding that fills
the last batch.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]


class Dataset(abc.ABC):
  """A dataset the engine can train and evaluate on."""

  #: Facts models and tasks need: num_classes, vocab_size, image_shape, block_size, ...
  info: dict[str, Any]

  @abc.abstractmethod
  def train_batches(
      self,
      batch_size: int,
      seed: int,
      start_step: int = 0,
      *,
      process_index: int = 0,
      process_count: int = 1,
  ) -> Iterator[Batch]:
    """Infinite training batches from step `start_step` on.

    `batch_size` is the global batch. The batch of step s is a deterministic function of
    (seed, s), reshuffled every epoch; process p receives rows [p*L, (p+1)*L) of it, with
    L = batch_size // process_count, so a resumed or multi-process run sees exactly the batches
    of an uninterrupted single-process run.
    """

  @abc.abstractmethod
  def eval_batches(
      self,
      split: str,
      batch_size: int,
      *,
      num_batches: int = 0,
      process_index: int = 0,
      process_count: int = 1,
  ) -> Iterator[Batch]:
    """Every example of `split` exactly once, in fixed order, padded batches with `mask`.

    `num_batches` > 0 serves only that many full batches, of a fixed random sample of the split
    (the same rows at every call), for a cheap estimate; 0 or a sample that would be the whole
    split serves every example."""

  @abc.abstractmethod
  def num_examples(self, split: str) -> int:
    """Examples in `split` ('train', 'validation' or 'test')."""

  @property
  def eval_splits(self) -> tuple[str, ...]:
    """Splits evaluated during training (first) and at the end (all)."""
    return ("validation", "test")
