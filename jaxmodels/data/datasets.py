"""The Dataset implementations behind `jaxmodels.data.load`, one per kind of task; each dataset's
spec (jaxmodels/data/sets/) names the class that serves it and any defaults of its own.

Each reads its splits with TFDS data sources (`builder.as_data_source`, what `tfds.data_source`
returns) from the prepared array_record files and serves batches through the grain pipelines of
pipeline.py. By default a split is read into memory once and turned into model-ready arrays
(every dataset here fits; TFDS decodes ~70 us per example, a gather from arrays costs far less);
with `in_memory=False` the image and review datasets read each batch from the files instead,
giving the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
import functools
import glob
import os
import tempfile
from typing import Any

import numpy as np

from jaxmodels.data import builders, fast_read, formats, pipeline, registry
from jaxmodels.data.base import Batch, Dataset
from jaxmodels.data.errors import (
    CorruptDataError,
    DataDirError,
    DataOptionError,
    DatasetNotPreparedError,
)

COMMON_OPTIONS = ("num_threads", "prefetch")


def default_data_dir() -> str:
  """$TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def check_data_dir(data_dir: str, writable: bool = False) -> None:
  """DataDirError naming `data_dir` when it is a file or, with `writable`, when it cannot be
  created or written (object stores are left to their first access)."""
  if "://" in data_dir:
    return
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise DataDirError(
        f"the data dir {data_dir} is a file, not a directory: give data_dir (--data_dir, "
        "--config.data_dir or $TFDS_DATA_DIR; default ~/tensorflow_datasets) a directory."
    )
  if not writable:
    return
  try:
    os.makedirs(data_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=data_dir):
      pass
  except OSError as e:
    raise DataDirError(
        f"cannot write to the data dir {data_dir} ({e.strerror}): choose a directory you can "
        "write to (--data_dir or $TFDS_DATA_DIR), or fix its permissions or free disk space."
    ) from e


