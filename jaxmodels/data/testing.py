"""Tiny datasets written in the real raw file formats, for tests (and for trying the pipelines
without downloading anything).

`write_raw(name, directory, seed)` writes the raw files of a small random dataset in the layout
`prepare --manual_dir` accepts, and returns the content it wrote (the reference a test compares
the prepared dataset against): arrays per split for image datasets, the texts / rows / pairs for
the others.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
import pickle
import struct
import tarfile
from typing import Any

import numpy as np

from jaxmodels.data import builders, formats


def idx_bytes(array: np.ndarray) -> bytes:
  """The IDX encoding of a uint8 array (what MNIST's *-ubyte files hold)."""
  array = np.asarray(array, np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                      *array.shape)
  return header + array.tobytes()


def write_idx_files(directory: str, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                    gz: bool = True) -> None:
  """{'train': (images [N,28,28], labels), 'test': ...} as the four MNIST files."""
  os.makedirs(directory, exist_ok=True)
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = splits[split]
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
      data = idx_bytes(array)
      path = os.path.join(directory, f"{prefix}-{kind}-ubyte" + (".gz" if gz else ""))
      with open(path, "wb") as f:
        f.write(gzip.compress(data, mtime=0) if gz else data)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_cifar10(path: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
  """The CIFAR-10 python archive layout: train split over data_batch_1..5, pickled dicts with
  bytes keys (as the original Python 2 pickles load) and rows of R, G, B planes."""
  def batch(images, labels):
    rows = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    return pickle.dumps({b"batch_label": b"fixture", b"labels": [int(x) for x in labels],
                         b"data": rows, b"filenames": [b"x.png"] * len(labels)}, protocol=2)
  images, labels = splits["train"]
  parts = np.array_split(np.arange(len(labels)), 5)
  with tarfile.open(path, "w:gz") as tar:
    for i, part in enumerate(parts, 1):
      _add(tar, f"cifar-10-batches-py/data_batch_{i}", batch(images[part], labels[part]))
    _add(tar, "cifar-10-batches-py/test_batch", batch(*splits["test"]))
    meta = {b"label_names": [n.encode() for n in builders.CIFAR10_LABELS], b"num_vis": 3072}
    _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))


def _random_images(rng: np.random.Generator, n: int, shape: tuple[int, ...],
                   high: int = 256) -> tuple[np.ndarray, np.ndarray]:
  return rng.integers(0, high, (n, *shape), dtype=np.int64).astype(np.uint8), \
      rng.integers(0, 10, n).astype(np.int64)


_WORDS = ("the", "film", "was", "good", "bad", "plot", "acting", "great", "boring", "a", "movie",
          "it's", "not", "very", "and", "story", "music", "ending", "fun", "slow")
_PHONEMES = ("AA1", "AE0", "AH0", "B", "D", "EH1", "IY0", "K", "L", "M", "N", "R", "S", "T")


def write_raw(name: str, directory: str, seed: int = 0, sizes: tuple[int, int] = (40, 12)) -> Any:
  """Writes a tiny random `name` dataset's raw files into `directory`; returns its content."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  n_train, n_test = sizes
  if name in ("fashion_mnist", "mnist"):
    splits = {"train": _random_images(rng, n_train, (28, 28)),
              "test": _random_images(rng, n_test, (28, 28))}
    write_idx_files(directory, splits)
    return {k: (v[0][..., None], v[1]) for k, v in splits.items()}
  if name == "cifar10":
    splits = {"train": _random_images(rng, n_train, (32, 32, 3)),
              "test": _random_images(rng, n_test, (32, 32, 3))}
    write_cifar10(os.path.join(directory, formats.CIFAR10_ARCHIVE), splits)
    return splits
  if name == "digits":
    images, labels = _random_images(rng, n_train + n_test, (8, 8), high=17)
    table = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1)
    text = "\n".join(",".join(str(int(v)) for v in row) for row in table) + "\n"
    with open(os.path.join(directory, formats.DIGITS_FILE), "wb") as f:
      f.write(gzip.compress(text.encode(), mtime=0))
    return images[..., None], labels
  if name == "shakespeare":
    return _write_shakespeare(directory, rng)
  if name == "imdb":
    return _write_reviews(os.path.join(directory, formats.IMDB_FILE), rng, n_train + n_test)
  if name == "cmudict":
    return _write_cmudict(os.path.join(directory, formats.CMUDICT_FILE), rng, n_train + n_test)
  raise ValueError(f"no fixture for {name!r}")


def _write_shakespeare(directory: str, rng: np.random.Generator) -> dict[str, str]:
  texts = os.path.join(directory, formats.SHAKESPEARE_DIR)
  os.makedirs(texts, exist_ok=True)
  letters = list("abcdefghij ,.!'ABC")
  works = {}
  for w in range(3):
    lines = ["".join(rng.choice(letters, int(rng.integers(5, 40)))) for _ in range(120)]
    works[f"work_{w}"] = "\n".join(lines) + "\n"
    with open(os.path.join(texts, f"work_{w}_gut.txt"), "w", encoding="utf-8") as f:
      f.write(works[f"work_{w}"])
  return works


def _write_reviews(path: str, rng: np.random.Generator, n: int) -> list[tuple[str, int]]:
  rows = []
  for i in range(n):
    words = list(rng.choice(_WORDS, int(rng.integers(0, 30))))
    text = " ".join(words) + ("<br /><br />Really, \"quoted\"!" if i % 3 == 0 else "")
    rows.append((text, int(rng.integers(0, 2))))
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["text", "label", "source"])
    for i, (text, label) in enumerate(rows):
      writer.writerow([text, label, "imdb"])
      if i % 4 == 0:
        writer.writerow([f"rt sentence {i}, rottenonlyword", 1 - label, "rotten_tomatoes"])
  return rows


def _write_cmudict(path: str, rng: np.random.Generator, n: int) -> list[tuple[str, list[str]]]:
  pairs, lines, seen = [], [], set()
  while len(pairs) < n:
    word = "".join(rng.choice(list("abcdefgh'"), int(rng.integers(1, 9))))
    if word in seen:
      continue
    seen.add(word)
    phonemes = list(rng.choice(_PHONEMES, int(rng.integers(1, 8))))
    pairs.append((word, phonemes))
    comment = "  # a comment" if len(pairs) % 5 == 0 else ""
    lines.append(f"{word} {' '.join(phonemes)}{comment}")
    if len(pairs) % 3 == 0:
      lines.append(f"{word}(2) {' '.join(reversed(phonemes))} Z")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return pairs
