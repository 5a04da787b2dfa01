"""The README's results table, rebuilt from experiment workdirs rather than typed.

  python -m jaxmodels.report runs/*                          # print the table (markdown)
  python -m jaxmodels.report runs/* --update_readme=README.md

Each workdir gives its experiment (summary.json, else run.json), its config (config.json) and its
final numbers, command line, finish date and machine (summary.json). The result column is the
experiment's headline metric: every experiment module declares one as `HEADLINE = Headline(...)`.
Workdirs of one experiment whose configs differ only in `seed` (and keys that do not change what
is computed) make one row: the mean, the sample standard deviation and the range over the seeds.
--update_readme rewrites the table between the README's RESULTS_BEGIN and RESULTS_END markers:
the rows of every experiment among the workdirs are replaced by theirs, the others stay.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import datetime
import importlib
import json
import os
import re
import statistics
import sys
from types import ModuleType
from typing import Any

RESULTS_BEGIN = "<!-- results:begin -->"
RESULTS_END = "<!-- results:end -->"
COLUMNS = ("experiment", "command", "result", "wall time", "date", "machine")
# Config keys that do not change what a run computes: runs differing only in these (and the
# seed) are repeats of one configuration.
IGNORED_KEYS = frozenset(
    {
        "seed",
        "data_dir",
        "compilation_cache_dir",
        "progress_bar",
        "profile_steps",
        "max_steps_in_flight",
        "keep_checkpoints",
        "checkpoint_every_steps",
        "log_every_steps",
    }
)


# The command cell of a row of several seeds shows the first seed's command, and then:
PER_SEED = ", once per seed with `--config.seed=N` and its own `--workdir`"


class ReportError(ValueError):
  """A workdir or README the report cannot use; the message names it and what to do."""


@dataclasses.dataclass(frozen=True)
class Headline:
  """An experiment's headline result: the summary.json key and how the table writes it.

  `text` holds `{}` where the value goes ("{} test accuracy"); `fmt` formats one number;
  `about` describes the experiment's default config in a few words for the experiment column.
  """

  metric: str
  text: str
  fmt: str = "{:.1%}"
  about: str = ""

  def value(self, x: float) -> str:
    return self.fmt.format(x)

  def result(self, values: Sequence[float], seeds: Sequence[int]) -> str:
    """One run's value, or the mean ± sample std and the range of several seeds' values."""
    if len(values) == 1:
      return self.text.format(self.value(values[0]))
    mean, std = statistics.mean(values), statistics.stdev(values)
    seed_list = ", ".join(str(s) for s in sorted(seeds))
    return self.text.format(f"{self.value(mean)} ± {self.value(std)}") + (
        f" (mean ± std over {len(values)} seeds: {seed_list}; range "
        f"{self.value(min(values))} to {self.value(max(values))})"
    )


@dataclasses.dataclass
class Run:
  """One finished workdir."""

  workdir: str
  experiment: str
  module: ModuleType
  headline: Headline
  config: dict[str, Any]  # flat: {'model.features': [32, 64], ...}
  summary: dict[str, Any]
  date: str  # YYYY-MM-DD (UTC) the run finished

  @property
  def value(self) -> float:
    return float(self.summary[self.headline.metric])

  @property
  def seed(self) -> int:
    return int(self.config.get("seed", 0))


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': 1, 'model.hidden': 2, ...} for every leaf of a config.json object."""
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def default_config(module: ModuleType) -> dict[str, Any]:
  """The experiment's get_config() as config.json would hold it, flat."""
  from jaxmodels.train import config as config_lib

  return flat(json.loads(config_lib.to_json(module.get_config())))


def read_run(workdir: str) -> Run:
  """The finished run in `workdir`; ReportError saying why it cannot be used."""
  from jaxmodels.train import loop  # read_json: a damaged file is named

  if not os.path.isdir(workdir):
    raise ReportError("not a directory")
  summary_path = os.path.join(workdir, "summary.json")
  if not os.path.exists(summary_path):
    raise ReportError("no summary.json (not a workdir, or the run has not finished)")
  try:
    summary = loop.read_json(summary_path, "Run the training command again to rewrite it.")
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
      raise ReportError("no config.json beside summary.json")
    config = flat(loop.read_json(config_path, "Restore it or train again."))
    experiment = summary.get("experiment") or _run_json_experiment(workdir, loop)
  except loop.WorkdirError as e:
    raise ReportError(str(e)) from e
  module = _import(experiment)
  headline = getattr(module, "HEADLINE", None)
  if not isinstance(headline, Headline):
    raise ReportError(
        f"{experiment} declares no HEADLINE; add `HEADLINE = Headline(metric, text)` to the "
        "module (from jaxmodels.report import Headline), as the modules in experiments/ do"
    )
  if not isinstance(summary.get(headline.metric), (int, float)):
    numbers = sorted(k for k, v in summary.items() if isinstance(v, (int, float)))
    raise ReportError(
        f"summary.json has no number {headline.metric!r} (the HEADLINE of {experiment}); "
        f"it has: {', '.join(numbers)}"
    )
  return Run(workdir, experiment, module, headline, config, summary, _date(summary, summary_path))


