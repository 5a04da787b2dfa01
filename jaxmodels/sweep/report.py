"""What a sweep leaves behind: results.csv, results.md, plots, and the best run's command line.

Everything is rebuilt from the study after each trial, so the files are always current and a
sweep that several machines share gives the same table everywhere (learning curves only for
the trial directories this machine has). Plots use matplotlib's Figure API (Agg, no pyplot), which
is safe to call from the worker threads under one lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import csv
import io
import json
import math
import os
from pathlib import Path
import shlex
from typing import Any

from jaxmodels.sweep import space
from jaxmodels.sweep.space import Sweep

_ORDER = {"COMPLETE": 0, "RUNNING": 1, "WAITING": 2, "PRUNED": 3, "FAIL": 4}


def metric_points(records: Iterable[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
  """(step, value) of `metric` ('<split>_<name>') in metrics.jsonl records; finite values only."""
  split, name = space.split_metric(metric)
  points = []
  for r in records:
    if r.get("split") == split and name in r and isinstance(r.get("step"), int):
      try:
        value = float(r[name])
      except (TypeError, ValueError):
        continue
      if math.isfinite(value):
        points.append((r["step"], value))
  return points


def read_curve(path: Path, metric: str) -> list[tuple[int, float]]:
  """The metric's learning curve from a metrics.jsonl; the last value wins for a repeated step
  (a resumed run may log a step twice)."""
  records = []
  try:
    for line in path.read_text().splitlines():
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  except OSError:
    return []
  return sorted(dict(metric_points(records, metric)).items())


def rows(trials: Sequence[Any], sweep: Sweep) -> list[dict[str, Any]]:
  """One row per trial, best first: completed trials by objective, then running, pruned, failed."""
  out = []
  for t in trials:
    state = t.state.name
    row = {
        "trial": t.number,
        "status": state,
        sweep.metric: t.value if state == "COMPLETE" else None,
    }
    for key in sweep.params:
      row[key] = t.params.get(key)
    row["steps"] = t.user_attrs.get("steps")
    if row["steps"] is None and t.intermediate_values:
      row["steps"] = max(t.intermediate_values)
    row["wall_s"] = t.user_attrs.get("wall_s")
    if row["wall_s"] is None and t.datetime_start and t.datetime_complete:
      row["wall_s"] = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
    row["workdir"] = f'trials/{t.user_attrs.get("workdir", t.number)}'
    row["note"] = _note(t)
    out.append(row)
  sign = -1.0 if sweep.mode == "max" else 1.0
  return sorted(
      out,
      key=lambda r: (
          _ORDER.get(r["status"], 5),
          sign * r[sweep.metric] if r[sweep.metric] is not None else 0.0,
          r["trial"],
      ),
  )


def _note(t: Any) -> str:
  notes = []
  if t.user_attrs.get("resumes") is not None:
    notes.append(f'resumed trial {t.user_attrs["resumes"]}')
  if t.state.name == "PRUNED" and t.intermediate_values:
    notes.append(f"pruned at step {max(t.intermediate_values)}")
  if t.user_attrs.get("error"):
    notes.append(str(t.user_attrs["error"]))
  return "; ".join(notes)


def best_row(table: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
  return table[0] if table and table[0]["status"] == "COMPLETE" else None


def best_command(
    experiment: str, workdir: Path, overrides: dict[str, str], sweep: Sweep, row: dict[str, Any]
) -> str:
  """A command line that trains the best configuration on its own."""
  flags = space.trial_flags(overrides, {k: row[k] for k in sweep.params})
  words = ["python", "-m", experiment, f'--workdir={Path(workdir) / "best"}'] + flags
  return " ".join(shlex.quote(w) for w in words)


def to_csv(table: Sequence[dict[str, Any]], sweep: Sweep) -> str:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=_columns(sweep), lineterminator="\n")
  writer.writeheader()
  for row in table:
    writer.writerow({k: "" if v is None else v for k, v in row.items()})
  return buf.getvalue()


def to_markdown(
    table: Sequence[dict[str, Any]],
    sweep: Sweep,
    experiment: str,
    command: str | None,
    plots: Sequence[str],
) -> str:
  counts = {}
  for row in table:
    counts[row["status"].lower()] = counts.get(row["status"].lower(), 0) + 1
  lines = [
      f"# Sweep of {experiment}",
      "",
      f"Objective: `{sweep.metric}` ({sweep.mode}). Trials: {len(table)} "
      f'({", ".join(f"{n} {s}" for s, n in sorted(counts.items()))}).',
      "",
  ]
  cols = _columns(sweep)
  lines.append("| " + " | ".join(cols) + " |")
  lines.append("|" + "|".join("---" for _ in cols) + "|")
  for row in table:
    lines.append("| " + " | ".join(_cell(row[c]) for c in cols) + " |")
  if command:
    best = table[0]
    lines += [
        "",
        f'Best: trial {best["trial"]}, {sweep.metric} = {_cell(best[sweep.metric])}. '
        "Train it again with:",
        "",
        "```bash",
        command,
        "```",
    ]
  lines += [""] + [f"![{Path(p).stem}]({p})" for p in plots]
  return "\n".join(lines) + "\n"


def _columns(sweep: Sweep) -> list[str]:
  return ["trial", "status", sweep.metric, *sweep.params, "steps", "wall_s", "workdir", "note"]


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value).replace("|", "\\|").replace("\n", " ")


def plot_param(path: Path, table: Sequence[dict[str, Any]], sweep: Sweep, key: str) -> None:
  """The objective of each completed trial against one parameter; the best one starred."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  done = [r for r in table if r["status"] == "COMPLETE" and r[key] is not None]
  fig = Figure(figsize=(5, 3.5), dpi=100)
  ax = fig.subplots()
  param = sweep.params[key]
  values = [r[key] for r in done]
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  if numeric:
    xs = values
    if space.is_log(param) or _wide_positive(param):
      ax.set_xscale("log")
  else:
    labels = [str(v) for v in getattr(param, "values", sorted(set(values), key=str))]
    ax.set_xticks(range(len(labels)), labels)
    xs = [labels.index(str(v)) for v in values]
  ys = [r[sweep.metric] for r in done]
  ax.scatter(xs, ys, alpha=0.8)
  if done:
    ax.scatter([xs[0]], [ys[0]], marker="*", s=200, color="tab:red", label="best")
    ax.legend(loc="best")
  ax.set_xlabel(key)
  ax.set_ylabel(sweep.metric)
  ax.set_title(f"{sweep.metric} vs {key} ({len(done)} trials)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  _save(fig, path)


def _wide_positive(param: Any) -> bool:
  """A Choice of positive numbers spanning two decades reads better on a log axis."""
  values = getattr(param, "values", None)
  if not values or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values
  ):
    return False
  return max(values) / min(values) >= 100


