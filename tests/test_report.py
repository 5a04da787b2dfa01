"""python -m jaxmodels.report: workdirs -> the README results table; seeds grouped; the README
rewritten only between its markers; bad input named."""

import json
import os
import subprocess
import sys

import pytest

from experiments import digits_mlp, mnist_mlp
from jaxmodels import report
from jaxmodels.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACHINE = {"cpu": "AMD EPYC", "cpus": 2, "platform": "cpu", "device_kind": "cpu", "num_devices": 2}


def fake_run(path, module=mnist_mlp, accuracy=0.953, seed=0, wall_s=21.4, record=True, **config):
  """A finished workdir as the engine leaves it: config.json, run.json, summary.json."""
  os.makedirs(path)
  c = module.get_config()
  c.seed = seed
  c.update(config)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config_lib.to_json(c))
  name = module.__name__
  with open(os.path.join(path, "run.json"), "w") as f:
    json.dump({"experiment": name}, f)
  summary = {"test_accuracy": accuracy, "test_loss": 0.2, "steps": 10, "wall_s": wall_s}
  if record:
    summary.update(
        total_wall_s=wall_s,
        experiment=name,
        command=f"python -m {name} --workdir={path} --config.seed={seed}",
        finished_at="2026-12-02T05:55:24+00:00",
        machine=MACHINE,
        versions={"jax": "0.10.2", "python": "3.11.7"},
    )
  with open(os.path.join(path, "summary.json"), "w") as f:
    json.dump(summary, f)
  return str(path)


def rows(paths):
  runs, skipped = report.read_runs(paths)
  assert not skipped, skipped
  return [report.row(g) for g in report.group(runs)]


def test_a_run_gives_its_row(tmp_path):
  path = fake_run(tmp_path / "mnist")
  (row,) = rows([path])
  assert row == {
      "experiment": "`mnist_mlp` (784-128-64-10, SGD 0.01, batch 64)",
      "command": f"`python -m experiments.mnist_mlp --workdir={path} --config.seed=0`",
      "result": "95.3% test accuracy",
      "wall time": "21 s",
      "date": "2026-12-02",
      "machine": "2-core CPU (AMD EPYC), jax 0.10.2",
  }


def test_a_changed_config_drops_the_description_and_synthetic_data_is_said(tmp_path):
  (row,) = rows([fake_run(tmp_path / "a", synthetic_data=True, wall_s=159.0)])
  assert row["experiment"] == "`mnist_mlp`, synthetic data"
  assert row["wall time"] == "2m39s"


def test_seeds_of_one_config_make_one_row_with_mean_and_spread(tmp_path):
  paths = [
      fake_run(tmp_path / f"s{seed}", accuracy=acc, seed=seed, wall_s=wall)
      for seed, acc, wall in ((2, 0.94, 30.0), (0, 0.92, 10.0), (1, 0.93, 20.0))
  ]
  other = fake_run(tmp_path / "lr", accuracy=0.5, learning_rate=0.1)
  digits = fake_run(tmp_path / "digits", module=digits_mlp, accuracy=0.978)
  grouped, lr_row, digits_row = rows(paths + [other, digits])
  # mean 0.93, sample std of (0.92, 0.93, 0.94) = 0.01
  assert grouped["result"] == (
      "93.0% ± 1.0% test accuracy (mean ± std over 3 seeds: 0, 1, 2; range 92.0% to 94.0%)"
  )
  assert grouped["command"].startswith(f"`python -m experiments.mnist_mlp --workdir={paths[1]} ")
  assert grouped["command"].endswith(report.PER_SEED)
  assert grouped["wall time"] == "20 s per seed (mean)"
  assert lr_row["result"] == "50.0% test accuracy" and lr_row["experiment"] == "`mnist_mlp`"
  assert digits_row["result"] == "97.8% on the 360 held-out test digits"


def test_keys_that_change_nothing_computed_still_group(tmp_path):
  a = fake_run(tmp_path / "a", seed=0, progress_bar=False, data_dir="/x")
  b = fake_run(tmp_path / "b", seed=1, log_every_steps=7)
  assert len(rows([a, b])) == 1


def test_a_run_from_before_a_config_key_existed_groups_with_one_at_its_default(tmp_path):
  a = fake_run(tmp_path / "a", seed=0)
  b = fake_run(tmp_path / "b", seed=1)
  with open(os.path.join(b, "config.json")) as f:
    older = json.load(f)
  del older["dp"]  # an engine without DP-SGD wrote no dp key
  with open(os.path.join(b, "config.json"), "w") as f:
    json.dump(older, f)
  assert len(rows([a, b])) == 1
  c = fake_run(tmp_path / "c", seed=2, dp=dict(older_dp_default(), l2_clip=3.0))
  assert len(rows([b, c])) == 2


