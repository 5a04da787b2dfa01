"""grain pipelines: training streams and evaluation passes as random-access datasets of batches.

A pipeline is `grain.MapDataset.range(first_step, ...).map(make_batch)` turned into an
IterDataset whose `num_threads` threads make the next `prefetch` batches while the model runs a
step. `make_batch(s)` is a pure function of (seed, s), so resuming at step s, or running as
process p of P, needs no iterator state.

Training. Stream position i (example i of the infinite stream) is example perm_e[i mod N] of
epoch e = i div N, where perm_e is a permutation drawn from (seed, e): every epoch is reshuffled.
Global batch s holds positions [s*B, (s+1)*B); process p takes rows [p*L, (p+1)*L), L = B/P.
Augmentation draws its random numbers from (seed, stream position) with a counter-based hash,
so an example's crop does not depend on batch size, process count or thread timing.

Evaluation. Every example once in order, global batches of B padded at the end, each process
its rows, `mask` 1 for real rows and 0 for padding (synthetic.pad_and_batch's layout).

Why whole batches rather than grain's per-example shuffle/random_map/batch: measured here, those
add ~50 us of per-element bookkeeping (8 ms per batch of 128 before any real work), while a
vectorised gather + augmentation of a batch of 128 images takes well under a millisecond.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import functools
import sys
from typing import Any

import grain
import numpy as np

from jaxmodels.data.base import Batch

_M1, _M2, _GOLDEN = (
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
    np.uint64(0x9E3779B97F4A7C15),
)


def derive_seed(seed: int, salt: int) -> int:
  """A 32-bit seed for one use (`salt`) of the user's seed: shuffling and augmenting differ."""
  return int(np.random.SeedSequence([seed % 2**32, salt]).generate_state(1)[0])


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijection of uint64 that scatters nearby inputs."""
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, positions: np.ndarray, count: int) -> np.ndarray:
  """float64 [len(positions), count] in [0, 1): a fixed function of (seed, position, column)."""
  key = _mix(np.array([derive_seed(seed, 1)], np.uint64) + _GOLDEN)
  counters = (
      np.asarray(positions, np.uint64)[:, None] * np.uint64(count)
      + np.arange(count, dtype=np.uint64)[None]
  )
  with np.errstate(over="ignore"):
    bits = _mix(_mix(counters + _GOLDEN) ^ key)
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def local_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(
        f"batch_size {batch_size} must be a positive multiple of process_count " f"{process_count}"
    )
  return batch_size // process_count


def process_positions(
    step: int, batch_size: int, process_index: int, process_count: int
) -> np.ndarray:
  """Stream positions of this process's rows of global batch `step`."""
  local = local_batch_size(batch_size, process_count)
  return step * batch_size + process_index * local + np.arange(local, dtype=np.int64)


class EpochPermutation:
  """Maps stream positions to example indices: a fresh permutation of N examples per epoch."""

  def __init__(self, n: int, seed: int):
    if n < 1:
      raise ValueError("cannot shuffle an empty split")
    self.n, self._seed = n, derive_seed(seed, 0)
    self.permutation = functools.lru_cache(maxsize=4)(self._permutation)

  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self._seed, epoch]).permutation(self.n)

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    epochs, within = np.divmod(positions, self.n)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self.permutation(int(epoch))[within[sel]]
    return out


def length_buckets(lengths: np.ndarray, count: int) -> np.ndarray:
  """Bucket ids 0..k-1 of examples by length, k <= count: the first bucket holds the shortest
  half, the next a quarter, then an eighth, ..., the last the rest, so most batches are short and
  only a small tail is padded to the longest example. Equal lengths share a bucket."""
  if count < 1:
    raise ValueError(f"length_buckets must be >= 1, got {count}")
  lengths = np.asarray(lengths)
  quantiles = [1 - 0.5 ** (i + 1) for i in range(count - 1)]
  bounds = np.unique(np.quantile(lengths, quantiles, method="lower")) if quantiles else []
  return np.searchsorted(np.asarray(bounds), lengths, side="left").astype(np.int64)