def plot_curves(
    path: Path,
    table: Sequence[dict[str, Any]],
    sweep: Sweep,
    curves: dict[int, list[tuple[int, float]]],
) -> None:
  """The objective's metric against step for every trial with a metrics.jsonl; best in bold."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  fig = Figure(figsize=(6, 4), dpi=100)
  ax = fig.subplots()
  best = best_row(table)
  for row in table:
    curve = curves.get(row["trial"])
    if not curve:
      continue
    is_best = best is not None and row["trial"] == best["trial"]
    ax.plot(
        [s for s, _ in curve],
        [v for _, v in curve],
        linewidth=2.5 if is_best else 1.0,
        alpha=1.0 if is_best else 0.6,
        linestyle=":" if row["status"] in ("PRUNED", "FAIL") else "-",
        label=f'trial {row["trial"]}' + (" (best)" if is_best else ""),
    )
  if any(curves.values()) and len(curves) <= 12:
    ax.legend(fontsize="small", loc="best")
  ax.set_xlabel("step")
  ax.set_ylabel(sweep.metric)
  ax.set_title(f"{sweep.metric} during training (dotted: pruned or failed)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  _save(fig, path)


def write_all(
    workdir: Path, experiment: str, sweep: Sweep, overrides: dict[str, str], trials: Sequence[Any]
) -> list[dict[str, Any]]:
  """Rewrite results.csv, results.md and plots/*.png under `workdir`; return the table."""
  workdir = Path(workdir)
  table = rows(trials, sweep)
  plots_dir = workdir / "plots"
  plots_dir.mkdir(exist_ok=True)
  curves = {
      r["trial"]: read_curve(workdir / r["workdir"] / "metrics.jsonl", sweep.metric) for r in table
  }
  plot_curves(plots_dir / "learning_curves.png", table, sweep, curves)
  plots = ["plots/learning_curves.png"]
  for key in sweep.params:
    name = f"plots/objective_vs_{key}.png"
    plot_param(workdir / name, table, sweep, key)
    plots.append(name)
  best = best_row(table)
  command = best_command(experiment, workdir, overrides, sweep, best) if best else None
  _write_text(workdir / "results.csv", to_csv(table, sweep))
  _write_text(workdir / "results.md", to_markdown(table, sweep, experiment, command, plots))
  return table


def _write_text(path: Path, text: str) -> None:
  """Write via a temporary file so that a reader never sees half a table."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _save(fig: Any, path: Path) -> None:
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
  fig.savefig(tmp)
  os.replace(tmp, path)
