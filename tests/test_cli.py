"""Bad input on the command line: non-zero exit, a message naming the culprit and the fix, and
nothing already saved is lost."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.synthetic_data=True",
    "--config.model.features=(4,)",
    "--config.model.dense_features=8",
    "--config.batch_size=8",
    "--config.num_train_steps=4",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.eval_every_steps=4",
    "--config.schedule=constant",
]


def run(args, module="experiments.fashion_mnist_cnn", env=None):
  full_env = dict(os.environ, JAXMODELS_HOST_DEVICES="2", **(env or {}))
  full_env.pop("XLA_FLAGS", None)
  return subprocess.run(
      [sys.executable, "-m", module, *args],
      cwd=ROOT,
      env=full_env,
      capture_output=True,
      text=True,
      timeout=300,
  )


def snapshot(workdir):
  """Hash of every file under workdir except the append-only logs a run may extend."""
  digest = {}
  for dirpath, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(dirpath, f)
      with open(path, "rb") as fh:
        digest[os.path.relpath(path, workdir)] = hashlib.sha256(fh.read()).hexdigest()
  return digest


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained"))
  result = run([f"--workdir={workdir}", *TINY])
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


BAD = [
    # (arguments, words the message must contain)
    (["--config.batchsize=8"], ["--config.batchsize", "unknown config key", "batch_size"]),
    (["--config.model.feature=(4,)"], ["model.feature", "model.features"]),
    (["--config.batch_size=big"], ["batch_size", "int"]),
    (["--config.learning_rate=fast"], ["learning_rate", "float"]),
    (["--config.synthetic_data=maybe"], ["synthetic_data", "bool"]),
    (["--config.batch_size=0"], ["batch_size=0", "positive"]),
    (["--config.batch_size=-8"], ["batch_size=-8", "positive"]),
    (["--config.num_train_steps=0"], ["num_train_steps=0", "positive"]),
    (["--config.log_every_steps=0"], ["log_every_steps=0", "positive"]),
    (["--config.checkpoint_every_steps=-1"], ["checkpoint_every_steps", "positive"]),
    (["--config.keep_checkpoints=0"], ["keep_checkpoints", "positive"]),
    (["--config.learning_rate=-0.1"], ["learning_rate", "> 0"]),
    (["--config.learning_rate=0"], ["learning_rate", "> 0"]),
    (["--config.warmup_steps=-3"], ["warmup_steps", ">= 0"]),
    (["--config.grad_clip_norm=-1.0"], ["grad_clip_norm", ">= 0"]),
    (["--config.eval_batch_size=-2"], ["eval_batch_size", ">= 0"]),
    (["--config.optimizer=adamm"], ["optimizer", "adamm", "adamw"]),
    (["--config.schedule=linear"], ["schedule", "linear", "warmup_cosine"]),
    (["--config.parallelism=dp"], ["parallelism", "'dp'", "pmap"]),
    (["--config.batch_size=7"], ["batch_size=7", "does not divide", "2 devices"]),
    (["--config.eval_batch_size=5"], ["eval_batch_size=5", "does not divide"]),
    (["--config.parallelism=mesh", "--config.fsdp=3"], ["fsdp=3", "divide"]),
    (["--num_processes=2"], ["--coordinator_address", "--process_id"]),
    (["--config.warmup_steps=4"], ["warmup_steps=4", "less than config.num_train_steps=4"]),
    (["--config.model.features=abc"], ["model.features='abc'", "tuple of int", "'(32, 64)'"]),
    (["--config.model.dense_features=0"], ["model.dense_features=0", "positive integer"]),
    (["--config.batch_size", "16"], ["write --config.batch_size=16."]),
    (["stray"], ["unexpected argument 'stray'"]),
    (["--config.synthetic_data", "True"], ["join them with '=': --config.synthetic_data=True"]),
    (["--bogus=1"], ["Unknown command line flag 'bogus'", "--workdir=DIR"]),
]


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_config_is_a_clear_error_and_loses_nothing(trained, tmp_path, args, words):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir)
  before = snapshot(workdir)
  result = run([f"--workdir={workdir}", *TINY, *args])
  assert result.returncode != 0
  message = result.stderr + result.stdout
  for word in words:
    assert word in message, message[-2000:]
  assert "Traceback" not in message, message[-3000:]
  assert snapshot(workdir) == before


FRESH_BAD = [
    ["--config.batch_size=0"],
    ["--config.model.features=abc"],
    ["--config.batch_size", "16"],
    ["--bogus=1"],
    ["stray"],
]


@pytest.mark.parametrize("args", FRESH_BAD, ids=" ".join)
def test_bad_input_creates_no_workdir(tmp_path, args):
  workdir = tmp_path / "new" / "w"
  result = run([f"--workdir={workdir}", *TINY, *args])
  assert result.returncode == 2
  assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
  assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "module,arg,words",
    [
        ("experiments.fashion_mnist_resnet", "--config.model.stem=foo", ["unknown stem 'foo'"]),
        ("experiments.imdb_lstm", "--config.model.cell=gruu", ["unknown cell 'gruu'", "lstm"]),
    ],
)
def test_a_model_option_the_model_lacks_is_one_paragraph(tmp_path, module, arg, words):
  workdir = tmp_path / "w"
  tiny = ["--config.synthetic_data=True", "--config.num_train_steps=2", "--config.warmup_steps=0"]
  result = run([f"--workdir={workdir}", *tiny, "--config.batch_size=8", arg], module=module)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.startswith("error: config.model: "), result.stderr[-3000:]
  assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
  for word in words:
    assert word in result.stderr
  assert not workdir.exists()


def test_a_data_dir_that_is_a_file_leaves_no_workdir(tmp_path):
  path = tmp_path / "afile"
  path.write_text("keep me")
  workdir = tmp_path / "w"
  result = run(
      [f"--workdir={workdir}", f"--config.data_dir={path}"], module="experiments.digits_mlp"
  )
  assert result.returncode == 2
  assert f"error: the data dir {path} is a file, not a directory" in result.stderr
  assert "Traceback" not in result.stderr
  assert not workdir.exists() and path.read_text() == "keep me"


def test_a_damaged_config_json_is_named_and_allow_config_change_rewrites_it(trained, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(trained, workdir)
  (workdir / "config.json").write_text('{"seed": 0, "batch_si')  # cut off by a full disk
  before = snapshot(workdir)
  result = run([f"--workdir={workdir}", *TINY])
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.startswith(f"error: {workdir}/config.json is not valid JSON")
  assert "--allow_config_change" in result.stderr
  assert snapshot(workdir) == before
  result = run([f"--workdir={workdir}", *TINY, "--allow_config_change"])
  assert result.returncode == 0 and "already finished 4 steps" in result.stdout
  assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == 4


def test_missing_workdir_flag():
  result = run(TINY)
  assert result.returncode != 0
  assert "workdir" in result.stderr


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "afile"
  path.write_text("keep me")
  result = run([f"--workdir={path}", *TINY])
  assert result.returncode != 0
  assert "is a file" in result.stderr and str(path) in result.stderr
  assert path.read_text() == "keep me"


def test_unwritable_workdir():
  result = run(["--workdir=/proc/jaxmodels_cannot_write_here", *TINY])
  assert result.returncode != 0
  assert "not writable" in result.stderr and "/proc/jaxmodels_cannot_write_here" in result.stderr


def test_unknown_experiment():
  result = run(["--workdir=/tmp/x"], module="experiments.no_such_experiment")
  assert result.returncode != 0
  assert "experiments.no_such_experiment" in result.stderr


def test_resume_with_changed_config_lists_the_keys(trained, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir)
  before = snapshot(workdir)
  result = run(
      [f"--workdir={workdir}", *TINY, "--config.learning_rate=0.5", "--config.num_train_steps=6"]
  )
  assert result.returncode != 0
  assert "learning_rate" in result.stderr and "--allow_config_change" in result.stderr
  assert snapshot(workdir) == before


def test_summary_counts_startup_from_the_process_start(trained):
  summary = json.load(open(os.path.join(trained, "summary.json")))
  # From the process's start (interpreter, imports, jemalloc restart) to the first finished
  # step: it holds that step's compilation, the only one of this fixed-shape run.
  assert summary["startup_s"] > 0
  assert summary["startup_s"] >= summary["compile_s"]


def test_finished_run_is_not_retrained(trained, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir)
  before = snapshot(workdir)
  result = run([f"--workdir={workdir}", *TINY])
  assert result.returncode == 0
  assert "already finished" in result.stdout
  assert snapshot(workdir) == before


def test_predict_on_a_trained_workdir(trained):
  result = run([f"--workdir={trained}", "--num_examples=3"], module="jaxmodels.predict")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.count("predicted") == 3


def test_predict_on_a_directory_that_is_not_a_run(tmp_path):
  result = run([f"--workdir={tmp_path}"], module="jaxmodels.predict")
  assert result.returncode == 2
  assert "run.json" in result.stderr and str(tmp_path) in result.stderr


def test_prompt_outside_the_vocabulary_names_the_characters():
  from jaxmodels.predict import encode_prompt

  assert encode_prompt("ab", ["a", "b", "c"]).tolist() == [[0, 1]]
  with pytest.raises(ValueError, match=r"outside the model's vocabulary: \['Z', 'é'\]"):
    encode_prompt("abZé", ["a", "b", "c"])
  with pytest.raises(ValueError, match="empty"):
    encode_prompt("", ["a"])


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--temperature=-1", "--temperature=-1.0: must be >= 0 (0 is greedy)."),
        ("--top_k=-3", "--top_k=-3: must be >= 0"),
        ("--num_tokens=-5", "--num_tokens=-5: must be >= 1"),
        ("--num_examples=0", "--num_examples=0: must be >= 1"),
        ("--split=dev", "--split=dev: synthetic data has no split 'dev'; its splits: train,"),
    ],
)
def test_predict_refuses_out_of_range_flags(trained, flag, message):
  result = run([f"--workdir={trained}", flag], module="jaxmodels.predict")
  assert result.returncode == 2
  assert result.stderr.startswith("error: ") and message in result.stderr
  assert "Traceback" not in result.stderr


def test_predict_caps_the_examples_at_the_split_size(trained):
  result = run([f"--workdir={trained}", "--num_examples=1000000000"], module="jaxmodels.predict")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.count("predicted") == 100  # the synthetic eval split holds 100


def test_predict_on_a_run_without_checkpoints_creates_nothing(trained, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(trained, workdir)
  shutil.rmtree(workdir / "checkpoints")
  result = run([f"--workdir={workdir}"], module="jaxmodels.predict")
  assert result.returncode == 2 and "holds no checkpoints/ yet; train first" in result.stderr
  assert not (workdir / "checkpoints").exists()


@pytest.mark.parametrize("name", ["run.json", "config.json"])
def test_predict_names_a_damaged_workdir_file(trained, tmp_path, name):
  workdir = tmp_path / "w"
  shutil.copytree(trained, workdir)
  (workdir / name).write_text("{")
  result = run([f"--workdir={workdir}"], module="jaxmodels.predict")
  assert result.returncode == 2
  assert result.stderr.startswith(f"error: {workdir}/{name} is not valid JSON")
  assert "run the training command again to rewrite it" in result.stderr
