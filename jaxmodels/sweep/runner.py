"""Run a sweep: worker threads ask Optuna for trials and run each as an experiment subprocess.

Design:
- ask/tell, not study.optimize: the objective is a subprocess and the loop needs control over
  counting, heartbeats, pruning and resuming.
- Each worker is a thread; the work happens in the trial subprocess, so threads are enough. A
  trial gets its own share of cores (or one GPU) through its environment (see resources.py).
- Liveness: a worker writes a heartbeat (a user attribute) for its running trial every few
  seconds. A RUNNING trial whose heartbeat is older than `stale_after` belonged to a sweep that
  died; any worker (of any process) that moves it to FAIL first enqueues a retry with the same
  parameters and the same trial directory, so the experiment resumes from its checkpoint. The
  retry carries `resumes=<old number>`, and the stale trial then no longer counts or shows.
- Before the first trial, precheck.py checks the configs and data of the space's ends, and
  sweepdir.py that the directory belongs to this study (DIR/sweep.json): a sweep no trial could
  run, or one that would mix two studies' trial directories, stops with one message.
- Budget: trials that count are all but stale-and-resumed and surplus ones. A worker asks for a
  trial only while fewer than num_trials count (or a retry waits). Two processes may both ask
  for the last slot; the one whose trial number comes later marks it surplus before running it.
"""

from __future__ import annotations

from collections.abc import Iterable
import dataclasses
import importlib
import json
import math
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from jaxmodels.sweep import precheck, report, resources, space, sweepdir
from jaxmodels.sweep.space import Sweep, SweepError
from jaxmodels.sweep.storage import open_storage

WORKDIR = sweepdir.WORKDIR  # user attr: the trial's directory name under DIR/trials
RESUMES = "resumes"  # user attr of a retry: number of the stale trial it continues
SURPLUS = "surplus"  # user attr: asked past the budget, never run
HEARTBEAT = "heartbeat"  # user attr: time.time() of the worker's last sign of life
_LAUNCH = str(Path(__file__).with_name("_launch.py"))


@dataclasses.dataclass
class Options:
  """Everything `run_sweep` takes besides the experiment and the workdir (see the CLI help)."""

  num_trials: int | None = None
  workers: int = 1
  sampler: str | None = None
  storage: str | None = None
  study_name: str | None = None
  prune: bool = False
  prune_startup_trials: int = 5
  prune_warmup_steps: int = 0
  seed: int = 0
  overrides: dict[str, str] = dataclasses.field(default_factory=dict)
  heartbeat_interval: float = 5.0
  stale_after: float = 30.0
  poll_interval: float = 1.0
  quiet: bool = False


def load_experiment(name: str) -> tuple[Any, Any, Sweep]:
  """Import `name`; return (module, get_config(), the Sweep of get_sweep())."""
  try:
    module = importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name and (name == e.name or name.startswith(e.name + ".")):
      raise SweepError(
          f"unknown experiment module {name!r}: {e}. Give an importable module, "
          "e.g. experiments.mnist_mlp, and run from the repository root."
      ) from e
    raise SweepError(f"experiment module {name!r} failed to import: {e}") from e
  for fn in ("get_config", "get_sweep"):
    if not callable(getattr(module, fn, None)):
      raise SweepError(
          f"experiment module {name!r} defines no {fn}(); a sweepable experiment "
          "has get_config() and get_sweep()"
      )
  return module, module.get_config(), space.as_sweep(module.get_sweep())


