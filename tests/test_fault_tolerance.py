"""kill -9, SIGTERM and corrupt checkpoints: a resumed run ends bit-identical to an uninterrupted
one, and nothing half-written is ever used."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
TINY = [
    "--config.synthetic_data=True",
    "--config.model.features=(4,)",
    "--config.model.dense_features=8",
    "--config.batch_size=8",
    "--config.log_every_steps=5",
    "--config.checkpoint_every_steps=5",
    "--config.eval_every_steps=30",
    "--config.schedule=cosine",
    "--config.progress_bar=False",
]


def _env():
  env = dict(os.environ, JAXMODELS_HOST_DEVICES="2")
  env.pop("XLA_FLAGS", None)
  return env


def command(workdir, steps=STEPS):
  return [
      sys.executable,
      "-m",
      "experiments.fashion_mnist_cnn",
      f"--workdir={workdir}",
      *TINY,
      f"--config.num_train_steps={steps}",
  ]


def run(workdir, steps=STEPS):
  return subprocess.run(
      command(workdir, steps), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
  )


def final_params(workdir):
  import orbax.checkpoint as ocp

  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = mngr.latest_step()
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  import jax

  return step, jax.tree_util.tree_leaves(out["state"]["params"])


def assert_same_run(a, b):
  step_a, params_a = final_params(a)
  step_b, params_b = final_params(b)
  assert step_a == step_b == STEPS
  for x, y in zip(params_a, params_b):
    np.testing.assert_array_equal(x, y)
  sa = json.load(open(os.path.join(a, "summary.json")))
  sb = json.load(open(os.path.join(b, "summary.json")))
  for key in ("train_loss", "test_loss", "test_accuracy"):
    assert sa[key] == sb[key], key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  result = run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.parametrize("kills", [5, pytest.param(20, marks=pytest.mark.slow)])
def test_kill_9_at_random_moments_then_resume_is_bit_identical(reference, tmp_path, kills):
  workdir = str(tmp_path / "killed")
  rng = random.Random(0)
  for _ in range(kills):
    proc = subprocess.Popen(
        command(workdir), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(rng.uniform(2.0, 8.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  result = run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_same_run(reference, workdir)


def test_sigterm_saves_a_checkpoint_and_resumes_identically(reference, tmp_path):
  workdir = str(tmp_path / "term")
  proc = subprocess.Popen(
      command(workdir),
      cwd=ROOT,
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 120
  while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics)):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
  line = [x for x in out.splitlines() if x.startswith("Stopped by signal")]
  assert line, out[-3000:]
  stopped_at = int(line[0].split(" at step ")[1].split(";")[0])
  step, _ = final_params(workdir)
  assert step == stopped_at < STEPS
  result = run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_same_run(reference, workdir)


def _corrupt(checkpoint_dir):
  for dirpath, _, files in os.walk(checkpoint_dir):
    for f in files:
      path = os.path.join(dirpath, f)
      if os.path.getsize(path) > 16:
        with open(path, "r+b") as fh:
          fh.truncate(8)


def test_corrupt_latest_checkpoint_falls_back_to_an_older_one(reference, tmp_path):
  workdir = str(tmp_path / "corrupt")
  assert run(workdir).returncode == 0
  os.remove(os.path.join(workdir, "summary.json"))  # as if killed while writing the last step
  _corrupt(os.path.join(workdir, "checkpoints", str(STEPS)))
  result = run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"checkpoints/{STEPS} is unreadable" in result.stdout + result.stderr
  assert_same_run(reference, workdir)


def test_no_valid_checkpoint_is_a_clear_error(tmp_path):
  workdir = str(tmp_path / "broken")
  assert run(workdir, steps=10).returncode == 0
  for step in os.listdir(os.path.join(workdir, "checkpoints")):
    _corrupt(os.path.join(workdir, "checkpoints", step))
  result = run(workdir, steps=10)  # the same horizon: a new one is refused before any restore
  assert result.returncode == 2
  assert "none of the checkpoints" in result.stderr and "start over" in result.stderr
