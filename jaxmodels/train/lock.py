"""One writer per workdir: an advisory lock on DIR/.lock held for the whole run.

The lock is fcntl.flock on an open file, so the operating system releases it when its process
dies, however it dies; the file also names the holder (host, pid, start time) for the message a
second writer gets. Object-store workdirs (gs://) cannot be locked and are not.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any


class LockError(RuntimeError):
  """Another process holds the workdir's lock; the message names it."""


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the lock, or raises LockError at once."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    if "://" in self.path:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _describe(_read(fd))
      os.close(fd)
      raise LockError(
          f"{os.path.dirname(self.path)} is in use by another run ({holder}): two runs in one "
          "workdir would interleave their checkpoints and metrics. Wait for it to finish, stop "
          "it, or use another --workdir."
      ) from None
    previous = _read(fd)
    if previous:
      print(
          f"{self.path}: taking over from a run that ended without releasing it "
          f"({_describe(previous)})",
          flush=True,
      )
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder()).encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc: Any) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # an empty file: released cleanly
      os.close(self._fd)
      self._fd = None


def _holder() -> dict[str, Any]:
  return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%F %T")}


def _read(fd: int) -> dict[str, Any]:
  try:
    return json.loads(os.pread(fd, 4096, 0) or b"{}")
  except (OSError, ValueError):
    return {}


def _describe(holder: dict[str, Any]) -> str:
  if not holder:
    return "holder unknown"
  return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"