def run_sweep(experiment: str, workdir: str | os.PathLike, options: Options | None = None):
  """Run (or resume, or join) the sweep of `experiment` in `workdir`; return the optuna Study.

  Raises SweepError on bad input, KeyboardInterrupt when interrupted (running trials are then
  released for a later rerun to resume).
  """
  options = options or Options()
  module, config, sweep = load_experiment(experiment)
  sampler = options.sampler or sweep.sampler
  space.validate(sweep, config, sampler, options.overrides)
  if options.workers < 1:
    raise SweepError(f"--workers must be at least 1, got {options.workers}")
  if not 0 < options.heartbeat_interval < options.stale_after:
    raise SweepError(
        f"need 0 < --heartbeat_interval ({options.heartbeat_interval:g}) < "
        f"--stale_after ({options.stale_after:g})"
    )
  if options.poll_interval <= 0:
    raise SweepError(f"--poll_interval must be positive, got {options.poll_interval:g}")
  num_trials = _num_trials(sweep, sampler, options.num_trials)
  workdir = Path(workdir).resolve()
  root = _import_root(module, experiment)
  cores, gpus = resources.available_cores(), resources.detect_gpus()
  if options.workers > len(cores) and not gpus:
    print(
        f"[sweep] warning: --workers={options.workers} is more than the {len(cores)} CPU "
        "core(s) this process may use: the trials share cores and each runs slower",
        file=sys.stderr,
        flush=True,
    )
  slots = resources.worker_slots(options.workers, root, cores, gpus)
  share, gpu = resources.slot_resources(0, options.workers, cores, gpus)
  precheck.check(module, experiment, config, sweep, options.overrides, _devices(len(share), gpu))
  (workdir / "trials").mkdir(parents=True, exist_ok=True)
  study = _open_study(experiment, workdir, sweep, sampler, options)
  sweeper = _Sweeper(experiment, root, workdir, sweep, study, num_trials, options, slots)
  sweeper.run()
  return study


def _devices(cores: int, gpu: str | None):
  """devices(config): how many devices a trial with that config sees on `cores` or `gpu`."""

  def devices(config: Any) -> int:
    from jaxmodels.train import cli  # pylint: disable=import-outside-toplevel

    batch_sizes = cli._batch_sizes(config, None)  # pylint: disable=protected-access
    return resources.trial_devices(cores, gpu, batch_sizes)

  return devices


def _num_trials(sweep: Sweep, sampler: str, requested: int | None) -> int:
  if requested is not None and requested < 1:
    raise SweepError(f"--num_trials must be at least 1, got {requested}")
  wanted = requested or sweep.num_trials
  if sampler == "grid":
    size = space.grid_size(sweep)
    return min(wanted, size) if wanted else size
  if not wanted:
    raise SweepError(f"{sampler} sampler: give --num_trials or Sweep(num_trials=...)")
  return wanted


def _import_root(module: Any, name: str) -> str:
  """The sys.path entry the experiment was imported from, for the trial's PYTHONPATH."""
  path = Path(module.__file__).resolve()
  if path.name == "__init__.py":
    path = path.parent
  return str(path.parents[len(name.split(".")) - 1])


def _open_study(experiment: str, workdir: Path, sweep: Sweep, sampler: str, options: Options):
  import optuna  # pylint: disable=import-outside-toplevel

  storage = open_storage(options.storage, workdir)
  pruner = (
      optuna.pruners.MedianPruner(options.prune_startup_trials, options.prune_warmup_steps)
      if options.prune
      else optuna.pruners.NopPruner()
  )
  direction = "maximize" if sweep.mode == "max" else "minimize"
  name = options.study_name or experiment
  try:
    existing = optuna.load_study(study_name=name, storage=storage)
  except KeyError:
    existing = None
  sweepdir.check_owner(workdir, name, existing)
  study = optuna.create_study(
      storage=storage,
      study_name=name,
      direction=direction,
      sampler=_sampler(sweep, sampler, options.seed, storage, name),
      pruner=pruner,
      load_if_exists=True,
  )
  if study.direction.name.lower() != direction:
    raise SweepError(
        f"study {name!r} in this storage is set to {study.direction.name.lower()}, "
        f"but the sweep asks to {direction}; use another --workdir or --study_name"
    )
  identity = {
      "experiment": experiment,
      "metric": sweep.metric,
      "sampler": sampler,
      "overrides": sorted(f"{k}={v}" for k, v in options.overrides.items()),
  }
  if not study.user_attrs:
    for key, value in identity.items():
      study.set_user_attr(key, value)
  started = dict(study.user_attrs)
  if "metric" in started:  # stored as the spec spelled it; compare it as a Sweep reads it
    started["metric"] = space.canonical_metric(started["metric"])
  for key, value in identity.items():
    if started.get(key, value) != value:
      raise SweepError(
          f"study {name!r} was started with {key}={started[key]!r}, now "
          f"{value!r}; rerun with the same settings, or use another --workdir or "
          "--study_name"
      )
  sweepdir.claim(workdir, name)
  return study