class _TableDataset(Dataset):
  """Splits as tables (`take(indices) -> batch` of model-ready arrays); training batches follow
  pipeline.EpochPermutation, or pipeline.BucketedOrder where a subclass set `buckets` (see
  bucket_plan); `_augment` and `_finish` work on whole batches."""

  # Bucket id of each training row and, per bucket, the length each padded key is cut to.
  buckets: np.ndarray | None = None
  bucket_shapes: tuple[dict[str, int], ...] = ()

  def __init__(
      self,
      name: str,
      tables: dict[str, Any],
      info: dict[str, Any],
      eval_splits: tuple[str, ...],
      num_threads: int = 2,
      prefetch: int = 4,
  ):
    self.name, self.tables, self.info = name, tables, info
    self._eval_splits = eval_splits
    self._threads, self._prefetch = num_threads, prefetch

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return self._eval_splits

  @classmethod
  def split_sizes(cls, name: str, records: dict[str, int], **options: Any) -> dict[str, int]:
    """The splits this class serves from prepared splits of `records` examples each, and their
    sizes in records (what `describe` reports); checks the options that depend on the sizes."""
    del name, options
    return dict(records)

  def _table(self, split: str):
    if split not in self.tables:
      raise KeyError(f"{self.name} has no split {split!r}; its splits: {', '.join(self.tables)}")
    return self.tables[split]

  def num_examples(self, split: str) -> int:
    return len(self._table(split))

  def _augment(self, batch: Batch, positions: np.ndarray, seed: int) -> Batch:
    return batch

  def _finish(self, batch: Batch) -> Batch:
    return batch

  def _train_rows(
      self, positions: np.ndarray, order: pipeline.EpochPermutation, seed: int
  ) -> Batch:
    return self.tables["train"].take(order(positions))

  def train_batches(
      self,
      batch_size: int,
      seed: int,
      start_step: int = 0,
      *,
      process_index: int = 0,
      process_count: int = 1,
  ) -> Iterator[Batch]:
    if self.buckets is not None:
      return self._bucketed_batches(batch_size, seed, start_step, process_index, process_count)
    pipeline.local_batch_size(batch_size, process_count)
    order = pipeline.EpochPermutation(self._epoch_size(), seed)

    def make(step: int) -> Batch:
      positions = pipeline.process_positions(step, batch_size, process_index, process_count)
      batch = self._augment(self._train_rows(positions, order, seed), positions, seed)
      return self._finish(batch)

    return pipeline.prefetched(make, start_step, num_threads=self._threads, prefetch=self._prefetch)

  def _bucketed_batches(
      self, batch_size: int, seed: int, start_step: int, process_index: int, process_count: int
  ) -> Iterator[Batch]:
    local = pipeline.local_batch_size(batch_size, process_count)
    order = pipeline.BucketedOrder(self.buckets, batch_size, seed)
    table = self.tables["train"]

    def make(step: int) -> Batch:
      rows, bucket = order(step)
      batch = table.take(rows[process_index * local : (process_index + 1) * local])
      for key, length in self.bucket_shapes[bucket].items():
        batch[key] = np.ascontiguousarray(batch[key][:, :length])
      return self._finish(batch)

    return pipeline.prefetched(make, start_step, num_threads=self._threads, prefetch=self._prefetch)

  def _epoch_size(self) -> int:
    return len(self.tables["train"])

  def eval_batches(
      self,
      split: str,
      batch_size: int,
      *,
      num_batches: int = 0,
      process_index: int = 0,
      process_count: int = 1,
  ) -> Iterator[Batch]:
    table = self._table(split)
    n = len(table)
    if 0 < num_batches * batch_size < n:
      table = pipeline.SubsetTable(table, eval_sample(n, num_batches * batch_size))
      n = len(table)
    pipeline.local_batch_size(batch_size, process_count)
    make = functools.partial(
        pipeline.padded_eval_batch,
        table.take,
        n,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
        finish=self._finish,
    )
    return pipeline.prefetched(
        make, 0, -(-n // batch_size), num_threads=self._threads, prefetch=self._prefetch
    )


def bucket_plan(
    lengths: dict[str, np.ndarray], count: int
) -> tuple[np.ndarray | None, tuple[dict[str, int], ...]]:
  """Length buckets of the training rows: `lengths` maps each padded key ([N, L] arrays, padding
  at the end) to every row's length in it; rows are bucketed by their total length
  (pipeline.length_buckets) and each bucket's batches are cut to its longest row per key.
  count=0: no buckets, (None, ())."""
  if count < 0:
    raise DataOptionError(f"length_buckets must be >= 0 (0: off), got {count}")
  if not count or not lengths or not len(next(iter(lengths.values()))):
    return None, ()
  total = sum(lengths.values())
  buckets = pipeline.length_buckets(total, count)
  shapes = tuple(
      {k: int(v[buckets == b].max()) for k, v in lengths.items()}
      for b in range(int(buckets.max()) + 1)
  )
  return buckets, shapes


def eval_sample(n: int, size: int) -> np.ndarray:
  """Sorted row indices of a fixed random `size` of `n` rows: the sample of a cheap evaluation."""
  return np.sort(np.random.default_rng(0).permutation(n)[:size])


def _tables(splits: dict[str, Any], in_memory: bool, arrays_of, example) -> dict[str, Any]:
  """In memory: ArrayTable of `arrays_of(columns)`; else SourceTable reading `example`s."""
  if in_memory:
    return {k: pipeline.ArrayTable(arrays_of(v)) for k, v in splits.items()}
  return {k: pipeline.SourceTable(v, example) for k, v in splits.items()}


class ImageDataset(_TableDataset):
  """Image classification. Batches: inputs float32 [B,H,W,C] ((x/max_value - mean) / std with
  the train split's per-channel mean/std, or x/max_value with normalize=False), targets int32.

  Options: augment (training only: zero-pad by crop_padding pixels and crop back at a random
  offset, then mirror left-right with probability 1/2 if flip), crop_padding and flip (load's
  defaults: the dataset spec's), normalize, validation_size (hold out that many train examples,
  chosen by the fixed permutation default_rng(0), as a 'validation' split; 0 = none), in_memory.
  info: num_classes, label_names, image_shape, max_value, mean, std, normalized, augment.
  """

  OPTIONS = ("augment", "crop_padding", "flip", "normalize", "validation_size", "in_memory")

  def __init__(
      self,
      name: str,
      splits: dict[str, Any],
      metadata: dict[str, Any],
      label_names: list[str],
      *,
      augment: bool = False,
      crop_padding: int = 0,
      flip: bool = False,
      normalize: bool = True,
      validation_size: int = 0,
      in_memory: bool = True,
      **common: Any,
  ):
    self.augment = augment
    self.crop_padding = crop_padding
    self.flip = flip
    self.normalize = normalize
    tables = _tables(splits, in_memory, self._arrays, self._example)
    if validation_size:
      train = tables["train"]
      held_out_sizes(name, len(train), validation_size)
      order = np.random.default_rng(0).permutation(len(train))
      tables["train"] = pipeline.SubsetTable(train, np.sort(order[validation_size:]))
      tables["validation"] = pipeline.SubsetTable(train, np.sort(order[:validation_size]))
    image_shape = tuple(tables["train"].take(np.zeros(1, np.int64))["inputs"].shape[1:])
    info = {
        "num_classes": len(label_names),
        "label_names": list(label_names),
        "image_shape": image_shape,
        "max_value": metadata["max_value"],
        "mean": tuple(metadata["mean"]),
        "std": tuple(metadata["std"]),
        "normalized": normalize,
        "augment": augment,
    }
    eval_splits = ("validation", "test") if "validation" in tables else ("test",)
    super().__init__(name, tables, info, eval_splits, **common)
    self._scale = np.float32(1.0 / metadata["max_value"])
    self._mean = np.asarray(metadata["mean"], np.float32)
    self._std = np.asarray(metadata["std"], np.float32)

  @classmethod
  def split_sizes(cls, name: str, records: dict[str, int], **options: Any) -> dict[str, int]:
    validation_size = options.get("validation_size") or 0
    if not validation_size:
      return dict(records)
    train, held = held_out_sizes(name, records["train"], validation_size)
    return {**records, "train": train, "validation": held}

  @staticmethod
  def _arrays(columns):
    return {
        "inputs": np.asarray(columns["image"], np.uint8),
        "targets": np.asarray(columns["label"], np.int32),
    }

  @staticmethod
  def _example(record):
    return {"inputs": np.asarray(record["image"], np.uint8), "targets": np.int32(record["label"])}

  def _augment(self, batch, positions, seed):
    if not self.augment or not (self.crop_padding or self.flip):
      return batch
    u = pipeline.uniforms(seed, positions, 3)
    span = 2 * self.crop_padding + 1
    dy, dx = (u[:, 0] * span).astype(np.int64), (u[:, 1] * span).astype(np.int64)
    flip = (u[:, 2] < 0.5) & self.flip
    images = pipeline.crop_and_flip(batch["inputs"], dy, dx, flip, self.crop_padding)
    return dict(batch, inputs=images)

  def _finish(self, batch):
    images = batch["inputs"].astype(np.float32) * self._scale
    if self.normalize:
      images = (images - self._mean) / self._std
    return dict(batch, inputs=images)


def held_out_sizes(name: str, train: int, validation_size: int) -> tuple[int, int]:
  """(train, validation) sizes after holding out `validation_size` of `train` examples;
  DataOptionError unless 0 < validation_size < train."""
  if not 0 < validation_size < train:
    raise DataOptionError(
        f"validation_size={validation_size}: the train split of {name} has {train} examples; "
        f"hold out 1 to {train - 1} of them as the validation split, or 0 for none."
    )
  return train - validation_size, validation_size


class ReviewDataset(_TableDataset):
  """Sequence classification of IMDB reviews. Batches: inputs int32 [B, max_len] (word ids, 0
  padding; ids >= vocab_size become 1, unknown), lengths int32 [B] (at least 1: an empty review
  is one unknown token), targets int32 [B] (0 negative, 1 positive). A review longer than
  max_len keeps its first max_len tokens. Options: max_len, vocab_size (at most the saved
  vocabulary: 30002 for the real data; info['vocab_size'] is what is used), in_memory,
  length_buckets (k > 0, in memory only: each training batch holds reviews of one of k buckets
  of similar length and is cut to the longest of them, see bucket_plan; evaluation batches keep
  max_len). info: num_classes, label_names, vocab_size, vocab (the first vocab_size entries),
  max_len, seq_len (= max_len), pad_id, unk_id, train_shapes ((length,) of each bucket's
  batches; one entry without buckets)."""

  OPTIONS = ("max_len", "vocab_size", "in_memory", "length_buckets")

  def __init__(
      self,
      name: str,
      splits: dict[str, Any],
      metadata: dict[str, Any],
      label_names: list[str],
      *,
      max_len: int = 256,
      vocab_size: int = 20000,
      in_memory: bool = True,
      length_buckets: int = 0,
      **common: Any,
  ):
    if length_buckets and not in_memory:
      raise DataOptionError(
          f"length_buckets={length_buckets} needs the reviews in memory (in_memory=True): the "
          "buckets come from every training review's length"
      )
    vocab = metadata["vocab"]
    if vocab_size < 3:
      raise DataOptionError(
          f"vocab_size must be at least 3 (pad, unknown, a word); got {vocab_size}"
      )
    vocab_size = min(vocab_size, len(vocab))
    if max_len < 1:
      raise DataOptionError(f"max_len must be positive; got {max_len}")
    self.max_len, self.vocab_size = max_len, vocab_size
    info = {
        "num_classes": len(label_names),
        "label_names": list(label_names),
        "vocab_size": vocab_size,
        "vocab": list(vocab[:vocab_size]),
        "max_len": max_len,
        "seq_len": max_len,
        "pad_id": formats.PAD,
        "unk_id": formats.UNK,
    }
    tables = _tables(splits, in_memory, self._arrays, self._example)
    train = tables.get("train")
    lengths = {"inputs": train.arrays["lengths"]} if length_buckets and train else {}
    self.buckets, self.bucket_shapes = bucket_plan(lengths, length_buckets)
    info["train_shapes"] = [(s["inputs"],) for s in self.bucket_shapes] or [(max_len,)]
    super().__init__(name, tables, info, ("validation", "test"), **common)

  def _ids(self, tokens) -> np.ndarray:
    ids = np.asarray(tokens, np.int32)[: self.max_len]
    ids = np.where(ids >= self.vocab_size, formats.UNK, ids).astype(np.int32)
    return ids if len(ids) else np.array([formats.UNK], np.int32)

  def _example(self, record):
    ids = self._ids(record["tokens"])
    inputs = np.zeros(self.max_len, np.int32)
    inputs[: len(ids)] = ids
    return {"inputs": inputs, "lengths": np.int32(len(ids)), "targets": np.int32(record["label"])}

  def _arrays(self, columns):
    tokens = columns.get("tokens", [])
    inputs = np.zeros((len(tokens), self.max_len), np.int32)
    lengths = np.zeros(len(tokens), np.int32)
    for i, t in enumerate(tokens):
      ids = self._ids(t)
      inputs[i, : len(ids)] = ids
      lengths[i] = len(ids)
    return {
        "inputs": inputs,
        "lengths": lengths,
        "targets": np.asarray(columns.get("label", []), np.int32),
    }


class PronunciationDataset(_TableDataset):
  """Seq2seq word -> phonemes (cmudict). Batches: inputs int32 [B, src_len] (letter ids, 0
  padding), targets int32 [B, tgt_len] (BOS=1, phoneme ids, EOS=2, then 0). src_len / tgt_len
  default to the longest word / phoneme sequence + 2; smaller max_src_len / max_tgt_len leave
  longer pairs out of every split (info['dropped'] counts them per split).
  length_buckets=k > 0 draws each training batch from one of k buckets of similar total length
  (pipeline.length_buckets: the shortest half, the next quarter, ...) and cuts it to the longest
  word and phoneme sequence of that bucket, so a step computes far fewer padding positions; the
  train step then compiles once per bucket. Evaluation batches keep the full lengths.
  info: src_vocab, tgt_vocab, src_vocab_size, tgt_vocab_size, src_len, tgt_len, pad_id, bos_id,
  eos_id, dropped, train_shapes ((src, tgt) lengths of each bucket's batches; one entry without
  buckets)."""

  OPTIONS = ("max_src_len", "max_tgt_len", "length_buckets")

  def __init__(
      self,
      name: str,
      splits: dict[str, Any],
      metadata: dict[str, Any],
      label_names: list[str],
      *,
      max_src_len: int | None = None,
      max_tgt_len: int | None = None,
      length_buckets: int = 0,
      **common: Any,
  ):
    self.src_len = max_src_len or metadata["max_src_len"]
    self.tgt_len = max_tgt_len or metadata["max_tgt_len"]
    if self.src_len < 1 or self.tgt_len < 3:
      raise DataOptionError("max_src_len must be >= 1 and max_tgt_len >= 3 (BOS, a phoneme, EOS)")
    tables, dropped = {}, {}
    for split, columns in splits.items():
      arrays, dropped[split] = self._arrays(columns)
      tables[split] = pipeline.ArrayTable(arrays)
    train = tables.get("train")
    lengths = {k: np.count_nonzero(v, axis=1) for k, v in train.arrays.items()} if train else {}
    self.buckets, self.bucket_shapes = bucket_plan(lengths, length_buckets)
    info = {
        "src_vocab": list(metadata["src_vocab"]),
        "tgt_vocab": list(metadata["tgt_vocab"]),
        "src_vocab_size": len(metadata["src_vocab"]),
        "tgt_vocab_size": len(metadata["tgt_vocab"]),
        "src_len": self.src_len,
        "tgt_len": self.tgt_len,
        "pad_id": formats.PAD,
        "bos_id": formats.BOS,
        "eos_id": formats.EOS,
        "dropped": dropped,
        "train_shapes": [(s["inputs"], s["targets"]) for s in self.bucket_shapes]
        or [(self.src_len, self.tgt_len)],
    }
    super().__init__(name, tables, info, ("validation", "test"), **common)

  def _arrays(self, columns) -> tuple[dict[str, np.ndarray], int]:
    pairs = [(w, p) for w, p in zip(columns.get("word", []), columns.get("phonemes", []))]
    kept = [(w, p) for w, p in pairs if len(w) <= self.src_len and len(p) + 2 <= self.tgt_len]
    inputs = np.zeros((len(kept), self.src_len), np.int32)
    targets = np.zeros((len(kept), self.tgt_len), np.int32)
    for i, (word, phonemes) in enumerate(kept):
      inputs[i, : len(word)] = word
      targets[i, 0] = formats.BOS
      targets[i, 1 : len(phonemes) + 1] = phonemes
      targets[i, len(phonemes) + 1] = formats.EOS
    return {"inputs": inputs, "targets": targets}, len(pairs) - len(kept)


class CharacterDataset(_TableDataset):
  """Character language model. Batches: inputs int32 [B, block_size] and targets (the inputs
  shifted by one), cut from windows of block_size + 1 characters.

  Training, epoch e: the split (its works concatenated in order) is cut into windows of
  block_size + 1 characters from an offset in [0, block_size] drawn from (seed, e), and the
  windows are shuffled; every epoch has fresh window boundaries and uses each character at most
  once. Evaluation: windows starting at 0, block_size, 2*block_size, ..., so every character
  after the first is predicted exactly once, except a tail shorter than block_size;
  max_eval_windows keeps that many evenly spaced windows (None: all). num_examples(split) counts
  windows (train: windows per epoch). Options: block_size, max_eval_windows.
  info: vocab, vocab_size, block_size, characters (per split)."""

  OPTIONS = ("block_size", "max_eval_windows")

  def __init__(
      self,
      name: str,
      splits: dict[str, Any],
      metadata: dict[str, Any],
      label_names: list[str],
      *,
      block_size: int = 256,
      max_eval_windows: int | None = None,
      **common: Any,
  ):
    if block_size < 1:
      raise DataOptionError(f"block_size must be >= 1; got {block_size}")
    self.block_size, self.max_eval_windows = block_size, max_eval_windows
    self.text = {split: _concatenate(columns) for split, columns in splits.items()}
    for split, text in self.text.items():
      if len(text) < 2 * (block_size + 1):
        raise DataOptionError(
            f"the {split} split of {name} has {len(text)} characters, too few for "
            f"block_size {block_size}"
        )
    vocab = list(metadata["vocab"])
    info = {
        "vocab": vocab,
        "vocab_size": len(vocab),
        "block_size": block_size,
        "characters": {k: len(v) for k, v in self.text.items()},
    }
    tables = {
        split: _Windows(text, self._eval_starts(len(text)), block_size)
        for split, text in self.text.items()
    }
    super().__init__(name, tables, info, ("validation", "test"), **common)

  def _eval_starts(self, n: int) -> np.ndarray:
    starts = np.arange((n - 1) // self.block_size, dtype=np.int64) * self.block_size
    if self.max_eval_windows and len(starts) > self.max_eval_windows:
      starts = starts[np.linspace(0, len(starts) - 1, self.max_eval_windows).astype(np.int64)]
    return starts

  def _epoch_size(self) -> int:
    size = self.block_size + 1
    return (len(self.text["train"]) - size + 1) // size  # windows per epoch, whatever the offset

  def num_examples(self, split: str) -> int:
    return self._epoch_size() if split == "train" else super().num_examples(split)

  def _train_rows(self, positions, order, seed):
    size = self.block_size + 1
    offsets = np.array([_epoch_offset(seed, int(e), size) for e in positions // order.n])
    starts = offsets + order(positions) * size
    return _windows(self.text["train"], starts, self.block_size)


@functools.lru_cache(maxsize=64)
def _epoch_offset(seed: int, epoch: int, size: int) -> int:
  """Where epoch `epoch`'s windows of `size` characters start: in [0, size), from (seed, epoch)."""
  return int(np.random.default_rng([pipeline.derive_seed(seed, 2), epoch]).integers(size))


def _windows(text: np.ndarray, starts: np.ndarray, block_size: int) -> Batch:
  chunks = text[starts[:, None] + np.arange(block_size + 1)[None]]
  return {"inputs": chunks[:, :-1], "targets": chunks[:, 1:]}


class _Windows:
  """Evaluation windows of a text as a table."""

  def __init__(self, text: np.ndarray, starts: np.ndarray, block_size: int):
    self._text, self._starts, self._block = text, starts, block_size

  def __len__(self) -> int:
    return len(self._starts)

  def take(self, indices: np.ndarray) -> Batch:
    return _windows(self._text, self._starts[indices], self._block)


def _concatenate(columns: dict[str, Any]) -> np.ndarray:
  texts = columns.get("text", [])
  return (
      np.concatenate([np.asarray(t, np.int32) for t in texts])
      if len(texts)
      else np.zeros(0, np.int32)
  )


DATASET_CLASSES: dict[str, type[_TableDataset]] = {
    c.__name__: c for c in (ImageDataset, ReviewDataset, CharacterDataset, PronunciationDataset)
}
_STREAMABLE = (ImageDataset, ReviewDataset)


def load(name: str, data_dir: str | None = None, **options: Any) -> Dataset:
  """The prepared dataset `name` from `data_dir` (default: $TFDS_DATA_DIR or
  ~/tensorflow_datasets). Raises DatasetNotPreparedError naming the prepare command when it
  has not been prepared, CorruptDataError naming the file when its files are damaged."""
  cls, options, builder, data_dir = _prepared(name, data_dir, options)
  in_memory = options.get("in_memory", True) or cls not in _STREAMABLE
  splits = {
      split: _read_split(builder, data_dir, split, in_memory) for split in builder.info.splits
  }
  return cls(name, splits, dict(builder.info.metadata or {}), _label_names(builder), **options)


class SplitSizes:
  """What `load` would serve, known from the prepared dataset's metadata alone: its splits, the
  ones evaluated (`eval_splits`, as the Dataset has them) and their sizes in records
  (`num_examples`). No example is read."""

  def __init__(self, name: str, sizes: dict[str, int]):
    self.name, self.sizes = name, dict(sizes)

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return tuple(s for s in ("validation", "test") if s in self.sizes)

  def num_examples(self, split: str) -> int:
    if split not in self.sizes:
      raise KeyError(f"{self.name} has no split {split!r}; its splits: {', '.join(self.sizes)}")
    return self.sizes[split]


def describe(name: str, data_dir: str | None = None, **options: Any) -> SplitSizes:
  """The splits and sizes `load(name, data_dir, **options)` would serve, with the same errors
  for an unknown option, an unprepared dataset or a validation_size the train split cannot
  give; reads only the dataset's metadata (milliseconds, where load reads every split)."""
  cls, options, builder, _ = _prepared(name, data_dir, options)
  records = {split: info.num_examples for split, info in builder.info.splits.items()}
  return SplitSizes(name, cls.split_sizes(name, records, **options))


def _prepared(name: str, data_dir: str | None, options: dict[str, Any]):
  """(Dataset class, options with the spec's defaults, builder, data dir) of a prepared dataset."""
  spec = registry.get(name)
  cls = DATASET_CLASSES[spec.dataset]
  valid = cls.OPTIONS + COMMON_OPTIONS
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise TypeError(
        f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; valid: "
        f"{', '.join(valid)}"
    )
  options = _with_defaults(options, spec.defaults)
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  check_data_dir(data_dir)
  builder = builders.make(name, data_dir)
  if not builders.is_prepared(builder):
    raise DatasetNotPreparedError(_not_prepared(name, data_dir, builder))
  return cls, options, builder, data_dir


def _with_defaults(options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
  """`options` with the dataset's own default for each one not given or given as None."""
  given = {k: v for k, v in options.items() if v is not None or k not in defaults}
  return {**defaults, **given}


def _not_prepared(name: str, data_dir: str, builder) -> str:
  others = sorted(os.path.basename(p) for p in glob.glob(os.path.join(data_dir, name, "*.*.*")))
  older = (
      (
          f" (only other versions are there: {', '.join(others)}; this code reads "
          f"{builder.version})"
      )
      if others
      else ""
  )
  return (
      f"dataset {name!r} is not prepared in {data_dir}{older}. Prepare it first with:\n"
      f"  python -m jaxmodels.data.prepare {name} --data_dir={data_dir}"
  )


def _read_split(builder, data_dir: str, split: str, in_memory: bool) -> Any:
  try:
    source = builder.as_data_source(split)
    if not in_memory:
      if len(source):
        _ = source[0]  # a damaged file fails here, at load, rather than mid-training
      return source
    return fast_read.read_all(builder, split, source) or pipeline.read_all(source)
  except Exception as e:  # array_record/TFDS raise many kinds for damaged files
    path = os.fspath(builder.data_path)
    files = sorted(glob.glob(os.path.join(path, f"*-{split}.*")))
    raise CorruptDataError(
        files[0] if len(files) == 1 else path,
        f"the prepared {split} split of {builder.name} cannot be read ({type(e).__name__}: "
        f"{str(e)[:300]}). Delete {path} and run: python -m jaxmodels.data.prepare "
        f"{builder.name} --data_dir={data_dir}",
    ) from e


def _label_names(builder) -> list[str]:
  features = builder.info.features
  return list(features["label"].names) if "label" in features.keys() else []
