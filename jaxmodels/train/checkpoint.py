"""orbax checkpoints of the train state, written atomically; resume from the newest valid one."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp

from jaxmodels.train import storage
from jaxmodels.train.steps import TrainState

# How long a failed save's writes still in flight get to end, and how long its partial
# directory must stay away, before the error is reported.
SETTLE_S = 10.0
QUIET_S = 0.5


class CheckpointError(RuntimeError):
  """No checkpoint in the workdir can be restored."""


class Checkpoints:
  """`DIR/checkpoints/<step>/{state,meta}`; orbax renames a finished save into place, so a
  checkpoint killed mid-write never becomes visible."""

  def __init__(self, workdir: str, max_to_keep: int):
    self.directory = os.path.join(
        os.path.abspath(workdir) if "://" not in workdir else workdir, "checkpoints"
    )
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        ),
    )

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, state: TrainState, meta: dict[str, Any]) -> None:
    """Saves checkpoint `state.step`; a save the storage refuses (a full disk) raises
    storage.StorageError naming the newest intact checkpoint, with the partial one removed."""
    step = int(state.step)
    if step in self.manager.all_steps():
      return
    threads = set(threading.enumerate())
    try:
      with storage.echoes_dropped():
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self.manager.wait_until_finished()
    except Exception as e:  # orbax passes on OSError, and tensorstore's errors as ValueError
      reason = storage.write_failure(e)
      if reason is None:
        raise
      _join_new_threads(threads, SETTLE_S)
      self._remove_partial(step)
      raise storage.StorageError(
          f"saving the checkpoint of step {step} to {self.directory} failed: {reason}. "
          f"{self.intact(e)}"
      ) from None

  def restore_latest(
      self, target: TrainState, on_devices: bool = False
  ) -> tuple[TrainState, dict[str, Any]] | None:
    """The newest checkpoint that restores, warning about each newer one that does not.

    `target` (arrays or jax.ShapeDtypeStruct) gives the shapes and shardings to restore into,
    whatever mesh wrote the checkpoint. With `on_devices` the state stays in those shardings;
    otherwise it comes back as host arrays.
    """
    steps = self.steps()
    if not steps:
      return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    failures = []
    for step in reversed(steps):
      try:
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
      except Exception as e:  # orbax raises many types for truncated or corrupt files
        path = os.path.join(self.directory, str(step))
        logging.warning(
            "checkpoint %s is unreadable (%s: %s); trying an older one",
            path,
            type(e).__name__,
            str(e)[:200],
        )
        print(
            f"WARNING: checkpoint {path} is unreadable ({type(e).__name__}); trying an older one",
            flush=True,
        )
        failures.append(path)
        continue
      if failures:
        asides = self._set_aside(failures)
        print(f"WARNING: unreadable checkpoints kept aside as {', '.join(asides)}", flush=True)
      if on_devices:
        return out["state"], dict(out["meta"])
      # Host arrays, like a fresh state: with several processes, arrays committed to one local
      # device cannot be put on a mesh that spans other processes' devices.
      return jax.device_get(out["state"]), dict(out["meta"])
    # No checkpoint restores: if the newest is whole but of another structure, say that.
    self._check_structure(steps[-1], abstract)
    raise CheckpointError(
        f"none of the checkpoints in {self.directory} can be restored ({', '.join(failures)}). "
        f"To start over, move or delete the workdir (or just {self.directory}) and run again."
    )

  def _check_structure(self, step: int, target: Any) -> None:
    """Raises CheckpointError when checkpoint `step` holds a state of another structure than
    `target` (another model or optimizer): a config change, not a damaged file. Asked only once
    no checkpoint restores, since a damaged one can also read back as another structure."""
    path = os.path.join(self.directory, str(step))
    try:
      json.loads(epath.Path(path, "state", "_METADATA").read_text())  # whole, or no verdict
      saved = ocp.StandardCheckpointer().metadata(os.path.join(path, "state"))
      saved = _key_paths(getattr(getattr(saved, "item_metadata", saved), "tree", saved))
    except Exception:  # unreadable metadata: the restore below reports the damage
      return
    wanted = _key_paths(target)
    if saved and saved != wanted:
      only_saved, only_wanted = sorted(saved - wanted)[:3], sorted(wanted - saved)[:3]
      raise CheckpointError(
          f"checkpoint {path} holds a state of another structure than this config builds "
          f"(only in the checkpoint: {', '.join(only_saved) or '-'}; only in this config's "
          f"state: {', '.join(only_wanted) or '-'}): the model or the optimizer differs from "
          "the run that wrote it. Resume with that run's config (its config.json), or use a new "
          "--workdir."
      )

  def _set_aside(self, paths: list[str]) -> list[str]:
    """Renames unreadable checkpoints out of orbax's sight (kept, never deleted), so the resumed
    run can write those steps again; returns the new names. Local or remote (etils.epath)."""
    asides = [f"{path}.unreadable" for path in paths]
    if jax.process_index() == 0:
      for i, path in enumerate(paths):
        n = 1
        while epath.Path(asides[i]).exists():  # one set aside before: keep it too
          n += 1
          asides[i] = f"{path}.unreadable.{n}"
        epath.Path(path).rename(asides[i])
    self.manager.reload()
    return asides

  def _remove_partial(self, step: int) -> None:
    """Deletes what a failed save of `step` left (orbax's temporary directory), freeing its
    space; it was never a checkpoint. tensorstore's writes still in flight can create it again,
    so it is removed until it stays away for QUIET_S (at most SETTLE_S)."""
    start = quiet_since = time.monotonic()
    while jax.process_index() == 0 and time.monotonic() - quiet_since < QUIET_S:
      partial = list(epath.Path(self.directory).glob(f"{step}.orbax-checkpoint-tmp*"))
      for path in partial:
        with contextlib.suppress(Exception):
          path.rmtree()
      if partial:
        quiet_since = time.monotonic()
      if time.monotonic() - start > SETTLE_S:
        break
      time.sleep(0.05)
    with contextlib.suppress(Exception):
      self.manager.reload()

  def intact(self, error: BaseException) -> str:
    """Which checkpoint a rerun resumes from, and what to do before it, after `error`."""
    steps = self.steps()
    fix = storage.remedy(error)
    if not steps:
      return f"No checkpoint was saved before it. {fix}, then run the same command to start over."
    return (
        f"The newest intact checkpoint is step {steps[-1]} "
        f"({os.path.join(self.directory, str(steps[-1]))}). {fix}, then run the same command "
        f"to resume from step {steps[-1]}."
    )

  def close(self) -> None:
    self.manager.close()


def _join_new_threads(before: set[threading.Thread], timeout_s: float) -> None:
  """Waits up to `timeout_s` for the threads started since `before` (orbax's writers) to end."""
  deadline = time.monotonic() + timeout_s
  for thread in set(threading.enumerate()) - before:
    with contextlib.suppress(Exception):  # orbax's threads raise their error again in join()
      thread.join(max(0.0, deadline - time.monotonic()))


def _key_paths(tree: Any) -> set[str]:
  """Leaf paths as dotted names, the same for a TrainState and its saved dict form."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(_key_name(k) for k in path) for path, _ in leaves}


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)