def _sampler(sweep: Sweep, name: str, seed: int, storage: Any, study_name: str):
  """The Optuna sampler. A process joining a study with trials offsets its seed so that two
  random/TPE processes do not propose the same sequence."""
  import optuna  # pylint: disable=import-outside-toplevel

  if name == "grid":
    return _GridSampler(space.grid_space(sweep), seed=seed)
  try:
    seed += len(optuna.load_study(study_name=study_name, storage=storage).trials)
  except KeyError:
    pass
  if name == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  return optuna.samplers.TPESampler(seed=seed)


def _grid_sampler_class():
  import optuna  # pylint: disable=import-outside-toplevel

  class GridSampler(optuna.samplers.GridSampler):
    """GridSampler for ask/tell: its after_trial calls study.stop(), which only works inside
    study.optimize; the sweep loop stops by counting trials instead."""

    def after_trial(self, study, trial, state, values) -> None:
      del study, trial, state, values

  return GridSampler


def _GridSampler(search_space: dict, seed: int):  # pylint: disable=invalid-name
  return _grid_sampler_class()(search_space, seed=seed)


def counted(trials: Iterable[Any]) -> list[Any]:
  """The trials that count toward the budget and show in results: all but those resumed by a
  retry and the surplus ones."""
  trials = list(trials)
  resumed = {t.user_attrs.get(RESUMES) for t in trials} - {None}
  return [t for t in trials if t.number not in resumed and not t.user_attrs.get(SURPLUS)]


def trial_command(
    experiment: str, trial_dir: Path, overrides: dict[str, str], params: dict[str, Any]
) -> list[str]:
  """The experiment command line of one trial: fixed overrides, then the sampled parameters."""
  flags = space.trial_flags(overrides, params)
  return [sys.executable, "-m", experiment, f"--workdir={trial_dir}"] + flags


def read_objective(trial_dir: Path, metric: str) -> float:
  """The objective `metric` (a summary.json key) from the trial's summary.json."""
  path = trial_dir / "summary.json"
  if not path.exists():
    raise SweepError(f"no {path}")
  summary = json.loads(path.read_text())
  if metric in summary:
    return float(summary[metric])
  raise SweepError(f'summary.json has no {metric!r}; keys: {", ".join(sorted(summary))}')


class MetricsTail:
  """Reads the records appended to a metrics.jsonl since the last call."""

  def __init__(self, path: Path):
    self.path = path
    self.offset = 0

  def read(self) -> list[dict[str, Any]]:
    try:
      with open(self.path, "rb") as f:
        f.seek(self.offset)
        data = f.read()
    except FileNotFoundError:
      return []
    end = data.rfind(b"\n") + 1  # a partly written last line waits for the next call
    self.offset += end
    records = []
    for line in data[:end].splitlines():
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
    return records


