"""orbax checkpoints of the train state, written atomically; resume from the newest valid one."""

from __future__ import annotations

import logging
import os
from typing import Any

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
            f"WARNING: checkpoint {path} is unreadable ({type(e).__name__}); kept aside as "
            f"{path}.unreadable; trying an older one",
            flush=True,
        )
        failures.append(path)
        continue
      if failures:
        self._set_aside(failures)
      if on_devices:
        return out["state"], dict(out["meta"])
      # Host arrays, like a fresh state: with several processes, arrays committed to one local
      # device cannot be put on a mesh that spans other processes' devices.
      return jax.device_get(out["state"]), dict(out["meta"])
    raise CheckpointError(
        f"none of the checkpoints in {self.directory} can be restored ({', '.join(failures)}). "
        f"To start over, move or delete the workdir (or just {self.directory}) and run again."
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
