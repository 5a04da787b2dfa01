"""A sweep directory belongs to one study, so that DIR/trials/<n> and DIR/results.* never mix the
runs of two studies: DIR/sweep.json names the study, and every trial directory must be one of
that study's trials (a study created again, after its storage was deleted, or one of the same
name in another storage, has other trials). A directory without sweep.json (made before it
existed) is claimed by the study whose trials its trial directories are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jaxmodels.sweep.space import SweepError

MARKER = "sweep.json"
WORKDIR = "workdir"  # user attr of a trial: its directory name under DIR/trials


def read_marker(workdir: Path) -> dict[str, Any] | None:
  """sweep.json of `workdir`, or None when it has none."""
  try:
    return json.loads((workdir / MARKER).read_text())
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise SweepError(
        f"{workdir / MARKER} cannot be read ({e}); it names the study this directory belongs "
        "to: restore it, or use a new --workdir"
    ) from e


def check_owner(workdir: Path, name: str, study: Any | None) -> None:
  """SweepError unless `workdir` is free or belongs to study `name` (`study`: that study as
  the storage holds it, None when it does not exist yet)."""
  marker = read_marker(workdir)
  owner = marker.get("study_name") if marker is not None else None
  if owner is not None and owner != name:
    raise SweepError(
        f"{workdir} holds the sweep of study {owner!r} (its trials/ and results; see "
        f"{MARKER}), so study {name!r} needs a --workdir of its own; studies can share one "
        f"storage with --storage. To resume {owner!r} here, rerun with --study_name={owner}."
    )
  ours = set() if study is None else trial_names(study)
  foreign = sorted(trial_dirs(workdir) - ours, key=lambda n: (len(n), n))
  if foreign:
    shown = ", ".join(f"trials/{n}" for n in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
    reason = "this storage has no such study yet" if study is None else "its trials are others"
    raise SweepError(
        f"{workdir} holds trial directories ({shown}) that are not trials of study {name!r} "
        f"({reason}): they belong to another study, or to this one before its storage was "
        f"created again. Use a new --workdir for this study, or move {workdir / 'trials'} away "
        "to start over there."
    )


def claim(workdir: Path, name: str) -> None:
  """Write sweep.json naming study `name`, unless it is there."""
  if read_marker(workdir) is not None:
    return
  tmp = workdir / f".{MARKER}.{os.getpid()}.tmp"
  tmp.write_text(json.dumps({"study_name": name}, indent=2) + "\n")
  os.replace(tmp, workdir / MARKER)


def trial_dirs(workdir: Path) -> set[str]:
  """Names of the trial directories in DIR/trials (not those set aside as <n>.old-<time>)."""
  trials = workdir / "trials"
  if not trials.is_dir():
    return set()
  return {p.name for p in trials.iterdir() if p.is_dir() and ".old-" not in p.name}


def trial_names(study: Any) -> set[str]:
  """The directory names of a study's trials."""
  return {str(t.user_attrs.get(WORKDIR, t.number)) for t in study.get_trials(deepcopy=False)}
