"""Reading a whole prepared split without TFDS's per-example decoding (~5x faster).

The serialized tf.train.Example records are parsed directly: bytes-encoded tensors with
np.frombuffer, class labels from their int64 list. This leans on TFDS's private record layout,
so `read_all` checks the first record against TFDS's own decoding and returns None (the caller
then takes the slow path) if that differs or anything is unexpected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_CHUNK = 8192  # records fetched per call


def read_all(builder, split: str, source: Sequence) -> dict[str, Any] | None:
  """Columns {feature: stacked array (or list of arrays of different shapes)} of every record of
  `split`, in order; `source` is the split's ordinary data source. None if not applicable."""
  from tensorflow_datasets.core import decode

  try:
    parse = _parser(builder.info.features)
    if parse is None:
      return None
    raw = builder.as_data_source(split, deserialize_method=decode.DeserializeMethod.RAW_BYTES)
    n = len(raw)
    if n and not _same(parse(raw[0]), source[0]):
      return None
    columns: dict[str, list] = {}
    for start in range(0, n, _CHUNK):
      for record in raw.__getitems__(list(range(start, min(n, start + _CHUNK)))):
        for k, v in parse(record).items():
          columns.setdefault(k, []).append(v)
  except (TypeError, ValueError, KeyError, IndexError, AttributeError):
    return None
  return {k: _stack(columns.get(k, [])) for k in builder.info.features.keys()}


def _parser(features) -> Callable[[bytes], dict[str, Any]] | None:
  """record -> {feature: value}; None if a feature is neither a ClassLabel nor a Tensor."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.proto import tf_example_pb2

  specs = {}
  for key, feature in features.items():
    if isinstance(feature, tfds.features.ClassLabel):
      specs[key] = None
    elif isinstance(feature, tfds.features.Tensor):
      specs[key] = (feature.np_dtype, tuple(-1 if d is None else d for d in feature.shape))
    else:
      return None

  def parse(record: bytes) -> dict[str, Any]:
    fields = tf_example_pb2.Example.FromString(record).features.feature
    return {
        k: fields[k].int64_list.value[0]
        if spec is None
        else np.frombuffer(fields[k].bytes_list.value[0], spec[0]).reshape(spec[1])
        for k, spec in specs.items()
    }

  return parse


def _same(parsed: dict[str, Any], reference: dict[str, Any]) -> bool:
  return all(np.array_equal(v, reference[k]) for k, v in parsed.items())


def _stack(values: list) -> Any:
  arrays = [np.asarray(v) for v in values]
  same = all(a.shape == arrays[0].shape for a in arrays)
  return np.stack(arrays) if same and arrays else arrays
