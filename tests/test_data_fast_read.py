"""fast_read: every record of every fixture dataset, read by parsing the serialized examples,
equals TFDS's own decoding; anything it cannot vouch for falls back (None)."""

import types

import numpy as np
import pytest

from jaxmodels import data
from jaxmodels.data import builders, fast_read, prepare, testing


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """Every dataset's fixture prepared through the command line with --manual_dir."""
  root = tmp_path_factory.mktemp("fast_read")
  for name in data.NAMES:
    manual = str(root / "manual" / name)
    testing.write_raw(name, manual, seed=len(name) + 1)
    assert (
        prepare.main(
            [name, f"--data_dir={root / 'tfds'}", f"--manual_dir={manual}", "--skip_verify"]
        )
        == 0
    )
  return str(root / "tfds")


@pytest.mark.parametrize("name", data.NAMES)
def test_every_record_equals_tfds_decoding(data_dir, name):
  builder = builders.make(name, data_dir)
  assert set(builder.info.splits) >= {"train", "test"}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    columns = fast_read.read_all(builder, split, source)
    assert columns is not None and set(columns) == set(builder.info.features.keys())
    assert len(source) > 0
    for i in range(len(source)):
      reference = source[i]
      for key, values in columns.items():
        assert len(values) == len(source)
        got, want = np.asarray(values[i]), np.asarray(reference[key])
        assert got.dtype == want.dtype and got.shape == want.shape, (split, i, key)
        np.testing.assert_array_equal(got, want)


def test_a_first_record_that_differs_falls_back(data_dir):
  builder = builders.make("cmudict", data_dir)
  source = builder.as_data_source("train")
  first = dict(source[0], word=np.array([9, 9, 9], np.int32))
  assert fast_read.read_all(builder, "train", [first] + [source[1]]) is None


def test_a_feature_it_cannot_parse_falls_back():
  import tensorflow_datasets as tfds

  builder = types.SimpleNamespace(
      info=types.SimpleNamespace(
          features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
      )
  )
  assert fast_read.read_all(builder, "train", []) is None