def older_dp_default():
  return config_lib.base_config().dp.to_dict()


def test_a_run_that_recorded_no_command_gets_an_equivalent_one(tmp_path):
  path = fake_run(tmp_path / "old", record=False, seed=3, learning_rate=0.05, progress_bar=False)
  (row,) = rows([path])
  assert row["command"] == (
      f"`python -m experiments.mnist_mlp --workdir={path} --config.learning_rate=0.05 "
      "--config.seed=3`"
  )
  assert row["machine"] == "" and len(row["date"]) == 10  # the date summary.json was written


README = """# title

text before

<!-- results:begin -->
| experiment | command | result | wall time | date | machine |
|---|---|---|---|---|---|
| `fashion_mnist_cnn` (main job) | `make train` | 92.0% test | 2m39s | 2026-12-02 | 2-core CPU |
| `mnist_mlp` seed | `python -m experiments.mnist_mlp` | 95.3% test | 21 s | Nov 2026 | 2-core CPU |
| `mnist_mlp` tuned | see `experiments/mnist_mlp.py` | 98.6% test | 52 s | Nov 2026 | 2-core CPU |
| `cifar10_resnet` | | cannot be fetched offline | | | |
<!-- results:end -->

text after | with a pipe
"""


def test_readme_update_replaces_only_the_rows_of_the_runs_experiments(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text(README)
  mnist = fake_run(tmp_path / "mnist", accuracy=0.96)
  digits = fake_run(tmp_path / "digits", module=digits_mlp, accuracy=0.978)
  assert report.report([mnist, digits], markdown=False, readme=str(readme)) == 0
  text = readme.read_text()
  before, after = README.split(report.RESULTS_BEGIN)[0], README.split(report.RESULTS_END)[1]
  assert text.startswith(before + report.RESULTS_BEGIN) and text.endswith(
      report.RESULTS_END + after
  )
  table = text.split(report.RESULTS_BEGIN)[1].split(report.RESULTS_END)[0].strip().splitlines()
  assert [report.row_experiment(line) for line in table[2:]] == [
      "fashion_mnist_cnn",  # kept as it was
      "mnist_mlp",  # both old mnist_mlp rows replaced by the one run, in their place
      "cifar10_resnet",  # kept
      "digits_mlp",  # new: last
  ]
  assert table[2] == README.splitlines()[7] and table[4] == README.splitlines()[10]
  assert "96.0% test accuracy" in table[3] and "98.6%" not in text
  # Idempotent: the same runs give the same file.
  assert report.report([mnist, digits], markdown=False, readme=str(readme)) == 0
  assert readme.read_text() == text


@pytest.mark.parametrize(
    "content,words",
    [
        ("# no markers\n| a |\n", ["<!-- results:begin -->", "found 0 and 0"]),
        (report.RESULTS_END + "\n" + report.RESULTS_BEGIN + "\n", ["after it"]),
        (
            f"{report.RESULTS_BEGIN}\n| h |\n|---|\n| `x` | two |\n{report.RESULTS_END}\n",
            ["2 cells", "the table 6"],
        ),
    ],
)
def test_a_readme_without_usable_markers_is_named_and_left_unchanged(
    tmp_path, capsys, content, words
):
  readme = tmp_path / "README.md"
  readme.write_text(content)
  assert report.report([fake_run(tmp_path / "r")], readme=str(readme)) == 2
  err = capsys.readouterr().err
  assert str(readme) in err and all(w in err for w in words), err
  assert readme.read_text() == content


def test_bad_workdirs_are_skipped_with_their_reason(tmp_path, capsys):
  good = fake_run(tmp_path / "good")
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  damaged = fake_run(tmp_path / "damaged")
  with open(os.path.join(damaged, "summary.json"), "w") as f:
    f.write('{"test_acc')
  no_metric = tmp_path / "no_metric"
  fake_run(no_metric)
  (no_metric / "summary.json").write_text(
      json.dumps({"test_loss": 0.3, "experiment": "experiments.mnist_mlp"})
  )
  unknown = fake_run(tmp_path / "unknown", record=False)  # the experiment from run.json
  (tmp_path / "unknown" / "run.json").write_text('{"experiment": "experiments.nope"}')
  no_headline = fake_run(tmp_path / "no_headline", record=False)
  (tmp_path / "no_headline" / "run.json").write_text('{"experiment": "jaxmodels.tasks"}')
  paths = [good, str(unfinished), damaged, str(no_metric), unknown, no_headline]
  assert report.report(paths) == 0
  out, err = capsys.readouterr()
  assert out.count("`mnist_mlp`") == 1
  assert f"skipped {unfinished}: no summary.json" in err
  assert f"skipped {damaged}: {damaged}/summary.json is not valid JSON" in err
  assert "no_metric: summary.json has no number 'test_accuracy'" in err and "test_loss" in err
  assert "'experiments.nope' cannot be imported" in err
  assert "jaxmodels.tasks declares no HEADLINE; add `HEADLINE = Headline(metric, text)`" in err


def test_nothing_usable_is_an_error(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  assert report.report([str(tmp_path / "empty"), str(tmp_path / "missing")]) == 2
  err = capsys.readouterr().err
  assert "skipped" in err and "not a directory" in err
  assert "error: no finished workdir among 2 path(s)" in err


def test_the_report_reads_a_real_run(tmp_path):
  """A tiny synthetic run through the experiment's command line, then the report's."""
  workdir = str(tmp_path / "digits")
  env = dict(os.environ, JAXMODELS_HOST_DEVICES="1", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  train = [
      f"--workdir={workdir}",
      "--config.synthetic_data=True",
      "--config.model.hidden_sizes=(8,)",
      "--config.batch_size=8",
      "--config.num_train_steps=3",
      "--config.eval_every_steps=2",
      "--config.progress_bar=False",
  ]
  run = dict(cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  result = subprocess.run([sys.executable, "-m", "experiments.digits_mlp", *train], **run)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["experiment"] == "experiments.digits_mlp"
  assert summary["machine"]["cpus"] >= 1 and summary["versions"]["jax"]
  readme = tmp_path / "README.md"
  readme.write_text(f"{report.RESULTS_BEGIN}\n{report.RESULTS_END}\n")
  result = subprocess.run(
      [sys.executable, "-m", "jaxmodels.report", workdir, f"--update_readme={readme}"], **run
  )
  assert result.returncode == 0, result.stderr[-3000:]
  accuracy = f"{summary['test_accuracy']:.1%} on the 360 held-out test digits"
  command = "python -m experiments.digits_mlp " + " ".join(
      a if "(" not in a else f"'{a}'" for a in train
  )
  assert f"| `digits_mlp`, synthetic data | `{command}` | {accuracy} |" in result.stdout
  assert summary["finished_at"][:10] in result.stdout
  assert result.stdout.split("\n", 1)[1].strip() in readme.read_text()


@pytest.mark.parametrize(
    "seconds,text", [(9.4, "9 s"), (59.6, "1m00s"), (406, "6m46s"), (3930, "1h05m")]
)
def test_duration(seconds, text):
  assert report.duration(seconds) == text


def test_cpu_model_from_proc_cpuinfo(tmp_path):
  from jaxmodels.train import runinfo

  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n")
  assert runinfo.cpu_model(str(cpuinfo)) == "AMD EPYC 7B13"
  assert runinfo.cpu_model(str(tmp_path / "missing"))  # platform's name, never empty


def test_gpu_machine_cell():
  summary = {
      "machine": {
          "cpu": "Intel Xeon",
          "cpus": 16,
          "platform": "gpu",
          "device_kind": "NVIDIA H200",
          "num_devices": 1,
      },
      "versions": {"jax": "0.11.0"},
  }
  assert report.machine(summary) == "1x NVIDIA H200, 16-core CPU (Intel Xeon), jax 0.11.0"


@pytest.mark.parametrize(
    "load,wall_s,shared",
    [
        ([4.1, 3.9, 2.0], 300, 3.9),  # 5-minute average for a short run
        ([4.1, 2.4, 3.6], 300, None),
        ([2.5, 2.2, 3.5], 1200, 3.5),  # 15-minute average for a long run
        ([2.9, 2.6, 1.9], 1200, None),
    ],
)
def test_a_run_beside_other_jobs_says_so_in_its_wall_time(tmp_path, load, wall_s, shared):
  path = fake_run(tmp_path / "mnist", wall_s=wall_s)
  with open(os.path.join(path, "summary.json")) as f:
    summary = json.load(f)
  summary["machine"] = {**MACHINE, "load_average": load}
  with open(os.path.join(path, "summary.json"), "w") as f:
    json.dump(summary, f)
  assert report.shared_load(summary) == shared
  (row,) = rows([path])
  expected = report.duration(wall_s)
  if shared:
    expected += f", CPU shared (load average up to {shared:.1f} on 2 cores)"
  assert row["wall time"] == expected


def test_the_engine_records_the_load_average():
  from jaxmodels.train import runinfo

  load = runinfo.machine()["load_average"]
  assert len(load) == 3 and all(x >= 0 for x in load)
