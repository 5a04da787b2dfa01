"""Storage faults as one paragraph each: a full disk, a missing filesystem package, a bucket that
cannot be reached or written (no network, no credentials). Remote workdirs (gs://) go through
etils.epath; a remote workdir is proved writable once, up front, with a short timeout."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import errno
import logging
import sys
import threading
from typing import Any

from etils import epath

# One small upload to a bucket takes well under a second; gcsfs retries a dead network for ~40 s.
PROBE_TIMEOUT_S = 10.0
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Loggers of the remote filesystems, which print a traceback for each failed retry.
_REMOTE_LOGGERS = ("gcsfs", "google.auth", "fsspec")


class StorageError(RuntimeError):
  """The workdir's storage cannot be used: full, unreachable, or its package is missing."""


def is_remote(path: str) -> bool:
  return "://" in str(path)


def is_full(error: BaseException) -> bool:
  """Whether `error` (an OSError, or tensorstore's ValueError as orbax raises it) says the disk
  or the quota is full."""
  if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
    return True
  text = str(error)
  return "No space left on device" in text or "Disk quota exceeded" in text


def write_failure(error: BaseException) -> str | None:
  """What went wrong in a failed write, in words, or None when `error` is no storage error."""
  if is_full(error):
    return "the filesystem is full (No space left on device)"
  if isinstance(error, OSError):
    return error.strerror or _first_line(error)
  if "os_error_code=" in str(error):  # tensorstore's own I/O errors
    return _first_line(error)
  return None


def remedy(error: BaseException) -> str:
  """What to do about a failed write, as the start of a sentence."""
  if is_full(error):
    return "Free space on that filesystem"
  return "Make the workdir writable again"


class _Echoes(logging.Filter):
  """Drops the log lines (with tracebacks) of a storage failure in orbax's writer threads or in
  an asyncio future: the save raises that error again in the caller, which reports it once."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    echo = "orbax" in record.pathname or record.name == "asyncio"
    return not (echo and error is not None and write_failure(error) is not None)


_ECHOES = _Echoes()
_ECHO_LOGGERS = ("absl", "asyncio")


@contextlib.contextmanager
def echoes_dropped() -> Iterator[None]:
  """Around a checkpoint save: orbax logs each writer thread's error before raising it, and
  tensorstore's writes still in flight report theirs to asyncio's loop that orbax has closed
  ('Event loop is closed'). After a storage failure the filters stay, since those writes go on
  failing after the save has raised."""
  loggers = [logging.getLogger(name) for name in _ECHO_LOGGERS]
  previous = sys.unraisablehook

  def hook(unraisable: Any) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  for lg in loggers:
    lg.addFilter(_ECHOES)
  sys.unraisablehook = hook
  try:
    yield
  except Exception as e:
    if write_failure(e) is None:
      _restore(loggers, hook, previous)
    raise
  else:
    _restore(loggers, hook, previous)


def _restore(loggers: list[logging.Logger], hook: Any, previous: Any) -> None:
  for lg in loggers:
    lg.removeFilter(_ECHOES)
  if sys.unraisablehook is hook:
    sys.unraisablehook = previous


def check_remote(workdir: str, write: bool = True) -> None:
  """Raises StorageError unless the remote `workdir` answers within PROBE_TIMEOUT_S: a probe
  file is written and removed (with `write`), or the directory is looked up. Local paths pass."""
  if not is_remote(workdir):
    return
  attempt = (lambda: write_probe(workdir)) if write else (lambda: _read_probe(workdir))
  try:
    _quietly(attempt, PROBE_TIMEOUT_S)
  except ImportError as e:
    raise StorageError(_missing_package(workdir, e)) from None
  except Exception as e:  # gcsfs, google-auth and aiohttp each raise their own types
    raise StorageError(_unreachable(workdir, e, write)) from None


def write_probe(directory: str) -> None:
  """Writes and removes DIR/.write_test.<process index>. A local one is gone afterwards also
  when the write fails: a full disk creates the file, then refuses its bytes (an object store's
  upload is whole or nothing)."""
  from jax import process_index

  probe = epath.Path(directory) / f".write_test.{process_index()}"  # processes share DIR
  try:
    probe.write_text("ok")
  except BaseException:
    if not is_remote(directory):
      with contextlib.suppress(OSError):  # the write's own error is the one to report
        probe.unlink(missing_ok=True)
    raise
  probe.unlink()


def _read_probe(directory: str) -> None:
  """Looks `directory` up; a missing one is for the caller to report (exists() would also
  answer False for a bucket it cannot reach)."""
  with contextlib.suppress(FileNotFoundError):
    epath.Path(directory).stat()


def _quietly(fn: Callable[[], Any], timeout_s: float) -> None:
  """Runs `fn` in a thread for at most `timeout_s`, with the remote filesystems' log lines held
  back; the last one names the cause when the time runs out."""
  capture = _LastMessage()
  loggers = [logging.getLogger(name) for name in _REMOTE_LOGGERS]
  saved = [(lg.level, lg.propagate) for lg in loggers]
  for lg in loggers:
    lg.addHandler(capture)
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
  outcome: dict[str, BaseException] = {}

  def run() -> None:
    try:
      fn()
    except BaseException as e:  # handed to the caller's thread
      outcome["error"] = e

  thread = threading.Thread(target=run, name="jaxmodels-storage-probe", daemon=True)
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():  # still retrying: leave its loggers quiet for the rest of the process
    last = f" (last message: {capture.last})" if capture.last else ""
    raise TimeoutError(f"no answer within {timeout_s:g} s{last}")
  for lg, (level, propagate) in zip(loggers, saved):
    lg.removeHandler(capture)
    lg.setLevel(level)
    lg.propagate = propagate
  if "error" in outcome:
    raise outcome["error"]


class _LastMessage(logging.Handler):

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.last = ""

  def emit(self, record: logging.LogRecord) -> None:
    line = (record.getMessage().strip().splitlines() or [""])[0]
    self.last = line if len(line) <= 200 else line[:200] + "..."


def _missing_package(workdir: str, error: ImportError) -> str:
  if workdir.startswith("gs://"):
    need = (
        "gcsfs, which the tpu extra installs: pip install 'jaxmodels[tpu]' (or just "
        "pip install gcsfs)"
    )
  else:
    need = f"the fsspec filesystem package for {workdir.split('://')[0]}:// paths"
  return f"--workdir={workdir} needs {need} ({_first_line(error)}). Nothing was written."


def _unreachable(workdir: str, error: BaseException, write: bool) -> str:
  what = "cannot be written" if write else "cannot be read"
  if workdir.startswith("gs://"):
    fix = (
        "Check the network and the credentials: on a workstation run `gcloud auth "
        "application-default login`; on a Cloud TPU or Compute Engine VM the VM's service "
        "account needs access to the bucket (roles/storage.objectAdmin, see docs/tpu.md)"
    )
  else:
    fix = "Check the network and the credentials of that filesystem"
  return (
      f"--workdir={workdir} {what}: {type(error).__name__}: {_first_line(error)}. {fix}; then "
      "run the same command again. Nothing was written."
  )


def _first_line(error: Any) -> str:
  lines = str(error).strip().splitlines()
  return lines[0][:400] if lines else type(error).__name__