def _run_json_experiment(workdir: str, loop: ModuleType) -> str:
  path = os.path.join(workdir, "run.json")
  if not os.path.exists(path):
    raise ReportError("neither summary.json nor run.json names the experiment")
  experiment = loop.read_json(path, "It names the experiment; train again to rewrite it.").get(
      "experiment"
  )
  if not isinstance(experiment, str):
    raise ReportError(f"{path} has no 'experiment' name")
  return experiment


def _import(experiment: str) -> ModuleType:
  try:
    return importlib.import_module(experiment)
  except ImportError as e:
    raise ReportError(f"the experiment {experiment!r} cannot be imported ({e})") from e


def _date(summary: dict[str, Any], path: str) -> str:
  """The finish date; for a summary.json without `finished_at`, the date it was last written."""
  finished = summary.get("finished_at")
  if isinstance(finished, str) and len(finished) >= 10:
    return finished[:10]
  mtime = os.path.getmtime(path)
  return datetime.datetime.fromtimestamp(mtime, datetime.UTC).date().isoformat()


def read_runs(paths: Sequence[str]) -> tuple[list[Run], list[tuple[str, str]]]:
  """The usable runs among `paths` and (path, reason) for each of the others."""
  runs, skipped = [], []
  for path in paths:
    try:
      runs.append(read_run(path))
    except ReportError as e:
      skipped.append((path, str(e)))
  return runs, skipped


def overrides(run: Run) -> dict[str, Any]:
  """The config keys where the run differs from its experiment's get_config()."""
  default = default_config(run.module)
  keys = sorted(set(default) | set(run.config))
  return {k: run.config.get(k) for k in keys if run.config.get(k) != default.get(k)}


def group(runs: Sequence[Run]) -> list[list[Run]]:
  """Runs of one experiment and config, but for the seed and IGNORED_KEYS, in one group each;
  groups in the order of their first run, runs by seed. A base-config key missing from a run's
  config (a run from before the engine had it) counts as its default."""
  from jaxmodels.train.config import base_config, flat_keys

  # A key the engine gained after a run, at its default, computes what that run computed.
  defaults = flat_keys(base_config())
  groups: dict[str, list[Run]] = {}
  for run in runs:
    full = {**defaults, **run.config}
    same = {k: v for k, v in full.items() if k not in IGNORED_KEYS}
    key = json.dumps([run.experiment, same], sort_keys=True, default=str)
    groups.setdefault(key, []).append(run)
  return [sorted(g, key=lambda r: (r.seed, r.workdir)) for g in groups.values()]


def command(run: Run) -> str:
  """The command line the run recorded; for a run that recorded none, an equivalent one from its
  config's differences to the experiment's defaults."""
  if run.summary.get("command"):
    return str(run.summary["command"])
  from jaxmodels.train import cli

  args = [f"--workdir={run.workdir}"]
  for key, value in overrides(run).items():
    if key not in IGNORED_KEYS or key == "seed":
      args.append(f"--config.{key}={_flag_value(value)}")
  return cli.command_line(run.experiment, args)


def _flag_value(value: Any) -> str:
  if isinstance(value, list):
    return "(" + ", ".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def duration(seconds: float) -> str:
  """'42 s', '2m39s', '1h05m'."""
  s = round(seconds)
  if s < 60:
    return f"{s} s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{s % 3600 // 60:02d}m"


def machine(summary: dict[str, Any]) -> str:
  """'2-core CPU (AMD EPYC), jax 0.10.2' or '1x NVIDIA H200, 16-core CPU, jax 0.11.0'; '' for a
  summary.json that does not record it."""
  m = summary.get("machine")
  if not isinstance(m, dict):
    return ""
  cpu = f"{m.get('cpus', '?')}-core CPU ({m.get('cpu', 'unknown')})"
  text = cpu
  if m.get("platform") not in (None, "cpu"):
    text = f"{m.get('num_devices', '?')}x {m.get('device_kind', m['platform'])}, {cpu}"
  jax_version = (summary.get("versions") or {}).get("jax")
  return f"{text}, jax {jax_version}" if jax_version else text


def shared_load(summary: dict[str, Any]) -> float | None:
  """The load average at the end of the run when it says another job shared the CPU (above the
  cores + 1; the window: 5 minutes for a run under 15, else 15), else None."""
  m = summary.get("machine")
  load = m.get("load_average") if isinstance(m, dict) else None
  if not isinstance(load, list) or len(load) != 3 or not m.get("cpus"):
    return None
  wall = float(summary.get("total_wall_s", summary.get("wall_s", 0.0)))
  value = float(load[1] if wall < 900 else load[2])
  return value if value > m["cpus"] + 1 else None


