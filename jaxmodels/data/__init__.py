"""Datasets: `load(name, ...)` returns a Dataset (see base.py) read from prepared TFDS files.

  fashion_mnist, mnist   60k/10k 28x28x1; options: augment (crop with 2-pixel padding + flip)
  digits                 1437/360 8x8x1 (scikit-learn); test only
  cifar10                50k/10k 32x32x3; options: augment (crop with 4-pixel padding + flip)
  shakespeare            characters; train = first 90% of each work, validation = last 10%;
                         options: block_size, max_eval_windows
  imdb                   20k/2.5k/2.5k word tokens; options: max_len, vocab_size (vocabulary
                         from the train split; 0 pad, 1 unknown)
  cmudict                letters -> phonemes, train/validation/test by a hash of the word
                         (0 pad, 1 BOS, 2 EOS, 3 unknown)

Prepare a dataset first with `python -m jaxmodels.data.prepare <name>`.
"""
from __future__ import annotations

import collections
import json
import os
import re
from typing import Any

import numpy as np

from jaxmodels.data.base import Dataset
from jaxmodels.data.raw import DataError
from jaxmodels.data.synthetic import SyntheticDataset

USER_ERRORS = (DataError,)
NAMES = ("fashion_mnist", "mnist", "digits", "cifar10", "shakespeare", "imdb", "cmudict")

__all__ = ["DataError", "Dataset", "NAMES", "SyntheticDataset", "load"]


def load(name: str, data_dir: str | None = None, **options: Any) -> Dataset:
  """The prepared dataset `name`; a DataError naming the prepare command if it is missing."""
  from jaxmodels.data import prepare
  if name not in NAMES:
    raise DataError(f"unknown dataset {name!r}; valid: {', '.join(NAMES)}")
  builder = prepare.builder(name, data_dir)
  if not builder.is_prepared():
    raise DataError(f"dataset {name!r} is not prepared in {builder.data_dir_root}. Run: "
                    f"python -m jaxmodels.data.prepare {name}"
                    + (f" --data_dir={data_dir}" if data_dir else ""))
  splits = {}
  for split in builder.info.splits:
    try:
      source = builder.as_data_source(split)
      records = source.__getitems__(list(range(len(source))))
    except Exception as e:  # array_record and TFDS raise many kinds for damaged files
      raise DataError(f"the prepared files of {name!r} in {builder.data_dir} are unreadable "
                      f"({type(e).__name__}: {str(e)[:200]}). Delete that directory and run: "
                      f"python -m jaxmodels.data.prepare {name}") from e
    splits[split] = records
  return _BUILD[name](splits, builder.data_dir, **options)


def _stack(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  return {k: np.stack([r[k] for r in records]) for k in records[0]}


def _images(splits, _, augment: bool = False, pad: int = 2, flip: bool = True,
            eval_splits=("test",)) -> Dataset:
  from jaxmodels.data.pipeline import ArrayDataset, crop_and_flip
  arrays = {s: _stack(r) for s, r in splits.items()}
  train = arrays["train"]["image"].astype(np.float32) / 255.0
  info = {"num_classes": 10, "image_shape": train.shape[1:],
          "mean": train.mean(axis=(0, 1, 2)), "std": train.std(axis=(0, 1, 2))}
  return ArrayDataset(arrays, info, crop_and_flip(pad, flip) if augment else None, eval_splits)


def _cifar(splits, data_dir, augment: bool = False) -> Dataset:
  return _images(splits, data_dir, augment=augment, pad=4)


def _text(record: dict[str, Any], key: str) -> str:
  return bytes(record[key]).decode("utf-8")


def _shakespeare(splits, _, block_size: int = 128, max_eval_windows: int = 1024) -> Dataset:
  from jaxmodels.data.pipeline import TokenStreamDataset
  texts = {s: "".join(_text(r, "text") for r in recs) for s, recs in splits.items()}
  vocab = sorted(set("".join(texts.values())))
  lookup = np.zeros(max(map(ord, vocab)) + 1, np.int32)
  lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))
  streams = {s: lookup[np.array([ord(c) for c in t], np.int64)] for s, t in texts.items()}
  info = {"vocab": vocab, "vocab_size": len(vocab)}
  return TokenStreamDataset(streams, info, block_size, max_eval_windows)


