"""orbax checkpoints of the train state, written atomically; resume from the newest valid one."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp

from jaxmodels.train.steps import TrainState


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
    step = int(state.step)
    if step in self.manager.all_steps():
      return
    self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
    self.manager.wait_until_finished()

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
        self._set_aside(failures)
        print(f"WARNING: kept aside as <name>.unreadable: {', '.join(failures)}", flush=True)
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

  def _set_aside(self, paths: list[str]) -> None:
    """Renames unreadable checkpoints out of orbax's sight (kept, never deleted), so the resumed
    run can write those steps again."""
    if jax.process_index() == 0:
      for path in paths:
        os.replace(path, f"{path}.unreadable")
    self.manager.reload()

  def close(self) -> None:
    self.manager.close()


def _key_paths(tree: Any) -> set[str]:
  """Leaf paths as dotted names, the same for a TrainState and its saved dict form."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(_key_name(k) for k in path) for path, _ in leaves}


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)
