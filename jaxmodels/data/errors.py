"""Errors of the data package: each message says what went wrong and what to do about it."""

from __future__ import annotations

import os


class DataError(Exception):
  """Base of the errors a user can fix: a dataset missing, damaged or unobtainable."""


class DatasetNotPreparedError(DataError, FileNotFoundError):
  """The dataset has not been prepared in the data dir; the message names the prepare command."""


class CorruptDataError(DataError, ValueError):
  """A data file is damaged or is not what it should be; the message names the file."""

  def __init__(self, path: str | os.PathLike, problem: str):
    self.path = os.fspath(path)
    super().__init__(f"{self.path}: {problem}")


class DataOptionError(DataError, ValueError):
  """A load option the dataset cannot serve or out of its range (validation_size, block_size,
  ...); the message names the option and what is valid."""


class PrepareError(DataError, RuntimeError):
  """Every source of a dataset failed; the message says what to place where."""


class DataDirError(DataError):
  """The data dir is a file, or cannot be created or written; the message names it."""
