"""In-memory datasets with grain index pipelines: seeded per-epoch shuffles, augmentation,
per-process shards and prefetching.

Every dataset here fits in memory, so a split is a dict of numpy arrays read once from its TFDS
array_record files. grain orders the examples (a global shuffle reseeded every epoch, addressed
by position, so step s of any run or process is computable without replaying the stream) and
prefetches batches on threads; numpy gathers and augments whole batches.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterator

import grain
import numpy as np

from jaxmodels.data.base import Batch, Dataset
from jaxmodels.data.synthetic import pad_and_batch

Augment = Callable[[Batch, np.random.Generator, slice, int], Batch]


def _prefetched(make: Callable[[int], Batch], start: int) -> Iterator[Batch]:
  ds = grain.MapDataset.range(start, sys.maxsize).map(make)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))


class ArrayDataset(Dataset):
  """Fixed-size examples (images, padded token sequences) held as arrays per split."""

  def __init__(self, splits: dict[str, Batch], info: dict[str, Any],
               augment: Augment | None = None, eval_splits: tuple[str, ...] = ("test",)):
    self.splits, self.info, self.augment = splits, info, augment
    self._eval_splits = eval_splits

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return self._eval_splits

  def num_examples(self, split: str) -> int:
    return len(next(iter(self.splits[split].values())))

  def train_batches(self, batch_size: int, seed: int, start_step: int = 0, *,
                    process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    train = self.splits["train"]
    order = grain.MapDataset.range(self.num_examples("train")).shuffle(seed=seed).repeat()
    local = batch_size // process_count
    rows = slice(process_index * local, (process_index + 1) * local)

    def make(step: int) -> Batch:
      first = step * batch_size + rows.start
      idx = np.fromiter((order[first + j] for j in range(local)), np.int64, local)
      batch = {k: v[idx] for k, v in train.items()}
      if self.augment:
        batch = self.augment(batch, np.random.default_rng([seed, step]), rows, batch_size)
      return self.finish(batch)
    return _prefetched(make, start_step)

  def eval_batches(self, split: str, batch_size: int, *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[Batch]:
    for batch in pad_and_batch(self.splits[split], batch_size, process_index, process_count):
      yield self.finish(batch)

  def finish(self, batch: Batch) -> Batch:
    """Model-ready arrays: images become normalised float32."""
    if "image" not in batch:
      return batch
    out = {k: v for k, v in batch.items() if k not in ("image", "label")}
    image = batch["image"].astype(np.float32) / 255.0
    out["inputs"] = (image - self.info["mean"]) / self.info["std"]
    out["targets"] = batch["label"].astype(np.int32)
    return out


def crop_and_flip(pad: int, flip: bool) -> Augment:
  """Random crop after zero-padding by `pad` pixels, and a random horizontal flip.

  The random draws cover the whole global batch and each process takes its rows, so the
  augmentation of an example does not depend on how many processes share the batch.
  """
  def augment(batch: Batch, rng: np.random.Generator, rows: slice, global_size: int) -> Batch:
    images = batch["image"]
    _, h, w, _ = images.shape
    shifts = rng.integers(0, 2 * pad + 1, size=(global_size, 2))[rows]
    flips = (rng.random(global_size) < 0.5)[rows] if flip else np.zeros(len(images), bool)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty_like(images)
    for i, ((dy, dx), f) in enumerate(zip(shifts, flips)):
      crop = padded[i, dy:dy + h, dx:dx + w]
      out[i] = crop[:, ::-1] if f else crop
    return dict(batch, image=out)
  return augment


class TokenStreamDataset(Dataset):
  """A character language-model corpus: one token stream per split.

  Training takes random windows of block_size + 1 tokens (inputs = window[:-1], targets =
  window[1:]), their starts drawn from (seed, step). Evaluation uses fixed non-overlapping windows
  that tile the split; at most `max_eval_windows` of them, evenly spaced, to bound eval time.
  """

  def __init__(self, streams: dict[str, np.ndarray], info: dict[str, Any], block_size: int,
               max_eval_windows: int = 1024):
    self.streams, self.block_size, self.max_eval_windows = streams, block_size, max_eval_windows
    self.info = dict(info, block_size=block_size)

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return tuple(s for s in ("validation", "test") if s in self.streams)

  def _windows(self, split: str) -> np.ndarray:
    n = (len(self.streams[split]) - 1) // self.block_size
    starts = np.arange(n) * self.block_size
    if n > self.max_eval_windows:
      starts = starts[np.linspace(0, n - 1, self.max_eval_windows).astype(np.int64)]
    return starts

  def num_examples(self, split: str) -> int:
    return len(self._windows(split)) if split != "train" else len(self.streams["train"])

  def _take(self, stream: np.ndarray, starts: np.ndarray) -> Batch:
    idx = starts[:, None] + np.arange(self.block_size + 1)[None]
    windows = stream[idx]
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

  def train_batches(self, batch_size: int, seed: int, start_step: int = 0, *,
                    process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    stream = self.streams["train"]
    local = batch_size // process_count
    rows = slice(process_index * local, (process_index + 1) * local)

    def make(step: int) -> Batch:
      rng = np.random.default_rng([seed, step])
      starts = rng.integers(0, len(stream) - self.block_size - 1, batch_size)[rows]
      return self._take(stream, starts)
    return _prefetched(make, start_step)

  def eval_batches(self, split: str, batch_size: int, *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[Batch]:
    data = self._take(self.streams[split], self._windows(split))
    yield from pad_and_batch(data, batch_size, process_index, process_count)
