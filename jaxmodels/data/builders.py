"""TFDS builders made from the dataset specs: array_record files and Tensor features, so no
TensorFlow.

A builder runs its spec's `generate` on the canonical raw files that `jaxmodels.data.sources`
puts in DATA_DIR/downloads/jaxmodels/<name>/ (passed as the manual dir) and writes
DATA_DIR/<name>/2.0.0/. Tensors are stored as raw bytes (Encoding.BYTES), which decode several
times faster than TFDS's default int64 lists. Whatever a model needs beyond the examples (mean/std
of the train images, vocabularies, longest sequences) is computed once by `generate` and saved
in the dataset's metadata (metadata.json), so loading never re-derives it.

The builders are not added to TFDS's registry (their names would shadow TFDS's own catalogue);
`make(name, data_dir)` creates one.
"""

from __future__ import annotations

from collections.abc import Iterable
import functools
import os
from typing import Any

from etils import epath
import tensorflow_datasets as tfds

from jaxmodels.data import registry, spec

with tfds.core.registered.skip_registration():

  class _Base(tfds.core.GeneratorBasedBuilder):
    """Builds the dataset of SPEC."""

    SPEC: spec.DatasetSpec
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

    def __init__(self, **kwargs: Any):
      super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
      # disable_shuffling: records keep the source order (keys are running indices), so the
      # evaluation order is the dataset's own and does not depend on TFDS's key hashing.
      return tfds.core.DatasetInfo(
          builder=self,
          description=_description(self.SPEC),
          features=_features(self.SPEC),
          metadata=tfds.core.MetadataDict(),
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      metadata, splits = self.SPEC.generate(os.fspath(dl_manager.manual_dir))
      self.info.metadata.update(metadata)
      return {split: self._generate_examples(examples) for split, examples in splits.items()}

    def _generate_examples(self, examples: Iterable[tuple[Any, dict[str, Any]]]):
      yield from examples


def _description(dataset: spec.DatasetSpec) -> str:
  # Continuation lines carry the 4-space indent of the class docstrings these descriptions
  # were written as, so that dataset_info.json keeps its bytes.
  return dataset.description.replace("\n", "\n    ")


def _features(dataset: spec.DatasetSpec) -> tfds.features.FeaturesDict:
  features = {}
  for key, feature in dataset.features.items():
    if isinstance(feature, spec.ClassLabel):
      features[key] = tfds.features.ClassLabel(names=feature.names)
    else:
      features[key] = tfds.features.Tensor(
          shape=feature.shape, dtype=feature.dtype, encoding=tfds.features.Encoding.BYTES
      )
  return tfds.features.FeaturesDict(features)


@functools.cache
def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
  """The builder class of dataset `name` (class FashionMnist for fashion_mnist, ...)."""
  dataset = registry.get(name)
  class_name = "".join(part.capitalize() for part in name.split("_"))
  # __module__ is saved in dataset_info.json (moduleName): it stays this module.
  with tfds.core.registered.skip_registration():
    return type(
        class_name,
        (_Base,),
        {"name": name, "SPEC": dataset, "__module__": __name__, "__doc__": dataset.description},
    )


def make(name: str, data_dir: str) -> tfds.core.GeneratorBasedBuilder:
  """The builder of dataset `name` writing to / reading from `data_dir`."""
  return builder_class(name)(data_dir=data_dir)


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  """builder.is_prepared() without its warning for a version folder that does not exist."""
  return os.path.exists(os.path.join(os.fspath(builder.data_path), "dataset_info.json"))
