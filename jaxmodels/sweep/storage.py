"""Where a study lives: SQLite by default, any Optuna RDB URL, or a journal file.

Default: SQLite at DIR/study.db through RDBStorage with a long busy timeout. A sweep writes a
few rows per trial and a heartbeat every few seconds per running trial, far below what SQLite
serialises, so waiting on its lock is fine for workers on one machine; several machines need a
server (postgresql://, mysql://) or a journal file on a shared file system.
"""

from __future__ import annotations

import os
from pathlib import Path
import time

from jaxmodels.sweep.space import SweepError

SQLITE_TIMEOUT_S = 300
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def default_url(workdir: Path) -> str:
  return f'sqlite:///{Path(workdir).resolve() / "study.db"}'


def open_storage(url: str | None, workdir: Path):
  """An Optuna storage for `url` (None: DIR/study.db); SweepError with the cause when it fails.

  URL forms: 'sqlite:///path.db', 'postgresql://user@host/db', 'mysql+pymysql://...', a path
  ending in .db/.sqlite (SQLite), or any other path (an Optuna journal file).
  """
  url = url or default_url(workdir)
  if "://" not in url and url.endswith(_SQLITE_SUFFIXES):
    url = f"sqlite:///{Path(url).resolve()}"
  if "://" in url:
    return _open_rdb(url)
  return _open_journal(url)


def _open_rdb(url: str):
  import optuna  # pylint: disable=import-outside-toplevel

  kwargs = {}
  if url.startswith("sqlite"):
    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    path = url.split(":///", 1)[-1]
    if path and not Path(path).parent.is_dir():
      raise SweepError(f"bad storage {url!r}: directory {Path(path).parent} does not exist")
  last = None
  for attempt in range(3):  # two sweeps creating the same SQLite schema at once may collide
    try:
      return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # pylint: disable=broad-except
      last = e
      if not url.startswith("sqlite"):
        break
      time.sleep(0.5 * (attempt + 1))
  raise SweepError(
      f"cannot open storage {url!r}: {type(last).__name__}: {_first_line(last)}. "
      "Use sqlite:///FILE.db, postgresql://USER@HOST/DB (with its driver installed) "
      "or a journal file path."
  ) from last


def _open_journal(path: str):
  import optuna  # pylint: disable=import-outside-toplevel
  from optuna.storages.journal import JournalFileBackend  # pylint: disable=import-outside-toplevel

  parent = Path(path).resolve().parent
  if not parent.is_dir():
    raise SweepError(
        f"bad storage {path!r}: directory {parent} does not exist (a storage is an "
        "Optuna URL such as sqlite:///FILE.db or a journal file path)"
    )
  if os.path.isdir(path):
    raise SweepError(f"bad storage {path!r}: a directory, not a journal file")
  try:
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f"cannot open journal storage {path!r}: {_first_line(e)}") from e


def _first_line(e: BaseException | None) -> str:
  return str(e).strip().splitlines()[0] if e and str(e).strip() else repr(e)
