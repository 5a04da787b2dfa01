"""Random batches with the real shapes and vocabularies: smoke tests and throughput benchmarks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxmodels.data.base import Batch, Dataset

KINDS = ("image_classification", "sequence_classification", "language_model", "seq2seq")
_SPLITS = ("train", "validation", "test")
_EVAL_EXAMPLES = 100  # not a multiple of common batch sizes, so padding is exercised


class SyntheticDataset(Dataset):
  """Batch s is a pure function of (seed, s); every split has a fixed small number of examples.

  info keys by kind:
    image_classification: image_shape (H, W, C), num_classes
    sequence_classification: seq_len, vocab_size, num_classes
    language_model: block_size, vocab_size
    seq2seq: src_len, tgt_len, src_vocab_size, tgt_vocab_size
  """

  def __init__(self, kind: str, **info: Any):
    if kind not in KINDS:
      raise ValueError(f"synthetic data kind {kind!r} is unknown; valid kinds: {', '.join(KINDS)}")
    self.kind = kind
    self.info = dict(info, synthetic=True)

  def _batch(self, rng: np.random.Generator, n: int) -> Batch:
    info = self.info
    if self.kind == "image_classification":
      return {
          "inputs": rng.standard_normal((n, *info["image_shape"]), dtype=np.float32),
          "targets": rng.integers(0, info["num_classes"], n, dtype=np.int32),
      }
    if self.kind == "sequence_classification":
      t = info["seq_len"]
      lengths = rng.integers(1, t + 1, n, dtype=np.int32)
      tokens = rng.integers(1, info["vocab_size"], (n, t), dtype=np.int32)
      tokens = np.where(np.arange(t)[None] < lengths[:, None], tokens, 0).astype(np.int32)
      return {
          "inputs": tokens,
          "lengths": lengths,
          "targets": rng.integers(0, info["num_classes"], n, dtype=np.int32),
      }
    if self.kind == "language_model":
      seq = rng.integers(0, info["vocab_size"], (n, info["block_size"] + 1), dtype=np.int32)
      return {"inputs": seq[:, :-1], "targets": seq[:, 1:]}
    # seq2seq: content tokens start at 3 (0 pad, 1 BOS, 2 EOS).
    s, t = info["src_len"], info["tgt_len"]
    src_len = rng.integers(1, s + 1, n)
    tgt_len = rng.integers(1, t - 1, n)
    src = rng.integers(3, info["src_vocab_size"], (n, s), dtype=np.int32)
    src = np.where(np.arange(s)[None] < src_len[:, None], src, 0)
    body = rng.integers(3, info["tgt_vocab_size"], (n, t), dtype=np.int32)
    pos = np.arange(t)[None]
    tgt = np.where(
        pos == 0,
        1,
        np.where(pos <= tgt_len[:, None], body, np.where(pos == tgt_len[:, None] + 1, 2, 0)),
    )
    return {"inputs": src.astype(np.int32), "targets": tgt.astype(np.int32)}

  def train_batches(
      self,
      batch_size: int,
      seed: int,
      start_step: int = 0,
      *,
      process_index: int = 0,
      process_count: int = 1,
  ) -> Iterator[Batch]:
    local = batch_size // process_count
    step = start_step
    while True:
      batch = self._batch(np.random.default_rng([seed, step]), batch_size)
      yield {k: v[process_index * local : (process_index + 1) * local] for k, v in batch.items()}
      step += 1

  def num_examples(self, split: str) -> int:
    if split not in _SPLITS:
      raise KeyError(f"synthetic data has no split {split!r}; its splits: {', '.join(_SPLITS)}")
    return _EVAL_EXAMPLES if split != "train" else 10**9

  def eval_batches(
      self,
      split: str,
      batch_size: int,
      *,
      num_batches: int = 0,
      process_index: int = 0,
      process_count: int = 1,
  ) -> Iterator[Batch]:
    self.num_examples(split)  # a clear KeyError for an unknown split
    split_id = _SPLITS.index(split)
    size = num_batches * batch_size if 0 < num_batches * batch_size < _EVAL_EXAMPLES else None
    data = self._batch(np.random.default_rng([12345, split_id]), size or _EVAL_EXAMPLES)
    yield from pad_and_batch(data, batch_size, process_index, process_count)


def pad_and_batch(
    data: Batch, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[Batch]:
  """Fixed-order global batches of `data` with a `mask`; the last one padded with zeros."""
  n = len(next(iter(data.values())))
  local = batch_size // process_count
  for start in range(0, n, batch_size):
    lo, hi = start + process_index * local, start + (process_index + 1) * local
    idx = np.arange(lo, hi)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    batch = {
        k: np.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v[idx], 0).astype(v.dtype)
        for k, v in data.items()
    }
    batch["mask"] = valid.astype(np.float32)
    yield batch