class _Sweeper:
  """The shared state of one sweep process: the study, its workers and their locks."""

  def __init__(
      self,
      experiment: str,
      root: str,
      workdir: Path,
      sweep: Sweep,
      study: Any,
      num_trials: int,
      options: Options,
      slots: list[tuple[list[int], dict[str, str]]] | None = None,
  ):
    self.experiment, self.workdir, self.sweep, self.study = experiment, workdir, sweep, study
    self.num_trials, self.options = num_trials, options
    self.dists = space.distributions(sweep)
    self.ask_lock, self.report_lock = threading.Lock(), threading.Lock()
    self.stop = threading.Event()
    self.report_due = threading.Event()
    self.reported: tuple[list[Any], list[dict[str, Any]]] = ([None], [])
    self.running: set[int] = set()
    self.errors: list[BaseException] = []
    self.slots = slots or resources.worker_slots(options.workers, root)

  def say(self, msg: str) -> None:
    if not self.options.quiet:
      print(f"[sweep] {msg}", flush=True)

  def run(self) -> None:
    self.say(
        f"{self.experiment}: {self.num_trials} trials of {self.sweep.metric} "
        f"({self.sweep.mode}), {self.options.workers} worker(s), study in "
        f'{self.options.storage or self.workdir / "study.db"}'
    )
    # Workers signal their end through events: a Ctrl-C that lands inside Thread.join can leave
    # the thread marked as stopped (CPython), and the trials would then be abandoned unreleased.
    ended = [threading.Event() for _ in range(self.options.workers)]
    for slot in range(self.options.workers):
      threading.Thread(target=self.worker, args=(slot, ended[slot]), daemon=True).start()
    reporter = threading.Thread(target=self.reporter, daemon=True)
    reporter.start()
    try:
      _wait_all(ended)
    except KeyboardInterrupt:
      self.say("interrupted: stopping trials; rerun the same command to resume")
      self.stop.set()
      _wait_all(ended)
      for e in self.errors:
        self.say(f"while stopping: {type(e).__name__}: {e}")
      raise
    self.stop.set()
    reporter.join()
    if self.errors:
      raise self.errors[0]
    table = self.write_reports(final=True)
    best = report.best_row(table)
    self.say(
        f'results: {self.workdir / "results.md"}, {self.workdir / "results.csv"}, '
        f'{self.workdir / "plots"}'
    )
    if best is None:
      self.say("no trial completed; see the logs in " + str(self.workdir / "trials"))
      return
    print(
        f'best: trial {best["trial"]} with {self.sweep.metric}={best[self.sweep.metric]:.6g}; '
        "train it with:\n"
        + report.best_command(
            self.experiment, self.workdir, self.options.overrides, self.sweep, best
        ),
        flush=True,
    )

  def worker(self, slot: int, ended: threading.Event) -> None:
    try:
      while not self.stop.is_set():
        trial = self.next_trial()
        if trial is None:
          return
        try:
          self.run_trial(trial, slot)
        finally:
          self.running.discard(trial.number)
        self.report_due.set()
    except BaseException as e:  # pylint: disable=broad-except
      self.errors.append(e)
      self.stop.set()
    finally:
      ended.set()

  def next_trial(self):
    """Ask for the next trial, or None when the budget is finished; waits while trials of
    other workers are still running (they may finish, or go stale and need a retry)."""
    from optuna.trial import TrialState  # pylint: disable=import-outside-toplevel

    waiting_said = False
    while not self.stop.is_set():
      with self.ask_lock:
        self.reclaim_stale()
        live = counted(self.study.get_trials(deepcopy=False))
        if len(live) < self.num_trials or any(t.state == TrialState.WAITING for t in live):
          trial = self.study.ask(self.dists)
          trial.set_user_attr(HEARTBEAT, time.time())
          if not self.is_surplus(trial):
            self.running.add(trial.number)
            return trial
          trial.set_user_attr(SURPLUS, True)
          self.study.tell(trial, state=TrialState.FAIL)
          continue
        elsewhere = [
            t.number for t in live if not t.state.is_finished() and t.number not in self.running
        ]
        if all(t.state.is_finished() for t in live):
          return None
      if elsewhere and not waiting_said:
        self.say(
            f"waiting for trials {elsewhere} of other workers (they finish, or are resumed "
            f"here after {self.options.stale_after:g}s without a heartbeat)"
        )
        waiting_said = True
      self.stop.wait(self.options.poll_interval)
    return None

  def is_surplus(self, trial: Any) -> bool:
    if trial.user_attrs.get(RESUMES) is not None:
      return False
    before = [t for t in counted(self.study.get_trials(deepcopy=False)) if t.number < trial.number]
    return len(before) >= self.num_trials

  def reclaim_stale(self) -> None:
    """Fail RUNNING trials with an old heartbeat and enqueue their retries."""
    from optuna.trial import TrialState  # pylint: disable=import-outside-toplevel

    now = time.time()
    for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
      beat = t.user_attrs.get(HEARTBEAT) or t.datetime_start.timestamp()
      if t.number in self.running or now - beat <= self.options.stale_after:
        continue
      try:  # whoever moves it to FAIL first owns the retry
        self.study.tell(t.number, state=TrialState.FAIL)
      except Exception:  # pylint: disable=broad-except
        continue
      self.say(
          f"trial {t.number} lost its worker (no heartbeat for {now - beat:.0f}s); "
          "it will be resumed in its directory"
      )
      self.enqueue_retry(t)

  def enqueue_retry(self, t: Any) -> None:
    if set(t.params) != set(self.dists):  # died while being asked: nothing ran
      return
    self.study.enqueue_trial(
        dict(t.params),
        user_attrs={RESUMES: t.number, WORKDIR: t.user_attrs.get(WORKDIR, str(t.number))},
    )

  def run_trial(self, trial: Any, slot: int) -> None:
    """Run one trial's subprocess, report its curve, prune it if asked, tell the result."""
    from optuna.trial import TrialState  # pylint: disable=import-outside-toplevel

    resumes = trial.user_attrs.get(RESUMES)
    name = trial.user_attrs[WORKDIR] if resumes is not None else str(trial.number)
    trial_dir = self.workdir / "trials" / name
    if resumes is None and trial_dir.exists():  # made by no trial of this study: set it aside
      trial_dir.rename(trial_dir.with_name(f"{name}.old-{int(time.time())}"))
    trial_dir.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr(WORKDIR, name)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}:{slot}")
    params = dict(trial.params)
    cmd = trial_command(self.experiment, trial_dir, self.options.overrides, params)
    resuming = "" if resumes is None else f" (resuming trial {resumes} in trials/{name})"
    self.say(
        f"trial {trial.number} starts{resuming}: "
        + " ".join(f"{k}={space.format_value(v)}" for k, v in sorted(params.items()))
    )
    start = time.time()
    outcome, rc = self.watch(trial, self.spawn(cmd, trial_dir, slot), trial_dir)
    if outcome == "taken":
      return
    if outcome == "stopped":
      self.release(trial)
      return
    if outcome == "pruned":
      trial.set_user_attr("wall_s", round(time.time() - start, 3))
      self.study.tell(trial, state=TrialState.PRUNED)
      self.say(f"trial {trial.number} pruned")
      return
    self.finish(trial, trial_dir, rc, time.time() - start)

  def spawn(self, cmd: list[str], trial_dir: Path, slot: int) -> subprocess.Popen:
    cores, env = self.slots[slot]
    with open(trial_dir / "log.txt", "a") as log:
      log.write(f'# sweep {time.strftime("%Y-%m-%d %H:%M:%S")}: {" ".join(cmd)}\n')
      log.flush()
      launch = [sys.executable, _LAUNCH, str(os.getpid()), ",".join(map(str, cores)), "--"]
      return subprocess.Popen(
          launch + cmd,
          stdout=log,
          stderr=subprocess.STDOUT,
          stdin=subprocess.DEVNULL,
          env=env,
          cwd=os.getcwd(),
          start_new_session=True,
      )

  def watch(self, trial: Any, proc: subprocess.Popen, trial_dir: Path) -> tuple[str, int | None]:
    """Poll the subprocess until it ends: report new metrics, beat the heart, prune, stop.

    Returns ('done', exit code), ('pruned', None), ('stopped', None) when the sweep is
    interrupted, or ('taken', None) when another worker declared this trial stale.
    """
    from optuna.trial import TrialState  # pylint: disable=import-outside-toplevel

    tail, reported, last_beat = MetricsTail(trial_dir / "metrics.jsonl"), set(), time.time()
    try:
      while True:
        rc = proc.poll()
        for step, value in report.metric_points(tail.read(), self.sweep.metric):
          if step not in reported:
            trial.report(value, step)
            reported.add(step)
        if rc is not None:
          return "done", rc
        if self.options.prune and reported and trial.should_prune():
          return "pruned", None
        if self.stop.is_set():
          return "stopped", None
        if time.time() - last_beat >= self.options.heartbeat_interval:
          last_beat = time.time()
          if frozen(self.study, trial.number).state != TrialState.RUNNING:
            self.say(f"trial {trial.number} was taken over by another worker; stopping it here")
            return "taken", None
          trial.set_user_attr(HEARTBEAT, last_beat)
        time.sleep(self.options.poll_interval)
    finally:
      kill(proc)

  def release(self, trial: Any) -> None:
    """Give an interrupted trial back: FAIL it and enqueue its retry in the same directory."""
    from optuna.trial import TrialState  # pylint: disable=import-outside-toplevel

    before = frozen(self.study, trial.number)
    self.study.tell(trial, state=TrialState.FAIL)
    self.enqueue_retry(before)

  def finish(self, trial: Any, trial_dir: Path, rc: int, wall_s: float) -> None:
    """Tell the result of a subprocess that exited: its objective, or FAIL with the reason."""
    from optuna.trial import TrialState  # pylint: disable=import-outside-toplevel

    summary = _read_json(trial_dir / "summary.json")
    trial.set_user_attr("steps", summary.get("steps"))
    trial.set_user_attr("wall_s", summary.get("wall_s", round(wall_s, 3)))
    trial.set_user_attr("exit_code", rc)
    error, value = None, None
    if rc != 0:
      error = f'exit {rc}: {last_line(trial_dir / "log.txt")}'
    else:
      try:
        value = read_objective(trial_dir, self.sweep.metric)
        if not math.isfinite(value):
          error = f"{self.sweep.metric} is {value}"
      except (SweepError, ValueError) as e:
        error = str(e)
    if error:
      trial.set_user_attr("error", error[:300])
      self.study.tell(trial, state=TrialState.FAIL)
      self.say(f'trial {trial.number} failed: {error[:200]} (log: {trial_dir / "log.txt"})')
    else:
      self.study.tell(trial, value)
      self.say(f"trial {trial.number} finished: {self.sweep.metric}={value:.6g}")

  def reporter(self) -> None:
    """Rewrite the reports after trials end, off the workers' path (plots take ~0.5 s)."""
    while not self.stop.is_set():
      if self.report_due.wait(timeout=0.2):
        self.report_due.clear()
        self.write_reports()

  def write_reports(self, final: bool = False) -> list[dict[str, Any]]:
    """Rewrite results and plots, unless no trial changed since the last time."""
    with self.report_lock:
      trials = counted(self.study.get_trials(deepcopy=False))
      state = [(t.number, t.state.name, t.value) for t in trials]
      if state == self.reported[0] and (self.workdir / "results.csv").exists():
        return self.reported[1]
      try:
        table = report.write_all(
            self.workdir, self.experiment, self.sweep, self.options.overrides, trials
        )
      except Exception as e:  # pylint: disable=broad-except
        if final:
          raise
        self.say(f"could not write reports: {type(e).__name__}: {e}")
        return []
      self.reported = (state, table)
      return table


def _wait_all(events: list[threading.Event]) -> None:
  """Wait until every event is set, in short sleeps that Ctrl-C can interrupt safely."""
  while not all(e.is_set() for e in events):
    time.sleep(0.1)


def kill(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
  """End a trial subprocess and everything it started (its own session)."""
  if proc.poll() is not None:
    return
  for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
    try:
      os.killpg(proc.pid, sig)
    except ProcessLookupError:
      return
    try:
      proc.wait(timeout=wait)
      return
    except subprocess.TimeoutExpired:
      continue


def frozen(study: Any, number: int) -> Any:
  """The stored state of trial `number`."""
  return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def last_line(path: Path) -> str:
  """The last non-empty line of a log, for a failed trial's message."""
  try:
    lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()]
  except OSError:
    return ""
  return lines[-1] if lines else ""


def _read_json(path: Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}
