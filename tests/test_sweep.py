"""Tests of jaxmodels.sweep against tests/sweep_fixture_experiment.py (no engine needed).

The fixture's "training" has a closed-form loss (`expected_loss`), the independent reference
for every objective checked here. Sweeps run as real subprocesses with short poll intervals.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from jaxmodels.sweep import (  # noqa: E402  # noqa: E402
    Choice,
    IntRange,
    LogUniform,
    Sweep,
    SweepError,
    Uniform,
    __main__ as cli,  # noqa: E402
    precheck,
    report,
    resources,
    runner,
    space,
)
from tests import sweep_fixture_experiment as fx  # noqa: E402

FIXTURE = "tests.sweep_fixture_experiment"
FAST = ["--poll_interval=0.05", "--heartbeat_interval=0.3"]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.syspath_prepend(str(REPO))


def sweep_cmd(experiment: str, workdir: Path, *flags: str) -> list[str]:
  return [
      sys.executable,
      "-m",
      "jaxmodels.sweep",
      experiment,
      f"--workdir={workdir}",
      *FAST,
      *flags,
  ]


def run_cli(experiment, workdir, *flags, timeout=120):
  return subprocess.run(
      sweep_cmd(experiment, workdir, *flags),
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def run_main(capsys, experiment, workdir, *flags):
  """The command line in this process (saves a Python start); returns (status, stdout, stderr)."""
  status = cli.main([experiment, f"--workdir={workdir}", *FAST, *flags])
  out, err = capsys.readouterr()
  return status, out, err


def read_csv(path: Path) -> list[dict[str, str]]:
  with open(path) as f:
    return list(csv.DictReader(f))


def expected_accuracy(steps: int = 10, **overrides) -> float:
  config = fx.get_config()
  for key, value in overrides.items():
    *parents, leaf = key.split("__")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return fx.accuracy(fx.expected_loss(config, steps))


def write_module(tmp_path: Path, sweep_src: str) -> str:
  """An experiment module in tmp_path: the fixture's config and training with its own space."""
  name = f"sweep_space_{uuid.uuid4().hex[:8]}"
  (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
      import sys
      from jaxmodels.sweep import Choice, IntRange, LogUniform, Sweep, Uniform
      from tests.sweep_fixture_experiment import get_config, parse, train

      def get_sweep():
        return {sweep_src}

      if __name__ == '__main__':
        train(*parse(sys.argv[1:]))
      """))
  return name


def start_count(trial_dir: Path) -> int:
  return (trial_dir / "log.txt").read_text().count("fixture: start at step")


def is_png(path: Path) -> bool:
  return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


# --- the search space -------------------------------------------------------------------------


def test_validate_names_the_key_and_the_valid_keys():
  config = fx.get_config()
  with pytest.raises(SweepError, match=r"unknown config key 'lr'.*valid keys: .*learning_rate"):
    space.validate(Sweep(params={"lr": Choice([1])}), config, "tpe")
  with pytest.raises(SweepError, match=r"empty search space.*valid keys: batch_size"):
    space.validate(Sweep(params={}), config, "tpe")
  with pytest.raises(SweepError, match=r"unknown config key 'model.depth'.*model.width"):
    space.validate(Sweep(params={"model.depth": IntRange(1, 3)}), config, "grid")
  with pytest.raises(SweepError, match=r"grid sampler: parameter 'learning_rate' is a continuous"):
    space.validate(Sweep(params={"learning_rate": LogUniform(1e-3, 1e-1)}), config, "grid")
  with pytest.raises(SweepError, match=r"'batch_size': value 0.5 \(float\) does not fit"):
    space.validate(Sweep(params={"batch_size": Choice([32, 0.5])}), config, "tpe")
  with pytest.raises(SweepError, match=r"both swept and fixed"):
    space.validate(Sweep(params={"seed": [0, 1]}), config, "tpe", {"seed": "3"})
  with pytest.raises(SweepError, match=r"unknown config key 'nope'"):
    space.validate(Sweep(params={"seed": [0, 1]}), config, "tpe", {"nope": "3"})
  with pytest.raises(SweepError, match=r"log range needs low > 0"):
    space.validate(Sweep(params={"learning_rate": LogUniform(0.0, 1.0)}), config, "tpe")
  with pytest.raises(SweepError, match=r'metric .* must be "<split>_<name>"'):
    space.validate(Sweep(params={"seed": [0]}, metric="accuracy"), config, "tpe")
  with pytest.raises(SweepError, match=r"unknown sampler 'cmaes'"):
    space.validate(Sweep(params={"seed": [0]}), config, "cmaes")
  space.validate(
      Sweep(
          params={
              "learning_rate": Uniform(0.01, 0.5),
              "model.width": IntRange(2, 8),
              "optimizer": ["sgd", "adam"],
              "fail": [False],
          }
      ),
      config,
      "tpe",
  )


def test_grid_and_distributions():
  sweep = Sweep(params={"a": [1, 2, 3], "b": IntRange(2, 10, step=4), "c": Choice(["x", "y"])})
  assert space.grid_space(sweep) == {"a": [1, 2, 3], "b": [2, 6, 10], "c": ["x", "y"]}
  assert space.grid_size(sweep) == len(list(itertools.product([1, 2, 3], [2, 6, 10], "xy")))
  dists = space.distributions(Sweep(params={"lr": LogUniform(1e-4, 1e-1), "n": IntRange(1, 4)}))
  assert dists["lr"].log and (dists["lr"].low, dists["lr"].high) == (1e-4, 1e-1)
  assert (dists["n"].low, dists["n"].high, dists["n"].step) == (1, 4, 1)
  assert space.split_metric("test_accuracy") == ("test", "accuracy")
  assert space.split_metric("eval_loss") == ("eval", "loss")
  assert [space.format_value(v) for v in (True, 1e-05, 3, "adam")] == ["true", "1e-05", "3", "adam"]
  assert space.as_sweep({"params": {"seed": [1]}, "mode": "min"}).params["seed"] == Choice([1])


def test_a_validation_metric_is_read_as_the_eval_metric():
  assert Sweep(params={"seed": [0]}, metric="validation_accuracy").metric == "eval_accuracy"
  spec = {"params": {"seed": [0]}, "metric": "validation_loss"}
  assert space.as_sweep(spec).metric == "eval_loss"
  assert Sweep(params={"seed": [0]}, metric="test_loss").metric == "test_loss"
  with pytest.raises(SweepError, match=r"split one of \['train', 'eval', 'test'\]"):
    space.split_metric("validation_accuracy")


def test_trial_env_and_shares():
  cores = list(range(16))
  shares = [resources.slot_resources(i, 4, cores, ["0", "1"]) for i in range(4)]
  assert [s[0] for s in shares] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
  assert [s[1] for s in shares] == ["0", "1", "0", "1"]
  assert resources.slot_resources(2, 3, [0, 1], [])[0] == [0]  # more workers than cores: one each
  base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/x", "HOME": "/h"}
  env = resources.trial_env(base, 4, "1", True, "/repo")
  # The sweep's own device count is dropped: the experiment picks one for its cores and batch.
  assert env["XLA_FLAGS"] == "--xla_dump_to=/x" and "JAXMODELS_HOST_DEVICES" not in env
  assert env["OMP_NUM_THREADS"] == "4"
  assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  assert env["PYTHONPATH"] == "/repo" and env["HOME"] == "/h"
  plain = resources.trial_env({"JAXMODELS_HOST_DEVICES": "2"}, 1, None, False, "/repo")
  assert "CUDA_VISIBLE_DEVICES" not in plain and "XLA_FLAGS" not in plain
  assert plain["JAXMODELS_HOST_DEVICES"] == "2"  # the user's choice passes


def test_a_trial_splits_its_cores_into_devices_that_divide_the_batch(monkeypatch):
  monkeypatch.delenv("JAXMODELS_HOST_DEVICES", raising=False)
  assert resources.trial_devices(6, None, [128, 128]) == 4
  assert resources.trial_devices(3, None, [64, 32]) == 2
  assert resources.trial_devices(6, "0", [128, 128]) == 1  # its one GPU
  monkeypatch.setenv("JAXMODELS_HOST_DEVICES", "3")
  assert resources.trial_devices(6, None, [128, 128]) == 3


def test_worker_slots_pin_a_share_of_the_cores_for_several_workers(monkeypatch):
  monkeypatch.setattr(resources, "available_cores", lambda: [0, 1, 2, 3])
  monkeypatch.setattr(resources, "detect_gpus", lambda: [])
  two = resources.worker_slots(2, "/repo")
  assert [cores for cores, _ in two] == [[0, 1], [2, 3]]
  assert [env["OMP_NUM_THREADS"] for _, env in two] == ["2", "2"]
  [(cores, env)] = resources.worker_slots(1, "/repo")
  assert cores == [] and env["OMP_NUM_THREADS"] == "4"


def test_available_cores_keep_to_the_cgroup_quota(monkeypatch):
  from jaxmodels import _env

  monkeypatch.setattr(_env, "usable_cpus", lambda: 1)  # a quota of one CPU
  assert resources.available_cores() == sorted(os.sched_getaffinity(0))[:1]


def test_metrics_tail_waits_for_whole_lines(tmp_path):
  path = tmp_path / "metrics.jsonl"
  tail = runner.MetricsTail(path)
  assert tail.read() == []
  path.write_text('{"step": 2, "split": "eval", "accuracy": 0.5}\n{"step": 4, "spl')
  assert report.metric_points(tail.read(), "eval_accuracy") == [(2, 0.5)]
  with open(path, "a") as f:
    f.write('it": "eval", "accuracy": 0.75}\n{"step": 4, "split": "train", "loss": 1.0}\n')
  records = tail.read()
  assert report.metric_points(records, "eval_accuracy") == [(4, 0.75)]
  assert report.metric_points(records, "train_loss") == [(4, 1.0)]


def test_stale_trials_are_retried_and_extra_trials_are_surplus(tmp_path):
  """The bookkeeping of resume and budget on an in-memory study, without subprocesses."""
  import optuna
  from optuna.trial import TrialState

  sweep = fx.get_sweep()
  study = optuna.create_study(
      direction="maximize", sampler=runner._GridSampler(space.grid_space(sweep), seed=0)
  )
  sweeper = runner._Sweeper(
      FIXTURE, str(REPO), tmp_path, sweep, study, 3, runner.Options(stale_after=5.0, quiet=True)
  )
  done = sweeper.next_trial()
  study.tell(done, 0.5)
  lost = sweeper.next_trial()  # its worker "dies": the heartbeat gets old
  lost.set_user_attr(runner.HEARTBEAT, time.time() - 60)
  lost.set_user_attr(runner.WORKDIR, str(lost.number))
  sweeper.running.clear()
  alive = study.ask(sweeper.dists)  # a live trial of another worker
  alive.set_user_attr(runner.HEARTBEAT, time.time())
  retry = sweeper.next_trial()  # reclaims the lost trial and picks up its retry
  assert study.trials[lost.number].state == TrialState.FAIL
  assert retry.user_attrs == {
      **retry.user_attrs,
      runner.RESUMES: lost.number,
      runner.WORKDIR: str(lost.number),
  }
  assert retry.params == lost.params
  assert [t.number for t in runner.counted(study.trials)] == [
      done.number,
      alive.number,
      retry.number,
  ]
  extra = study.ask(sweeper.dists)  # asked by another process for a slot that is gone
  assert sweeper.is_surplus(extra) and not sweeper.is_surplus(retry)
  extra.set_user_attr(runner.SURPLUS, True)
  study.tell(extra, state=TrialState.FAIL)
  assert len(runner.counted(study.trials)) == 3
  for t in (alive, retry):
    study.tell(t, 0.1)
  assert sweeper.next_trial() is None  # budget of 3 done


# --- whole sweeps ---------------------------------------------------------------------------


def test_grid_sweep_with_two_workers(tmp_path):
  workdir = tmp_path / "sweep"
  proc = run_cli(FIXTURE, workdir, "--workers=2", "--config.num_train_steps=6")
  assert proc.returncode == 0, proc.stderr
  rows = read_csv(workdir / "results.csv")
  assert len(rows) == 4 and {r["status"] for r in rows} == {"COMPLETE"}
  grid = {(float(r["learning_rate"]), int(r["batch_size"])) for r in rows}
  assert grid == set(itertools.product([0.05, 0.2], [32, 64]))
  for r in rows:
    want = expected_accuracy(
        6, learning_rate=float(r["learning_rate"]), batch_size=int(r["batch_size"])
    )
    assert float(r["eval_accuracy"]) == pytest.approx(want, rel=1e-9)
    assert r["steps"] == "6" and start_count(workdir / r["workdir"]) == 1
  objectives = [float(r["eval_accuracy"]) for r in rows]
  assert objectives == sorted(objectives, reverse=True)  # best first
  for name in ("learning_curves", "objective_vs_learning_rate", "objective_vs_batch_size"):
    assert is_png(workdir / "plots" / f"{name}.png")
  md = (workdir / "results.md").read_text()
  assert md.count("| COMPLETE |") == 4 and "plots/learning_curves.png" in md

  # The printed command trains the best configuration to the same objective.
  command = proc.stdout.strip().splitlines()[-1]
  assert command.startswith(f'python -m {FIXTURE} --workdir={workdir / "best"}')
  subprocess.run([sys.executable] + command.split()[1:], cwd=REPO, check=True, timeout=60)
  best = json.loads((workdir / "best" / "summary.json").read_text())
  assert best["eval_accuracy"] == pytest.approx(objectives[0], rel=1e-12)

  # The same command again has nothing left to do.
  again = run_cli(FIXTURE, workdir, "--workers=2", "--config.num_train_steps=6")
  assert again.returncode == 0, again.stderr
  assert read_csv(workdir / "results.csv") == rows
  assert "starts" not in again.stdout


def test_tpe_sweep_over_ranges(tmp_path, monkeypatch, capsys):
  monkeypatch.syspath_prepend(str(tmp_path))
  module = write_module(
      tmp_path,
      "Sweep(num_trials=3, params={"
      "'learning_rate': LogUniform(0.01, 0.5), "
      "'model.width': IntRange(2, 6), 'optimizer': ['a', 'b']})",
  )
  workdir = tmp_path / "sweep"
  status, _, err = run_main(capsys, module, workdir, "--seed=7")
  assert status == 0, err
  rows = read_csv(workdir / "results.csv")
  assert len(rows) == 3 and {r["status"] for r in rows} == {"COMPLETE"}
  for r in rows:
    lr, width = float(r["learning_rate"]), int(r["model.width"])
    assert 0.01 <= lr <= 0.5 and 2 <= width <= 6 and r["optimizer"] in ("a", "b")
    want = expected_accuracy(learning_rate=lr, model__width=width)
    assert float(r["eval_accuracy"]) == pytest.approx(want, rel=1e-9)
  assert is_png(workdir / "plots" / "objective_vs_model.width.png")


def test_killed_sweep_resumes_where_it_stopped(tmp_path):
  workdir = tmp_path / "sweep"
  flags = ["--stale_after=1.5", "--config.step_sleep=0.1"]
  proc = subprocess.Popen(
      sweep_cmd(FIXTURE, workdir, *flags),
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.time() + 60
    while time.time() < deadline:  # two trials done, the third has a checkpoint
      done = [d for d in (workdir / "trials").glob("*") if (d / "summary.json").exists()]
      running = [
          d
          for d in (workdir / "trials").glob("*")
          if (d / "checkpoints" / "ckpt.json").exists() and d not in done
      ]
      if len(done) == 2 and running:
        break
      time.sleep(0.05)
    else:
      pytest.fail("the sweep did not reach two finished trials")
  finally:
    proc.kill()
    proc.wait()
  [interrupted] = running
  first_two = {d.name: (d / "summary.json").stat().st_mtime_ns for d in done}
  time.sleep(0.5)  # the orphaned trial is killed with its worker: nothing more gets written
  before = (interrupted / "metrics.jsonl").read_text()
  time.sleep(0.3)
  assert (interrupted / "metrics.jsonl").read_text() == before

  again = run_cli(FIXTURE, workdir, *flags)
  assert again.returncode == 0, again.stderr
  rows = read_csv(workdir / "results.csv")
  assert len(rows) == 4 and {r["status"] for r in rows} == {"COMPLETE"}
  assert len({(r["learning_rate"], r["batch_size"]) for r in rows}) == 4
  for name, mtime in first_two.items():  # not rerun
    assert (workdir / "trials" / name / "summary.json").stat().st_mtime_ns == mtime
    assert start_count(workdir / "trials" / name) == 1
  resumed = [r for r in rows if r["workdir"] == f"trials/{interrupted.name}"]
  assert len(resumed) == 1 and resumed[0]["note"] == f"resumed trial {interrupted.name}"
  summary = json.loads((interrupted / "summary.json").read_text())
  assert summary["resumed_from"] > 0 and start_count(interrupted) == 2
  for r in rows:
    want = expected_accuracy(
        learning_rate=float(r["learning_rate"]), batch_size=int(r["batch_size"])
    )
    assert float(r["eval_accuracy"]) == pytest.approx(want, rel=1e-9)


def test_interrupted_sweep_releases_its_trial(tmp_path):
  """SIGTERM (or Ctrl-C) stops the running trial and queues it: the rerun resumes it at once."""
  workdir = tmp_path / "sweep"
  flags = ["--stale_after=600", "--num_trials=1", "--config.step_sleep=0.1"]
  proc = subprocess.Popen(
      sweep_cmd(FIXTURE, workdir, *flags),
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
  )
  ckpt = workdir / "trials" / "0" / "checkpoints" / "ckpt.json"
  deadline = time.time() + 60
  while not ckpt.exists() and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 130, proc.stderr.read()
  again = run_cli(FIXTURE, workdir, *flags, timeout=60)  # no wait for a stale heartbeat
  assert again.returncode == 0, again.stderr
  [row] = read_csv(workdir / "results.csv")
  assert row["status"] == "COMPLETE" and row["workdir"] == "trials/0"
  assert json.loads((workdir / "trials/0/summary.json").read_text())["resumed_from"] > 0


def test_failed_trials_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
  monkeypatch.syspath_prepend(str(tmp_path))
  # The metric in its validation_ spelling: the table and the objective read as eval_loss.
  module = write_module(
      tmp_path,
      "Sweep(metric='validation_loss', mode='min', sampler='grid', "
      "params={'learning_rate': [0.1, 0.3], 'fail': [False, True]})",
  )
  workdir = tmp_path / "sweep"
  status, _, err = run_main(
      capsys, module, workdir, f'--storage={tmp_path / "journal.log"}', "--workers=4"
  )
  assert status == 0, err
  rows = read_csv(workdir / "results.csv")
  assert [r["status"] for r in rows] == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
  assert [r["learning_rate"] for r in rows[:2]] == ["0.3", "0.1"]  # min mode: lowest loss first
  for r in rows[:2]:
    config = fx.get_config()
    config.learning_rate = float(r["learning_rate"])
    assert float(r["eval_loss"]) == pytest.approx(fx.expected_loss(config, 10), rel=1e-9)
    assert r["fail"] == "False"
  for r in rows[2:]:
    assert r["fail"] == "True" and r["eval_loss"] == ""
    assert r["note"] == "exit 3: fixture: failing as asked (config.fail=true)"
  assert not (workdir / "study.db").exists() and (tmp_path / "journal.log").stat().st_size > 0


def test_all_trials_failing_exits_non_zero(tmp_path, capsys):
  workdir = tmp_path / "sweep"
  status, out, _ = run_main(capsys, FIXTURE, workdir, "--num_trials=1", "--config.fail=true")
  assert status == 1 and "no trial completed" in out
  assert [r["status"] for r in read_csv(workdir / "results.csv")] == ["FAIL"]


def test_two_processes_split_one_study(tmp_path):
  """Two sweeps (as on two machines: own workdirs) on one storage run each trial once."""
  storage = f'sqlite:///{tmp_path / "shared.db"}'
  dirs = [tmp_path / "a", tmp_path / "b"]
  procs = [
      subprocess.Popen(
          sweep_cmd(FIXTURE, d, f"--storage={storage}", "--config.step_sleep=0.2"),
          cwd=REPO,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for d in dirs
  ]
  for p in procs:
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
  ran = [sorted(int(t.name) for t in (d / "trials").iterdir()) for d in dirs]
  assert sorted(ran[0] + ran[1]) == [0, 1, 2, 3]  # disjoint, and nothing beyond the budget
  assert ran[0] and ran[1]
  for d in dirs:
    rows = read_csv(d / "results.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"COMPLETE"}
    assert len({(r["learning_rate"], r["batch_size"]) for r in rows}) == 4
    for t in (d / "trials").iterdir():
      assert start_count(t) == 1


def test_pruning_follows_the_median_rule(tmp_path, monkeypatch, capsys):
  """With one worker, a trial is pruned exactly when its curve is below the median of the
  completed trials: simulated here with the fixture's closed form (curves never cross)."""
  module = write_module(
      tmp_path,
      "Sweep(sampler='grid', params={'learning_rate': [0.4, 0.01], " "'optimizer': ['a', 'b']})",
  )
  workdir = tmp_path / "sweep"
  monkeypatch.syspath_prepend(str(tmp_path))
  status, _, err = run_main(
      capsys,
      module,
      workdir,
      "--prune",
      "--prune_startup_trials=1",
      "--config.num_train_steps=12",
      "--config.step_sleep=0.05",
  )
  assert status == 0, err
  rows = sorted(read_csv(workdir / "results.csv"), key=lambda r: int(r["trial"]))
  completed, expected = [], []
  for r in rows:  # one worker: trial n starts after trial n-1 ended
    good = r["learning_rate"] == "0.4"
    n_good = sum(completed)
    pruned = bool(completed) and not good and n_good >= len(completed) - n_good
    expected.append("PRUNED" if pruned else "COMPLETE")
    if not pruned:
      completed.append(good)
  assert [r["status"] for r in rows] == expected
  for r in rows:
    if r["status"] == "PRUNED":  # stopped early: its run never reached the last step
      steps = [json.loads(line)["step"] for line in open(workdir / r["workdir"] / "metrics.jsonl")]
      assert max(steps) < 12 and not (workdir / r["workdir"] / "summary.json").exists()
      assert r["note"].startswith("pruned at step")


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sweep_src, flags, message",
    [
        (
            "Sweep(params={})",
            [],
            "empty search space: the sweep defines no parameters; valid keys: "
            "batch_size, eval_every_steps, fail, learning_rate, model.width",
        ),
        (
            "Sweep(params={'model.depth': [1, 2]})",
            [],
            "unknown config key 'model.depth'; valid keys:",
        ),
        ("Sweep(params={'seed': [1, 2]})", ["--config.sed=3"], "unknown config key 'sed'"),
        (
            "Sweep(sampler='grid', params={'seed': [1, 2]})",
            ["--storage=foo://nowhere"],
            "cannot open storage 'foo://nowhere'",
        ),
        (
            "Sweep(sampler='grid', params={'seed': [1, 2]})",
            ["--storage=/no/such/dir/journal.log"],
            "directory /no/such/dir does not exist",
        ),
        (
            "Sweep(params={'learning_rate': LogUniform(1e-3, 1.0)})",
            ["--sampler=grid"],
            "grid sampler: parameter 'learning_rate' is a continuous range (LogUniform)",
        ),
        (
            "Sweep(params={'learning_rate': Uniform(0.1, 0.2)})",
            [],
            "tpe sampler: give --num_trials",
        ),
        ("Sweep(params={'seed': [1, 2]})", ["--config.seed"], "bad flag '--config.seed'"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, monkeypatch, capsys, sweep_src, flags, message):
  monkeypatch.syspath_prepend(str(tmp_path))
  module = write_module(tmp_path, sweep_src)
  assert cli.main([module, f'--workdir={tmp_path / "w"}', *flags]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err


def test_unknown_module_and_sampler_from_the_command_line(tmp_path):
  proc = run_cli("experiments.no_such_experiment", tmp_path / "w")
  assert proc.returncode == 2
  assert "error: unknown experiment module 'experiments.no_such_experiment'" in proc.stderr
  proc = run_cli(FIXTURE, tmp_path / "w", "--sampler=anneal")
  assert proc.returncode == 2 and "invalid choice: 'anneal'" in proc.stderr
  module_without_space = "jaxmodels.sweep.space"
  proc = run_cli(module_without_space, tmp_path / "w")
  assert proc.returncode == 2 and "defines no get_config()" in proc.stderr


def test_resuming_with_other_settings_is_refused(tmp_path, capsys):
  workdir = tmp_path / "w"
  args = [FIXTURE, f"--workdir={workdir}", "--num_trials=1", *FAST]
  assert cli.main(args + ["--config.num_train_steps=2"]) == 0
  assert cli.main(args + ["--config.num_train_steps=3"]) == 2
  assert "was started with overrides=['num_train_steps=2']" in capsys.readouterr().err


def test_a_study_that_stored_the_validation_metric_resumes(tmp_path, capsys):
  import optuna

  workdir = tmp_path / "w"
  args = [FIXTURE, f"--workdir={workdir}", *FAST]
  assert cli.main(args + ["--num_trials=1"]) == 0
  study = optuna.load_study(study_name=FIXTURE, storage=f"sqlite:///{workdir / 'study.db'}")
  study.set_user_attr("metric", "validation_accuracy")
  assert cli.main(args + ["--num_trials=2"]) == 0, capsys.readouterr().err
  assert len(read_csv(workdir / "results.csv")) == 2


def test_without_the_sweep_extra_the_command_names_it(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
  assert cli.main([FIXTURE, f'--workdir={tmp_path / "w"}']) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: sweeps need the sweep extra (optuna is not installed)")
  assert not (tmp_path / "w").exists()


# --- before the first trial: the pre-check ---------------------------------------------------


def assert_nothing_written(workdir: Path) -> None:
  assert not workdir.exists(), sorted(p.name for p in workdir.rglob("*"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--config.validation_size=0"],
            "the objective eval_accuracy is never recorded, because the data of "
            "tests.sweep_fixture_experiment has no validation split (its evaluated splits: "
            "test). The config key validation_size holds part of the train split out as the "
            "validation split: add --config.validation_size=N to the sweep command with "
            f"0 < N < {fx.NUM_TRAIN} (its train split has {fx.NUM_TRAIN} examples)",
        ),
        (
            ["--config.validation_size=500"],
            "tests.sweep_fixture_experiment.get_data fails: ValueError: validation_size must be "
            f"in [0, {fx.NUM_TRAIN}); got 500",
        ),
        (["--config.seed=abc"], "flag --config.seed=abc:"),
    ],
)
def test_a_sweep_no_trial_can_run_stops_before_its_first_trial(tmp_path, capsys, flags, message):
  workdir = tmp_path / "sweep"
  status, _, err = run_main(capsys, FIXTURE, workdir, *flags)
  assert status == 2 and err.startswith("error: the sweep cannot start: a trial (")
  assert message in err
  assert err.count("\n") == 1  # one paragraph
  assert_nothing_written(workdir)


def test_a_test_metric_needs_no_validation_split(tmp_path, monkeypatch, capsys):
  monkeypatch.syspath_prepend(str(tmp_path))
  module = write_module(
      tmp_path,
      "Sweep(metric='test_accuracy', sampler='grid', params={'learning_rate': [0.1]})",
  )
  status, _, err = run_main(capsys, module, tmp_path / "w", "--config.validation_size=0")
  assert status == 0, err
  [row] = read_csv(tmp_path / "w" / "results.csv")
  assert float(row["test_accuracy"]) == pytest.approx(expected_accuracy(learning_rate=0.1))


def write_engine_module(tmp_path: Path, sweep_src: str) -> str:
  """An engine experiment (digits_mlp's config, data, model and task) with its own space."""
  name = f"sweep_engine_{uuid.uuid4().hex[:8]}"
  (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
      from experiments.digits_mlp import get_config, get_data, get_model, get_task
      from jaxmodels.sweep import Choice, IntRange, LogUniform, Sweep, Uniform

      def get_sweep():
        return {sweep_src}
      """))
  return name


@pytest.mark.parametrize(
    "sweep_src, flags, message",
    [
        (
            "Sweep(num_trials=2, params={'model.dropout_rate': Uniform(0.0, 1.0)})",
            [],
            "a trial with model.dropout_rate=1.0 (a bound of the search space in get_sweep(): "
            "narrow it) with --config.synthetic_data=true would fail: "
            "config.model.dropout_rate=1.0 must be in [0, 1).",
        ),
        (
            "Sweep(sampler='grid', params={'batch_size': [32, 30]})",
            ["--config.grad_accum_steps=4"],
            "a trial with batch_size=30 (a choice of the search space",
        ),
        (
            "Sweep(sampler='grid', params={'learning_rate': [0.01]})",
            ["--config.warmup_steps=-1"],
            "a trial (learning_rate=0.01) with --config.synthetic_data=true "
            "--config.warmup_steps=-1 would fail: config.warmup_steps",
        ),
    ],
)
def test_an_engine_config_no_trial_can_run_stops_the_sweep(
    tmp_path, monkeypatch, capsys, sweep_src, flags, message
):
  monkeypatch.syspath_prepend(str(tmp_path))
  module = write_engine_module(tmp_path, sweep_src)
  workdir = tmp_path / "sweep"
  status, _, err = run_main(capsys, module, workdir, "--config.synthetic_data=true", *flags)
  assert status == 2 and message in err, err
  assert_nothing_written(workdir)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  """The digits dataset prepared from its tiny fixture."""
  from jaxmodels.data import prepare, testing

  root = tmp_path_factory.mktemp("data")
  testing.write_raw("digits", str(root / "manual"))
  prepare.prepare("digits", str(root / "tfds"), str(root / "manual"), verify=False, log=print)
  return str(root / "tfds")


def test_the_real_data_layer_tells_the_pre_check_its_splits(digits_dir, tmp_path, capsys):
  from jaxmodels import data

  train = data.load("digits", data_dir=digits_dir).num_examples("train")
  workdir = tmp_path / "sweep"
  status, _, err = run_main(
      capsys, "experiments.digits_mlp", workdir, f"--config.data_dir={digits_dir}"
  )
  assert status == 2
  assert "the data of experiments.digits_mlp has no validation split" in err
  assert f"--config.validation_size=N to the sweep command with 0 < N < {train}" in err
  status, _, err = run_main(
      capsys,
      "experiments.digits_mlp",
      workdir,
      f"--config.data_dir={digits_dir}",
      "--config.validation_size=5000",
  )
  assert status == 2
  assert f"validation_size=5000: the train split of digits has {train} examples" in err
  assert_nothing_written(workdir)

  # A size the train split has passes, without reading the examples.
  module, config, sweep = runner.load_experiment("experiments.digits_mlp")
  overrides = {"data_dir": digits_dir, "validation_size": "10"}
  precheck.check(module, "experiments.digits_mlp", config, sweep, overrides, lambda c: 1)


def test_split_sizes_from_the_metadata_are_what_load_serves(digits_dir):
  from jaxmodels import data

  for options in ({}, {"validation_size": 10}):
    loaded = data.load("digits", data_dir=digits_dir, **options)
    with data.splits_only():
      described = data.load("digits", data_dir=digits_dir, **options)
    assert described.eval_splits == loaded.eval_splits
    for split in ("train", *loaded.eval_splits):
      assert described.num_examples(split) == loaded.num_examples(split)
  with pytest.raises(data.DataOptionError, match=r"validation_size=0.5|hold out 1 to"):
    with data.splits_only():
      data.load("digits", data_dir=digits_dir, validation_size=10**6)


def test_the_points_checked_cover_every_bound_and_choice():
  sweep = Sweep(
      params={
          "learning_rate": LogUniform(1e-4, 1e-1),
          "batch_size": Choice([16, 32, 64]),
          "model.width": IntRange(2, 9, step=3),
      }
  )
  assert precheck.points(sweep) == [
      {"learning_rate": 1e-4, "batch_size": 16, "model.width": 2},
      {"learning_rate": 1e-1, "batch_size": 16, "model.width": 2},
      {"learning_rate": 1e-4, "batch_size": 32, "model.width": 2},
      {"learning_rate": 1e-4, "batch_size": 64, "model.width": 2},
      {"learning_rate": 1e-4, "batch_size": 16, "model.width": 8},
  ]


def test_more_workers_than_cores_is_a_warning(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(resources, "available_cores", lambda: [0])
  monkeypatch.setattr(resources, "detect_gpus", lambda: [])
  status, _, err = run_main(capsys, FIXTURE, tmp_path / "w", "--num_trials=2", "--workers=2")
  assert status == 0, err
  assert err.count("warning: --workers=2 is more than the 1 CPU core(s) this process may use") == 1
  status, _, err = run_main(capsys, FIXTURE, tmp_path / "w2", "--num_trials=1", "--workers=1")
  assert status == 0 and "warning" not in err


# --- one study per sweep directory -----------------------------------------------------------


def test_a_second_study_in_a_sweep_directory_is_refused(tmp_path, capsys):
  workdir = tmp_path / "sweep"
  assert run_main(capsys, FIXTURE, workdir, "--num_trials=1")[0] == 0
  summary = workdir / "trials" / "0" / "summary.json"
  before = (summary.read_bytes(), (workdir / "results.csv").read_bytes())

  status, _, err = run_main(capsys, FIXTURE, workdir, "--num_trials=1", "--study_name=other")
  assert status == 2
  assert f"{workdir} holds the sweep of study '{FIXTURE}'" in err
  assert "study 'other' needs a --workdir of its own" in err
  assert sorted(p.name for p in (workdir / "trials").iterdir()) == ["0"]  # nothing moved aside
  assert (summary.read_bytes(), (workdir / "results.csv").read_bytes()) == before
  # What the message advises: a directory of its own, and the storage shared if wanted.
  shared = f"--storage=sqlite:///{workdir / 'study.db'}"
  other = tmp_path / "other"
  assert run_main(capsys, FIXTURE, other, "--num_trials=1", "--study_name=other", shared)[0] == 0
  assert [r["workdir"] for r in read_csv(other / "results.csv")] == ["trials/0"]

  # The study of the directory resumes, and its table points at its own runs.
  assert run_main(capsys, FIXTURE, workdir, "--num_trials=2")[0] == 0
  rows = read_csv(workdir / "results.csv")
  assert sorted(r["workdir"] for r in rows) == ["trials/0", "trials/1"]
  for r in rows:
    run = json.loads((workdir / r["workdir"] / "summary.json").read_text())
    assert float(r["eval_accuracy"]) == run["eval_accuracy"]
    config = json.loads((workdir / r["workdir"] / "config.json").read_text())
    assert (config["learning_rate"], config["batch_size"]) == (
        float(r["learning_rate"]),
        int(r["batch_size"]),
    )


def test_a_sweep_directory_without_sweep_json_belongs_to_the_study_of_its_trials(tmp_path, capsys):
  workdir = tmp_path / "sweep"
  assert run_main(capsys, FIXTURE, workdir, "--num_trials=1")[0] == 0
  (workdir / "sweep.json").unlink()  # as a sweep directory made before sweep.json
  status, _, err = run_main(capsys, FIXTURE, workdir, "--num_trials=1", "--study_name=other")
  assert status == 2 and "holds trial directories (trials/0) that are not trials of study" in err
  assert not (workdir / "sweep.json").exists()
  assert run_main(capsys, FIXTURE, workdir, "--num_trials=2")[0] == 0  # its own study: claimed
  assert json.loads((workdir / "sweep.json").read_text())["study_name"] == FIXTURE


def test_a_study_created_again_does_not_take_the_old_trials(tmp_path, capsys):
  workdir = tmp_path / "sweep"
  assert run_main(capsys, FIXTURE, workdir, "--num_trials=1")[0] == 0
  (workdir / "study.db").unlink()
  status, _, err = run_main(capsys, FIXTURE, workdir, "--num_trials=1")
  assert status == 2
  assert f"holds trial directories (trials/0) that are not trials of study '{FIXTURE}'" in err
  assert sorted(p.name for p in (workdir / "trials").iterdir()) == ["0"]