class BucketedOrder:
  """Training batches of examples from one bucket each (see length_buckets).

  Epoch e shuffles each bucket with a generator seeded by (seed, e), cuts it into whole batches
  (a bucket's last partial batch waits for another epoch) and shuffles the order of all the
  epoch's batches. `order(step)` -> (example indices of global batch `step`, its bucket): a pure
  function of (seed, step), like EpochPermutation, so resumes and processes agree.
  """

  def __init__(self, buckets: np.ndarray, batch_size: int, seed: int):
    buckets = np.asarray(buckets)
    self.members = [np.flatnonzero(buckets == b) for b in range(int(buckets.max(initial=-1)) + 1)]
    self.batch_size = batch_size
    self.batches_per_epoch = sum(len(m) // batch_size for m in self.members)
    if self.batches_per_epoch == 0:
      raise ValueError(
          f"no length bucket holds a whole batch of {batch_size} (bucket sizes "
          f"{[len(m) for m in self.members]}): use fewer length_buckets or a "
          "smaller batch_size"
      )
    self._seed = derive_seed(seed, 3)
    self._epoch = functools.lru_cache(maxsize=2)(self._plan)

  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self._seed, epoch])
    rows, bucket_ids = [], []
    for b, members in enumerate(self.members):
      whole = len(members) // self.batch_size * self.batch_size
      rows.append(rng.permutation(members)[:whole].reshape(-1, self.batch_size))
      bucket_ids.append(np.full(len(rows[-1]), b))
    order = rng.permutation(self.batches_per_epoch)
    return np.concatenate(rows)[order], np.concatenate(bucket_ids)[order]

  def __call__(self, step: int) -> tuple[np.ndarray, int]:
    epoch, index = divmod(step, self.batches_per_epoch)
    rows, bucket_ids = self._epoch(epoch)
    return rows[index], int(bucket_ids[index])


def prefetched(
    make: Callable[[int], Batch],
    start: int,
    stop: int = sys.maxsize,
    *,
    num_threads: int = 2,
    prefetch: int = 4,
) -> Iterator[Batch]:
  """make(start), make(start + 1), ... made ahead on `num_threads` threads, in order."""
  ds = grain.MapDataset.range(start, stop).map(make)
  if num_threads < 1:
    return (ds[i] for i in range(len(ds)))
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(1, prefetch))
  return iter(ds.to_iter_dataset(options))


def padded_eval_batch(
    take: Callable[[np.ndarray], Batch],
    n: int,
    step: int,
    batch_size: int,
    process_index: int,
    process_count: int,
    finish: Callable[[Batch], Batch] | None = None,
) -> Batch:
  """This process's rows of evaluation batch `step`: rows past the end are zeros, mask 0."""
  positions = process_positions(step, batch_size, process_index, process_count)
  valid = positions < n
  batch = take(np.where(valid, positions, 0))
  if finish is not None:
    batch = finish(batch)
  out = {
      k: np.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0).astype(v.dtype)
      for k, v in batch.items()
  }
  out["mask"] = valid.astype(np.float32)
  return out


def crop_and_flip(
    images: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray, padding: int
) -> np.ndarray:
  """Image i: zero-pad by `padding`, crop at (dy[i], dx[i]), then mirror left-right if flip[i]."""
  b, h, w, c = images.shape
  padded = np.zeros((b, h + 2 * padding, w + 2 * padding, c), images.dtype)
  padded[:, padding : padding + h, padding : padding + w] = images
  rows = dy[:, None] + np.arange(h)[None]
  cols = dx[:, None] + np.arange(w)[None]
  cols = np.where(np.asarray(flip, bool)[:, None], cols[:, ::-1], cols)
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


class ArrayTable:
  """Model-ready examples held as arrays [N, ...]: a batch is one fancy-index per key."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays
    self._n = len(next(iter(arrays.values()))) if arrays else 0

  def __len__(self) -> int:
    return self._n

  def take(self, indices: np.ndarray) -> Batch:
    return {k: v[indices] for k, v in self.arrays.items()}


class SourceTable:
  """Examples read on demand from a TFDS data source (batched reads), made model-ready by
  `example` one by one and stacked."""

  def __init__(self, source: Sequence, example: Callable[[dict[str, Any]], dict[str, Any]]):
    self._source, self._example = source, example

  def __len__(self) -> int:
    return len(self._source)

  def take(self, indices: np.ndarray) -> Batch:
    records = self._source.__getitems__([int(i) for i in indices])
    examples = [self._example(r) for r in records]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class SubsetTable:
  """Rows `indices` of another table (e.g. a validation split carved out of train)."""

  def __init__(self, table, indices: np.ndarray):
    self._table, self._indices = table, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def take(self, indices: np.ndarray) -> Batch:
    return self._table.take(self._indices[indices])


def read_all(source: Sequence, chunk: int = 4096) -> dict[str, list[np.ndarray] | np.ndarray]:
  """Every record of a TFDS data source, read in batches, as columns: a stacked array where all
  values share a shape, else a list of arrays (variable-length token sequences)."""
  n = len(source)
  records: list[dict[str, Any]] = []
  for start in range(0, n, chunk):
    records.extend(source.__getitems__(list(range(start, min(n, start + chunk)))))
  columns: dict[str, Any] = {}
  for key in (records[0] if records else {}):
    values = [np.asarray(r[key]) for r in records]
    same = all(v.shape == values[0].shape for v in values)
    columns[key] = np.stack(values) if same else values
  return columns
