"""Where metrics go: metrics.jsonl, TensorBoard event files, and a progress bar or log lines."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

# The longest a gs:// metrics.jsonl goes without an upload while records come in.
REMOTE_FLUSH_S = 60.0


def reduce_sums(sums_list: list[dict[str, Any]]) -> dict[str, float]:
  """Metric value = total sum / total weight over a list of {name: (sum, weight)} dicts."""
  totals: dict[str, list[float]] = {}
  for sums in sums_list:
    for name, (s, w) in sums.items():
      t = totals.setdefault(name, [0.0, 0.0])
      t[0] += float(np.sum(s))
      t[1] += float(np.sum(w))
  return {name: s / w if w else math.nan for name, (s, w) in totals.items()}


class MetricWriter:
  """Writes on process 0 only; other processes get a writer that drops everything.

  A run that starts at `start_step` keeps the metrics.jsonl records up to that step and drops
  the rest, so no step appears twice: records written after the checkpoint it resumes from, and
  a last line cut off mid-write. A run that starts from scratch over records of an earlier one
  (its checkpoints gone) moves that file aside first.

  A local metrics.jsonl gets each record as it comes. An object store (gs://) cannot append, so
  there the records are buffered and the file uploaded whole at `flush()` (the loop calls it
  before each checkpoint) and at most every `remote_flush_s` seconds otherwise.
  """

  def __init__(
      self,
      workdir: str,
      enabled: bool = True,
      start_step: int = 0,
      remote_flush_s: float = REMOTE_FLUSH_S,
  ):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      SummaryWriter = tensorboard_writer_class()
      path = os.path.join(workdir, "metrics.jsonl")
      _resume_records(path, start_step)
      remote = "://" in path
      self._jsonl = _RewrittenFile(path, remote_flush_s) if remote else _AppendedFile(path)
      self._tb = SummaryWriter(logdir=workdir, flush_secs=30)

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split}
    record.update({k: float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    for name, value in metrics.items():
      self._tb.add_scalar(f"{split}/{name}", float(value), int(step))

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def tensorboard_writer_class() -> type:
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch at import time when it is installed (the test and bench extras
  install it), only to accept torch tensors; the engine writes floats. That import took 3.7 s of
  CPU time (13 s wall) of a small GPT's start-up on the 2-core CPU under load (2026-12-02).
  Hiding torch for the import costs nothing later: torch
  still imports normally afterwards, and an already imported torch is left alone.
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter

    return SummaryWriter
  sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _resume_records(path: str, start_step: int) -> None:
  """Rewrites metrics.jsonl to its whole records of steps <= start_step (see MetricWriter)."""
  from etils import epath

  file = epath.Path(path)
  if not file.exists():
    return
  text = file.read_text()
  records, kept = [], []
  for line in text.splitlines(keepends=True):
    try:
      record = json.loads(line) if line.endswith("\n") else None
    except json.JSONDecodeError:
      record = None
    if isinstance(record, dict) and isinstance(record.get("step"), int):
      records.append(record)
      if record["step"] <= start_step:
        kept.append(line)
  if start_step == 0 and any(r["step"] > 0 for r in records):
    aside = epath.Path(f"{path}.before-step-0.{time.strftime('%Y%m%d-%H%M%S')}")
    file.rename(aside)
    print(
        f"{path} held records up to step {max(r['step'] for r in records)} but there is no "
        f"checkpoint to resume from: training starts over, the old records are in {aside}",
        flush=True,
    )
    return
  if "".join(kept) != text:
    tmp = epath.Path(path + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(file)


class _AppendedFile:
  """A local file each record is appended and flushed to, so a crash loses none."""

  def __init__(self, path: str):
    self._file = open(path, "a", encoding="utf-8")

  def write(self, text: str) -> None:
    self._file.write(text)
    self._file.flush()

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class _RewrittenFile:
  """Appending for object stores (gs:// through etils.epath), which cannot append to an object:
  keeps the text and uploads all of it at a flush, and on a write once `flush_s` seconds have
  passed since the last upload."""

  def __init__(self, path: str, flush_s: float):
    from etils import epath

    self.path = epath.Path(path)
    self.text = self.path.read_text() if self.path.exists() else ""
    self.flush_s = flush_s
    self.dirty = False
    self.flushed_at = time.monotonic()

  def write(self, text: str) -> None:
    self.text += text
    self.dirty = True
    if time.monotonic() - self.flushed_at >= self.flush_s:
      self.flush()

  def flush(self) -> None:
    if self.dirty:
      self.path.write_text(self.text)
      self.dirty = False
    self.flushed_at = time.monotonic()

  def close(self) -> None:
    self.flush()


class Progress:
  """A tqdm bar with steps/s and ETA on a terminal; plain periodic lines otherwise."""

  def __init__(self, start: int, total: int, enabled: bool, is_main: bool):
    self.total = total
    self.bar = None
    self.quiet = not is_main
    self.start_time = time.time()
    self.start = start
    if enabled and is_main and sys.stderr.isatty():
      from tqdm import tqdm

      self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

  def update(self, step: int) -> None:
    if self.bar is not None:
      self.bar.update(step - self.bar.n)

  def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if self.quiet:
      return
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("learning_rate",))
    if self.bar is not None:
      if split == "train":
        self.bar.set_postfix_str(shown, refresh=False)
      else:
        self.bar.write(f"step {step} {split}: {shown}")
      return
    elapsed = time.time() - self.start_time
    rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else math.inf
    eta_s = f"{eta:.0f}s" if math.isfinite(eta) else "?"
    print(
        f"step {step}/{self.total} {split}: {shown} ({rate:.1f} steps/s, ETA {eta_s})", flush=True
    )

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
