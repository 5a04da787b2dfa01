"""The registry of datasets: one spec per module of jaxmodels/data/sets/, NAMES from it, cheap to
import, and every spec's parts consistent with each other."""

import os
import subprocess
import sys

import pytest

from jaxmodels import data
from jaxmodels.data import datasets, prepare, registry, sources, testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_names_come_from_the_registry_in_order():
  assert data.NAMES == registry.NAMES == tuple(registry.SPECS)
  assert data.NAMES == (
      "fashion_mnist",
      "mnist",
      "digits",
      "cifar10",
      "shakespeare",
      "imdb",
      "cmudict",
  )
  assert registry.OFFLINE == tuple(n for n in data.NAMES if n != "cifar10")
  with pytest.raises(data.DataError, match="valid: fashion_mnist, mnist"):
    registry.get("fashion")


def test_importing_the_package_and_registry_needs_neither_tfds_nor_grain():
  code = (
      "import sys; import jaxmodels.data, jaxmodels.data.registry, jaxmodels.data.testing; "
      "heavy = [m for m in sys.modules if m.split('.')[0] in "
      "('tensorflow_datasets', 'grain', 'tensorflow')]; assert not heavy, heavy"
  )
  result = subprocess.run(
      [sys.executable, "-c", code],
      cwd=ROOT,
      capture_output=True,
      text=True,
      env=dict(os.environ, PYTHONPATH=ROOT),
      timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("name", registry.NAMES)
def test_each_spec_finds_its_fixture_and_names_a_dataset_class(tmp_path, name):
  spec = registry.get(name)
  cls = datasets.DATASET_CLASSES[spec.dataset]
  assert set(spec.defaults) <= set(cls.OPTIONS)
  testing.write_raw(name, str(tmp_path / "raw"))
  assert sources.missing(name, str(tmp_path / "empty")) != []
  found = sources.collect(name, [str(tmp_path / "raw")], str(tmp_path / "canonical"))
  assert found and sources.missing(name, str(tmp_path / "canonical")) == []
  if spec.sha256:  # the fixture is not the release
    with pytest.raises(data.CorruptDataError, match="sha256"):
      sources.verify(name, str(tmp_path / "canonical"))


def test_prepare_offline_prepares_every_offline_dataset(monkeypatch, tmp_path):
  done = []
  monkeypatch.setattr(prepare, "prepare", lambda name, *a, **k: done.append(name))
  assert prepare.main(["offline", f"--data_dir={tmp_path}"]) == 0
  assert tuple(done) == registry.OFFLINE
  done.clear()
  assert prepare.main(["all", f"--data_dir={tmp_path}"]) == 0
  assert tuple(done) == registry.NAMES