_WORD = re.compile(r"[a-z0-9']+|[!?.,;:]")


def words(text: str) -> list[str]:
  """Lower-cased word and punctuation tokens; HTML line breaks removed."""
  return _WORD.findall(text.lower().replace("<br />", " "))


def _imdb(splits, data_dir, max_len: int = 256, vocab_size: int = 20000) -> Dataset:
  from jaxmodels.data.pipeline import ArrayDataset
  cache = os.path.join(data_dir, f"tokens_v{vocab_size}_l{max_len}.npz")
  if os.path.exists(cache):
    arrays = dict(np.load(cache))
    out = {s: {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(s + "/")}
           for s in splits}
  else:
    tokenized = {s: [words(_text(r, "text")) for r in recs] for s, recs in splits.items()}
    counts = collections.Counter(w for doc in tokenized["train"] for w in doc)
    vocab = ["<pad>", "<unk>"] + [w for w, _ in counts.most_common(vocab_size - 2)]
    index = {w: i for i, w in enumerate(vocab)}
    out = {}
    for s, docs in tokenized.items():
      tokens = np.zeros((len(docs), max_len), np.int32)
      lengths = np.zeros(len(docs), np.int32)
      for i, doc in enumerate(docs):
        ids = [index.get(w, 1) for w in doc[:max_len]] or [1]
        tokens[i, :len(ids)] = ids
        lengths[i] = len(ids)
      labels = np.array([r["label"] for r in splits[s]], np.int32)
      out[s] = {"inputs": tokens, "lengths": lengths, "targets": labels}
    np.savez(cache, **{f"{s}/{k}": v for s, d in out.items() for k, v in d.items()})
    with open(os.path.join(data_dir, f"vocab_v{vocab_size}.json"), "w", encoding="utf-8") as f:
      json.dump(vocab, f)
  info = {"vocab_size": vocab_size, "num_classes": 2, "max_len": max_len}
  return ArrayDataset(out, info, eval_splits=("validation", "test"))


def _cmudict(splits, _, max_src_len: int = 24, max_tgt_len: int = 24) -> Dataset:
  from jaxmodels.data.pipeline import ArrayDataset
  pairs = {s: [(_text(r, "word"), _text(r, "phonemes").split()) for r in recs]
           for s, recs in splits.items()}
  specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
  src_vocab = specials + sorted({c for w, _ in pairs["train"] for c in w})
  tgt_vocab = specials + sorted({p for _, ph in pairs["train"] for p in ph})
  src_index = {c: i for i, c in enumerate(src_vocab)}
  tgt_index = {p: i for i, p in enumerate(tgt_vocab)}
  out = {}
  for s, items in pairs.items():
    items = [(w, ph) for w, ph in items if len(w) <= max_src_len and len(ph) + 2 <= max_tgt_len]
    src = np.zeros((len(items), max_src_len), np.int32)
    tgt = np.zeros((len(items), max_tgt_len), np.int32)
    for i, (w, ph) in enumerate(items):
      src[i, :len(w)] = [src_index.get(c, 3) for c in w]
      tgt[i, :len(ph) + 2] = [1] + [tgt_index.get(p, 3) for p in ph] + [2]
    out[s] = {"inputs": src, "targets": tgt}
  info = {"src_vocab": src_vocab, "tgt_vocab": tgt_vocab, "src_vocab_size": len(src_vocab),
          "tgt_vocab_size": len(tgt_vocab), "src_len": max_src_len, "tgt_len": max_tgt_len}
  return ArrayDataset(out, info, eval_splits=("validation", "test"))


_BUILD = {"fashion_mnist": _images, "mnist": _images, "digits": _images, "cifar10": _cifar,
          "shakespeare": _shakespeare, "imdb": _imdb, "cmudict": _cmudict}