def row(runs: Sequence[Run]) -> dict[str, str]:
  """The table row of one group of runs."""
  first = runs[0]
  name = first.experiment.removeprefix("experiments.")
  changed = {k for k in overrides(first) if k not in IGNORED_KEYS}
  experiment = f"`{name}`"
  if first.headline.about and not changed:
    experiment += f" ({first.headline.about})"
  if first.config.get("synthetic_data"):
    experiment += ", synthetic data"
  walls = [float(r.summary.get("total_wall_s", r.summary.get("wall_s", 0.0))) for r in runs]
  wall = duration(statistics.mean(walls))
  if len(runs) > 1:
    wall += " per seed (mean)"
  loads = [x for x in (shared_load(r.summary) for r in runs) if x is not None]
  if loads:
    cpus = first.summary["machine"]["cpus"]
    wall += f", CPU shared (load average up to {max(loads):.1f} on {cpus} cores)"
  dates = sorted({r.date for r in runs})
  machines = list(dict.fromkeys(machine(r.summary) for r in runs if machine(r.summary)))
  return {
      "experiment": experiment,
      "command": f"`{command(first)}`" + (PER_SEED if len(runs) > 1 else ""),
      "result": first.headline.result([r.value for r in runs], [r.seed for r in runs]),
      "wall time": wall,
      "date": dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}",
      "machine": "; ".join(machines),
  }


def table_lines(rows: Sequence[dict[str, str]]) -> list[str]:
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
  for r in rows:
    lines.append("| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |")
  return lines


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def row_experiment(line: str) -> str | None:
  """The experiment a table line belongs to: the first `name` of its first cell."""
  cells = _split_cells(line)
  found = re.search(r"`([^`]+)`", cells[0]) if cells else None
  return found.group(1) if found else None


def _split_cells(line: str) -> list[str]:
  return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def update_readme(path: str, rows: Sequence[dict[str, str]]) -> str:
  """README text with the table between the markers rebuilt: the rows of each experiment in
  `rows` replace that experiment's rows in place (new experiments go last), others stay."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except OSError as e:
    raise ReportError(f"--update_readme={path}: cannot read it ({e.strerror})") from e
  begin, end = text.count(RESULTS_BEGIN), text.count(RESULTS_END)
  if begin != 1 or end != 1 or text.index(RESULTS_BEGIN) > text.index(RESULTS_END):
    raise ReportError(
        f"--update_readme={path}: the results table must sit between one {RESULTS_BEGIN} line "
        f"and one {RESULTS_END} line after it (found {begin} and {end}); add them around the "
        "table."
    )
  head, rest = text.split(RESULTS_BEGIN)
  old, tail = rest.split(RESULTS_END)
  old_rows = [line for line in old.splitlines() if line.strip().startswith("|")][2:]
  new_by_experiment: dict[str, list[str]] = {}
  for r, line in zip(rows, table_lines(rows)[2:]):
    new_by_experiment.setdefault(row_experiment(line) or r["experiment"], []).append(line)
  lines, replaced = table_lines([]), set()
  for line in old_rows:
    name = row_experiment(line)
    if name in new_by_experiment:
      lines += new_by_experiment.pop(name)
      replaced.add(name)
    elif name not in replaced:
      if len(_split_cells(line)) != len(COLUMNS):
        raise ReportError(
            f"--update_readme={path}: the row {line.strip()[:60]!r}... has "
            f"{len(_split_cells(line))} cells, the table {len(COLUMNS)} ({', '.join(COLUMNS)}); "
            "fix it or regenerate it from its runs."
        )
      lines.append(line.strip())
  for remaining in new_by_experiment.values():
    lines += remaining
  return head + RESULTS_BEGIN + "\n" + "\n".join(lines) + "\n" + RESULTS_END + tail


def report(paths: Sequence[str], markdown: bool = True, readme: str | None = None) -> int:
  """Prints the table of `paths` and the skipped ones; returns the exit status (2: none usable)."""
  runs, skipped = read_runs(paths)
  for path, reason in skipped:
    print(f"skipped {path}: {reason}", file=sys.stderr)
  if not runs:
    given = f"{len(paths)} path(s)" if paths else "no paths"
    print(
        f"error: no finished workdir among {given}: give the workdirs of training runs "
        "(python -m jaxmodels.report runs/*), each with summary.json and config.json.",
        file=sys.stderr,
    )
    return 2
  rows = [row(g) for g in group(runs)]
  if readme:
    try:
      text = update_readme(readme, rows)
    except ReportError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    _write_text(readme, text)
    print(f"{readme}: results table rebuilt from {len(runs)} run(s), {len(rows)} row(s).")
  if markdown:
    print("\n".join(table_lines(rows)))
  return 0


def _write_text(path: str, text: str) -> None:
  """Replaces `path` whole, so that a failure leaves the old file."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def main() -> None:
  from absl import app, flags

  flags.DEFINE_bool("markdown", True, "Print the results table as markdown.")
  flags.DEFINE_string(
      "update_readme",
      None,
      f"A README whose table between {RESULTS_BEGIN} and {RESULTS_END} is rebuilt from the runs.",
  )

  def run(argv: list[str]) -> None:
    fv = flags.FLAGS
    sys.exit(report(argv[1:], fv.markdown, fv.update_readme))

  app.run(run)


if __name__ == "__main__":
  # The experiments' HEADLINE is an instance of jaxmodels.report.Headline, not of __main__'s.
  from jaxmodels import report as importable

  importable.main()
