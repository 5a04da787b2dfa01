"""The engine: parallel modes agree, resume is exact, the step compiles once, outputs read back."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import fashion_mnist_cnn
from jaxmodels import tasks
from jaxmodels.data import errors as data_errors, pipeline
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models.mlp import MLP
from jaxmodels.models.resnet import BasicBlock, ResNet
from jaxmodels.train import (
    base_config,
    checkpoint,
    config as config_lib,
    lock,
    loop,
    metrics,
    optim,
    parallel,
    steps,
)

DATA = SyntheticDataset("image_classification", image_shape=(8, 8, 1), num_classes=10)
TINY_RESNET = ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, num_filters=4, stem="cifar")
TINY_MLP = MLP(hidden_sizes=(16,))


def _run_steps(name, model, num_steps=4, batch_size=16, fsdp=1, grad_accum_steps=1):
  config = base_config()
  config.optimizer, config.learning_rate = "momentum", 0.05
  task = tasks.Classification(10)
  tx, schedule = optim.make_optimizer(config), optim.learning_rate_schedule(config)
  strategy = parallel.make(name, model, fsdp, grad_accum_steps)
  batches = DATA.train_batches(batch_size, seed=0)
  state = steps.init_state(model, task, tx, next(DATA.train_batches(batch_size, 0)), seed=0)
  train = strategy.train_fn(task, tx, schedule, state)
  dstate = strategy.put_state(state)
  losses = []
  for _ in range(num_steps):
    dstate, sums = train(dstate, strategy.put_batch(next(batches)))
    losses.append(metrics.reduce_sums([strategy.fetch(sums)])["loss"])
  return np.array(losses), strategy.get_state(dstate)


@pytest.mark.parametrize("model", [TINY_MLP, TINY_RESNET], ids=["mlp", "resnet_batchnorm"])
def test_pmap_mesh_and_one_device_agree(model):
  assert jax.device_count() == 8
  ref_losses, ref_state = _run_steps("none", model)
  for name, fsdp in [("pmap", 1), ("mesh", 1), ("mesh", 2)]:
    losses, state = _run_steps(name, model, fsdp=fsdp)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5, err_msg=f"{name}/{fsdp}")
    for a, b in zip(
        jax.tree_util.tree_leaves((state.params, state.model_state)),
        jax.tree_util.tree_leaves((ref_state.params, ref_state.model_state)),
    ):
      np.testing.assert_allclose(
          np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=f"{name}/{fsdp}"
      )


def test_pmap_reads_state_and_metrics_without_compiling_collectives(caplog):
  """Reading replica 0 through `x[0]` compiled one all-reduce over all devices per leaf; a state's
  worth of them back to back hung a two-process run. The host copies come from local shards."""
  strategy = parallel.make("pmap", TINY_MLP)
  state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int32(7)}
  placed = strategy.put_state(state)
  with jax.log_compiles(True), caplog.at_level("WARNING"):
    host, fetched = strategy.get_state(placed), strategy.fetch(placed)
  assert not [r for r in caplog.records if "ompil" in r.getMessage()], caplog.text
  for out in (host, fetched):
    assert isinstance(out["w"], np.ndarray) and out["step"].shape == ()
    np.testing.assert_array_equal(out["w"], state["w"])
    assert int(out["step"]) == 7


@pytest.mark.parametrize("name", ["none", "pmap", "mesh"])
def test_gradient_accumulation_equals_the_whole_batch(name):
  ref_losses, ref_state = _run_steps("none", TINY_MLP, batch_size=32)
  # 32 examples on 8 devices: 2 micro-batches of 2 each; on one device 4 of 8.
  accum = 4 if name == "none" else 2
  losses, state = _run_steps(name, TINY_MLP, batch_size=32, grad_accum_steps=accum)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
  for a, b in zip(
      jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(ref_state.params)
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_that_does_not_divide_is_a_clear_error(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="grad_accum_steps=3"):
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(grad_accum_steps=3), str(tmp_path))


def test_fsdp_shards_parameters():
  strategy = parallel.make("mesh", TINY_MLP, fsdp=4)
  params = {"w": np.zeros((64, 16), np.float32), "b": np.zeros((3,), np.float32)}
  placed = strategy.put_state(params)
  assert placed["w"].sharding.shard_shape((64, 16)) == (16, 16)
  assert placed["b"].sharding.shard_shape((3,)) == (3,)  # not divisible: replicated


def _tiny_config(**overrides):
  config = fashion_mnist_cnn.get_config()
  config.synthetic_data = True
  config.batch_size = 16
  config.model.features = (4,)
  config.model.dense_features = 8
  config.num_train_steps = 40
  config.log_every_steps = 10
  config.eval_every_steps = 20
  config.checkpoint_every_steps = 10
  config.progress_bar = False
  config.schedule = "constant"  # a decay over num_train_steps would differ between 20 and 40
  config.update(overrides)
  return config


def _restore_params(workdir):
  from jaxmodels.train.checkpoint import Checkpoints

  ckpts = Checkpoints(workdir, 3)
  mngr = ckpts.manager
  out = mngr.restore(mngr.latest_step())
  ckpts.close()
  return out["state"]["params"]


def test_resume_is_bit_identical(tmp_path):
  straight = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(tmp_path / "a"))
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(tmp_path / "b"))
  resumed = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(tmp_path / "b"))
  assert resumed["steps"] == straight["steps"] == 40
  assert resumed["train_loss"] == straight["train_loss"]
  assert resumed["test_loss"] == straight["test_loss"]
  for a, b in zip(
      jax.tree_util.tree_leaves(_restore_params(str(tmp_path / "a"))),
      jax.tree_util.tree_leaves(_restore_params(str(tmp_path / "b"))),
  ):
    np.testing.assert_array_equal(a, b)

  # The train records written after the resume equal the uninterrupted run's.
  def records(d):
    return [json.loads(line) for line in open(tmp_path / d / "metrics.jsonl")]

  assert [r for r in records("a") if r["step"] > 20] == [r for r in records("b") if r["step"] > 20]
  # A finished run is not retrained.
  again = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(tmp_path / "a"))
  assert again == straight


def test_metric_writer_does_not_import_torch(tmp_path):
  # tensorboardX imports torch when it is installed: seconds of every run's start-up.
  pytest.importorskip("torch")
  code = (
      "import sys; from jaxmodels.train import metrics; "
      f"w = metrics.MetricWriter({str(tmp_path)!r}); w.write(1, 'train', {{'loss': 2.0}}); "
      "w.close(); print('torch' in sys.modules); import torch; print(torch.ones(1).item())"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
  ).stdout.split()
  assert out == ["False", "1.0"]  # and torch still imports afterwards
  assert any(p.startswith("events.out.tfevents") for p in os.listdir(tmp_path))


def test_workdir_outputs_and_tensorboard(tmp_path):
  summary = loop.train_and_evaluate(
      fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(tmp_path)
  )
  for key in ("steps", "wall_s", "compile_s", "examples_per_s", "test_accuracy", "eval_loss"):
    assert key in summary
  assert summary["startup_s"] > 0  # in-process: from the call to the first finished step
  assert json.load(open(tmp_path / "summary.json")) == summary
  assert json.load(open(tmp_path / "config.json"))["batch_size"] == 16
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert {r["split"] for r in records} == {"train", "eval", "test"}
  assert all(isinstance(r["step"], int) and "loss" in r for r in records)
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  acc = EventAccumulator(str(tmp_path))
  acc.Reload()
  loss = acc.Scalars("train/loss")
  assert [e.step for e in loss] == [10, 20]
  np.testing.assert_allclose(loss[-1].value, summary["train_loss"], rtol=1e-6)


def test_train_step_compiles_once(tmp_path, monkeypatch):
  traces = []
  original = steps.train_step

  def counting(*args, **kwargs):
    traces.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(steps, "train_step", counting)
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=30), str(tmp_path))
  assert len(traces) == 1


def test_indivisible_batch_is_a_clear_error(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="batch_size=12 does not divide across the 8"):
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(batch_size=12), str(tmp_path))


def test_resume_with_different_config_is_refused(tmp_path):
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=10), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match="learning_rate"):
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(learning_rate=0.5), str(tmp_path))
  out = loop.train_and_evaluate(
      fashion_mnist_cnn,
      _tiny_config(num_train_steps=20, learning_rate=0.5),
      str(tmp_path),
      allow_config_change=True,
  )
  assert out["steps"] == 20


def test_a_new_horizon_for_a_decaying_schedule_is_refused_on_resume(tmp_path):
  cosine = dict(schedule="cosine", num_train_steps=10)
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(**cosine), str(tmp_path))
  longer = dict(cosine, num_train_steps=20)
  with pytest.raises(config_lib.ConfigError, match="horizon of the 'cosine' learning-rate"):
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(**longer), str(tmp_path))
  constant = tmp_path / "constant"  # a constant learning rate does not depend on it
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=10), str(constant))
  out = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(constant))
  assert out["steps"] == 20


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_resume_drops_records_past_the_checkpoint_and_a_cut_off_line(tmp_path):
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(tmp_path))
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 25, "split": "train", "loss": 9.0}\n{"step": 3')  # killed mid-write
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=40), str(tmp_path))
  whole = tmp_path / "whole"
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=40), str(whole))
  keys = [(r["step"], r["split"]) for r in _records(tmp_path)]
  assert len(keys) == len(set(keys)) and (25, "train") not in keys
  assert {(r["step"], r["split"]) for r in _records(whole)} <= set(keys)


def test_a_run_without_checkpoints_moves_the_old_records_aside(tmp_path, capsys):
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(tmp_path))
  before = (tmp_path / "metrics.jsonl").read_text()
  shutil.rmtree(tmp_path / "checkpoints")
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(tmp_path))
  assert "no checkpoint to resume from: training starts over" in capsys.readouterr().out
  (aside,) = tmp_path.glob("metrics.jsonl.before-step-0.*")
  assert aside.read_text() == before
  keys = [(r["step"], r["split"]) for r in _records(tmp_path)]
  assert len(keys) == len(set(keys))


def test_a_second_writer_of_a_workdir_is_refused(tmp_path, capsys):
  with lock.WorkdirLock(str(tmp_path)):
    with pytest.raises(lock.LockError, match=rf"in use by another run \(pid {os.getpid()} on host"):
      loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=10), str(tmp_path))
  assert not (tmp_path / "config.json").exists()  # refused before writing anything
  # A lock file left by a process that died (no flock held) is taken over, with a message.
  (tmp_path / ".lock").write_text('{"host": "h", "pid": 999999, "since": "2026-01-01 00:00:00"}')
  out = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=10), str(tmp_path))
  assert out["steps"] == 10
  assert "taking over from a run that ended without releasing it (pid 999999" in (
      capsys.readouterr().out
  )


def test_a_resume_that_cannot_restore_leaves_the_workdir_as_it_was(tmp_path):
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=10), str(tmp_path))
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
  checkpoints = sorted(os.listdir(tmp_path / "checkpoints"))
  with pytest.raises(checkpoint.CheckpointError, match="holds a state of another structure"):
    loop.train_and_evaluate(
        fashion_mnist_cnn,
        _tiny_config(num_train_steps=20, optimizer="sgd"),
        str(tmp_path),
        allow_config_change=True,
    )
  for name in ("config.json", "run.json", "summary.json"):
    assert (tmp_path / name).read_bytes() == before[name]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == checkpoints  # nothing set aside
  out = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(tmp_path))
  assert out["steps"] == 20


def test_non_finite_loss_stops_without_checkpoint(tmp_path):
  with pytest.raises(loop.NonFiniteError, match="step 10.*no checkpoint was saved, so it starts"):
    loop.train_and_evaluate(
        fashion_mnist_cnn, _tiny_config(learning_rate=1e12, optimizer="sgd"), str(tmp_path)
    )
  # Nothing to resume: neither checkpoints/ nor a config.json that would refuse a lower rate.
  assert not {"checkpoints", "config.json", "run.json", ".lock"} & set(os.listdir(tmp_path))
  out = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=10), str(tmp_path))
  assert out["steps"] == 10


def test_a_diverged_run_resumes_with_a_lower_learning_rate_and_allow_config_change(tmp_path):
  sane = _tiny_config(num_train_steps=10, learning_rate=1e-3, optimizer="sgd")
  loop.train_and_evaluate(fashion_mnist_cnn, sane, str(tmp_path))
  diverging = _tiny_config(num_train_steps=20, learning_rate=1e12, optimizer="sgd")
  with pytest.raises(loop.NonFiniteError) as e:
    loop.train_and_evaluate(fashion_mnist_cnn, diverging, str(tmp_path), allow_config_change=True)
  assert "it resumes from the checkpoint of step 10" in str(e.value)
  assert "--config.learning_rate=1e+11 --allow_config_change" in str(e.value)
  lower = _tiny_config(num_train_steps=20, learning_rate=1e-3, optimizer="sgd")
  with pytest.raises(config_lib.ConfigError, match="learning_rate.*--allow_config_change"):
    loop.train_and_evaluate(fashion_mnist_cnn, lower, str(tmp_path))
  out = loop.train_and_evaluate(fashion_mnist_cnn, lower, str(tmp_path), allow_config_change=True)
  assert out["steps"] == 20 and np.isfinite(out["train_loss"])
  assert json.load(open(tmp_path / "config.json"))["learning_rate"] == 1e-3


@pytest.mark.parametrize("garbage", ['{"seed": 0, "batch', "", "[1, 2]", "\xff\xfe"])
def test_a_damaged_config_json_is_named_and_the_checkpoints_resume(tmp_path, garbage):
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=10), str(tmp_path))
  path = tmp_path / "config.json"
  path.write_bytes(garbage.encode("latin-1"))
  checkpoints = sorted(os.listdir(tmp_path / "checkpoints"))
  with pytest.raises(loop.WorkdirError) as e:
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(tmp_path))
  assert str(e.value).startswith(f"{path} ")
  assert "--allow_config_change" in str(e.value) and "checkpoints are not affected" in str(e.value)
  assert path.read_bytes() == garbage.encode("latin-1")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == checkpoints
  out = loop.train_and_evaluate(
      fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(tmp_path), allow_config_change=True
  )
  assert out["steps"] == 20 and json.load(open(path))["num_train_steps"] == 20


def test_eval_batches_samples_the_evaluations_during_training_only(tmp_path, monkeypatch):
  served = []
  original = SyntheticDataset.eval_batches

  def counting(self, split, batch_size, **kwargs):
    batches = list(original(self, split, batch_size, **kwargs))
    served.append((split, kwargs.get("num_batches", 0), len(batches)))
    return iter(batches)

  monkeypatch.setattr(SyntheticDataset, "eval_batches", counting)
  sampled = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(eval_batches=2), str(tmp_path))
  during, final = served[0], served[1:]
  assert during == ("validation", 2, 2)
  assert [num for _, num, _ in final] == [0] * len(final) and all(n > 2 for _, _, n in final)
  served.clear()
  whole = loop.train_and_evaluate(
      fashion_mnist_cnn, _tiny_config(eval_batches=0), str(tmp_path / "whole")
  )
  assert served[0][1] == 0 and served[0][2] > 2
  assert sampled["test_loss"] == whole["test_loss"]  # the final numbers read every example
  assert sampled["eval_loss"] == whole["eval_loss"]


def test_a_damaged_summary_of_a_finished_run_is_evaluated_again(tmp_path, capsys):
  first = loop.train_and_evaluate(
      fashion_mnist_cnn, _tiny_config(num_train_steps=10), str(tmp_path)
  )
  (tmp_path / "summary.json").write_text('{"steps": 1')
  again = loop.train_and_evaluate(
      fashion_mnist_cnn, _tiny_config(num_train_steps=10), str(tmp_path)
  )
  assert "summary.json is not valid JSON" in capsys.readouterr().out
  assert again["test_loss"] == first["test_loss"]
  assert json.load(open(tmp_path / "summary.json"))["steps"] == 10


def _failing_data(config):
  raise data_errors.DatasetNotPreparedError("dataset 'x' is not prepared")


@pytest.mark.parametrize("where, error", [("data", data_errors.DataError), ("model", TypeError)])
def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_workdir(tmp_path, where, error):
  experiment = types.ModuleType("failing")
  experiment.get_data = _failing_data if where == "data" else fashion_mnist_cnn.get_data
  experiment.get_model, experiment.get_task = (
      fashion_mnist_cnn.get_model,
      fashion_mnist_cnn.get_task,
  )
  config = _tiny_config()
  config.model.features = ("abc",)  # fails in the model's init, after checkpoints/ is made
  workdir = tmp_path / "new" / "run"
  with pytest.raises(error):
    loop.train_and_evaluate(experiment, config, str(workdir))
  assert not (tmp_path / "new").exists()
  existing = tmp_path / "existing"  # a directory that was there is kept, as it was
  existing.mkdir()
  (existing / "notes.txt").write_text("mine")
  with pytest.raises(error):
    loop.train_and_evaluate(experiment, config, str(existing))
  assert os.listdir(existing) == ["notes.txt"]


@pytest.mark.parametrize("name", config_lib.OPTIMIZERS)
def test_optimizers_minimise_a_quadratic(name):
  config = base_config()
  config.optimizer, config.learning_rate = name, 0.1
  config.weight_decay = 1e-4
  tx = optim.make_optimizer(config)
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones((2,))}
  state = tx.init(params)
  loss = lambda p: sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(p))
  start = loss(params)
  for _ in range(50):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert loss(params) < 0.5 * start


def test_weight_decay_skips_biases_and_schedules_have_their_shape():
  mask = optim.decay_mask({"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2), "scale": jnp.ones(2)})
  assert mask == {"kernel": True, "bias": False, "scale": False}
  config = base_config()
  config.num_train_steps, config.learning_rate = 100, 1.0
  config.schedule, config.warmup_steps = "warmup_cosine", 10
  s = optim.learning_rate_schedule(config)
  assert float(s(0)) == 0.0 and abs(float(s(10)) - 1.0) < 1e-6 and float(s(100)) < 1e-6
  config.schedule, config.warmup_steps, config.step_boundaries = "step", 0, (0.5,)
  s = optim.learning_rate_schedule(config)
  assert float(s(49)) == 1.0 and abs(float(s(50)) - 0.1) < 1e-7


def test_config_override_checks():
  base = fashion_mnist_cnn.get_config()
  with pytest.raises(config_lib.ConfigError, match="unknown config key.*Valid keys:.*batch_size"):
    config_lib.check_overrides(["--config.batchsize=3"], base)
  with pytest.raises(config_lib.ConfigError, match="expected a value of type int"):
    config_lib.check_overrides(["--config.batch_size=big"], base)
  config_lib.check_overrides(["--config.model.dense_features=3", "--workdir=x"], base)


@pytest.mark.parametrize("value", ["abc", "(4", "(4.5,)", "", "(4, 'a')", "{4: 1}", "None"])
def test_a_tuple_override_of_the_wrong_type_names_the_key_and_an_example(value):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_overrides([f"--config.model.features={value}"], fashion_mnist_cnn.get_config())
  assert str(e.value) == (
      f"--config.model.features={value!r}: expected a tuple of int, such as the default: "
      "--config.model.features='(32, 64)'."
  )


def test_tuple_overrides_ml_collections_accepts_pass():
  base = fashion_mnist_cnn.get_config()
  for value in ("(4, 8)", "[4, 8]", "4,8", "4", "()"):
    config_lib.check_overrides([f"--config.model.features={value}"], base)
  config_lib.check_overrides(["--config.step_boundaries=(0.3, 1)"], base)  # ints are floats
  with pytest.raises(config_lib.ConfigError, match="a tuple of float"):
    config_lib.check_overrides(["--config.step_boundaries=(0.3, x)"], base)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--config.batch_size", "16"], "write --config.batch_size=16."),
        (["--config.seed", "-1"], "write --config.seed=-1."),
        (["--config.batch_size", "--workdir=x"], "--config.batch_size has no value: write"),
        (["--config.batch_size"], "--config.batch_size has no value: write"),
    ],
)
def test_a_config_value_after_a_space_says_to_join_it_with_equals(argv, says):
  with pytest.raises(config_lib.ConfigError, match=re.escape(says)):
    config_lib.check_overrides(argv, fashion_mnist_cnn.get_config())
  config_lib.check_overrides(["--config.synthetic_data"], fashion_mnist_cnn.get_config())


def test_summary_mfu_uses_the_analytic_flop_count(tmp_path):
  config = _tiny_config(num_train_steps=12)
  summary = loop.train_and_evaluate(fashion_mnist_cnn, config, str(tmp_path))
  model = fashion_mnist_cnn.get_model(config, fashion_mnist_cnn.get_data(config).info)
  assert summary["flops_per_step"] == 3 * model.flops_per_example((28, 28, 1)) * config.batch_size
  assert 0 < summary["mfu"] < 1


def test_profile_steps_writes_a_trace_tensorboard_reads(tmp_path):
  loop.train_and_evaluate(
      fashion_mnist_cnn, _tiny_config(num_train_steps=14, profile_steps=2), str(tmp_path)
  )
  assert list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))
  with pytest.raises(config_lib.ConfigError, match="profile_steps"):
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(profile_steps=-1), str(tmp_path / "b"))


def test_compilation_cache_is_filled_and_can_be_turned_off(tmp_path):
  cache = tmp_path / "cache"
  config = _tiny_config(num_train_steps=10, compilation_cache_dir=str(cache))
  loop.train_and_evaluate(fashion_mnist_cnn, config, str(tmp_path / "a"))
  entries = set(cache.iterdir())
  assert entries
  loop.train_and_evaluate(
      fashion_mnist_cnn,
      _tiny_config(num_train_steps=10, seed=1, compilation_cache_dir="none"),
      str(tmp_path / "b"),
  )
  assert set(cache.iterdir()) == entries


def test_in_flight_waits_for_the_oldest_beyond_the_limit(monkeypatch):
  waited = []
  monkeypatch.setattr(loop.jax, "block_until_ready", waited.append)
  in_flight = loop.InFlight(2)
  for i in range(5):
    assert in_flight.add(i) == i
  assert waited == [0, 1, 2]


def test_resuming_at_the_final_step_keeps_the_train_metrics(tmp_path):
  """A run killed after its last checkpoint but before summary.json still reports them."""
  first = loop.train_and_evaluate(
      fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(tmp_path)
  )
  os.remove(tmp_path / "summary.json")
  again = loop.train_and_evaluate(
      fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(tmp_path)
  )
  for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
    assert again[key] == first[key], key


class _TwoLengths:
  """Synthetic seq2seq training batches cut to 5 tokens on two steps of three: two batch shapes."""

  def __init__(self, inner):
    self.inner, self.info, self.eval_splits = inner, inner.info, inner.eval_splits

  def train_batches(self, batch_size, seed, start_step=0, **shard):
    batches = self.inner.train_batches(batch_size, seed, start_step, **shard)
    for step, batch in enumerate(batches, start_step):
      n = 8 if step % 3 == 0 else 5
      yield {"inputs": batch["inputs"][:, :n], "targets": batch["targets"][:, :n]}

  def eval_batches(self, split, batch_size, **shard):
    return self.inner.eval_batches(split, batch_size, **shard)

  def num_examples(self, split):
    return self.inner.num_examples(split)


class _Prefetched:
  """Synthetic data whose training iterators are grain prefetch pipelines, all kept here so that
  only closing them, not garbage collection, stops their threads."""

  def __init__(self, inner):
    self.inner, self.info, self.eval_splits = inner, inner.info, inner.eval_splits
    self.opened = []

  def train_batches(self, batch_size, seed, start_step=0, **shard):
    def make(step):
      return next(self.inner.train_batches(batch_size, seed, step, **shard))

    self.opened.append(pipeline.prefetched(make, start_step))
    return self.opened[-1]

  def eval_batches(self, split, batch_size, **shard):
    return self.inner.eval_batches(split, batch_size, **shard)

  def num_examples(self, split):
    return self.inner.num_examples(split)


def _prefetch_threads():
  return {t for t in threading.enumerate() if t.name.startswith("grain-prefetch")}


def test_the_init_and_training_batch_iterators_are_closed(tmp_path):
  data = _Prefetched(fashion_mnist_cnn.get_data(_tiny_config()))
  experiment = types.ModuleType("prefetched")
  experiment.get_model = fashion_mnist_cnn.get_model
  experiment.get_task = fashion_mnist_cnn.get_task
  experiment.get_data = lambda config: data
  before = _prefetch_threads()
  loop.train_and_evaluate(experiment, _tiny_config(num_train_steps=2), str(tmp_path))
  assert len(data.opened) == 2  # the init batch's, then the training run's
  for batches in data.opened:
    with pytest.raises(ValueError, match="closed iterator"):
      next(batches)
  deadline = time.time() + 10
  while _prefetch_threads() - before and time.time() < deadline:
    time.sleep(0.05)
  assert not _prefetch_threads() - before


def _two_length_experiment():
  from experiments import cmudict_transformer as base

  experiment = types.ModuleType("two_length_seq2seq")
  experiment.get_model, experiment.get_task = base.get_model, base.get_task
  experiment.get_data = lambda config: _TwoLengths(base.get_data(config))
  return experiment


def _two_length_config(**overrides):
  from experiments import cmudict_transformer as base

  config = base.get_config()
  config.synthetic_data, config.progress_bar = True, False
  config.batch_size, config.num_train_steps, config.schedule = 16, 12, "constant"
  config.warmup_steps = 0
  config.log_every_steps = config.checkpoint_every_steps = 3
  config.eval_every_steps = 6
  config.model.update(model_dim=16, num_layers=1, num_heads=2, mlp_dim=32)
  config.update(overrides)
  return config


def test_batches_of_two_shapes_compile_twice_and_resume_bit_identically(tmp_path, monkeypatch):
  traces = []
  original = steps.train_step

  def counting(*args, **kwargs):
    traces.append(args[1]["inputs"].shape)
    return original(*args, **kwargs)

  monkeypatch.setattr(steps, "train_step", counting)
  experiment = _two_length_experiment()
  straight = loop.train_and_evaluate(experiment, _two_length_config(), str(tmp_path / "a"))
  assert sorted(shape[-1] for shape in traces) == [5, 8]
  assert 0 < straight["mfu"] < 1
  loop.train_and_evaluate(experiment, _two_length_config(num_train_steps=7), str(tmp_path / "b"))
  resumed = loop.train_and_evaluate(experiment, _two_length_config(), str(tmp_path / "b"))
  assert resumed["steps"] == straight["steps"] == 12
  assert resumed["train_loss"] == straight["train_loss"]
  for a, b in zip(
      jax.tree_util.tree_leaves(_restore_params(str(tmp_path / "a"))),
      jax.tree_util.tree_leaves(_restore_params(str(tmp_path / "b"))),
  ):
    np.testing.assert_array_equal(a, b)


def test_the_final_evaluation_decodes_only_for_a_task_set_up_to_decode():
  assert isinstance(tasks.Seq2Seq(), tasks.DecodingTask)
  assert not isinstance(tasks.LanguageModel(), tasks.DecodingTask)
  assert not tasks.decodes(tasks.Classification(10))
  assert not tasks.decodes(tasks.Seq2Seq())
  assert tasks.decodes(tasks.Seq2Seq(decode_fn=lambda *args: None))


def test_cmudict_task_takes_its_decoding_and_smoothing_from_the_config():
  from experiments import cmudict_transformer as experiment

  config = experiment.get_config()
  config.beam_size, config.length_penalty, config.label_smoothing = 3, 0.5, 0.2
  task = experiment.get_task(config, {})
  assert task.label_smoothing == 0.2 and task.decode_fn.keywords == {
      "beam_size": 3,
      "length_penalty": 0.5,
  }
  config.beam_size = 0
  with pytest.raises(config_lib.ConfigError, match="config.beam_size=0 must be >= 1"):
    experiment.get_task(config, {})


def test_seq2seq_exact_match_up_to_token_classes():
  targets = jnp.asarray([[1, 3, 4, 2, 0], [1, 5, 2, 0, 0], [1, 6, 3, 2, 0]], jnp.int32)
  # Row 0 right; row 1 off by a token of the same class (5 ~ 6); row 2 off by another class.
  decoded = jnp.asarray([[3, 4, 2, 0], [6, 2, 0, 0], [6, 4, 2, 0]], jnp.int32)
  task = tasks.Seq2Seq(
      decode_fn=lambda model, variables, inputs, max_len: decoded[:, :max_len],
      token_classes=(0, 1, 2, 3, 4, 5, 5),
      classes_name="no_stress",
  )
  sums = task.decode_metrics(None, None, {"inputs": targets, "targets": targets})
  metrics = task.finalize({"loss": 1.0, **{k: float(s / w) for k, (s, w) in sums.items()}})
  assert metrics["exact_match"] == pytest.approx(1 / 3)
  assert metrics["exact_match_no_stress"] == pytest.approx(2 / 3)
  assert metrics["word_error_rate"] == pytest.approx(2 / 3)
  assert metrics["word_error_rate_no_stress"] == pytest.approx(1 / 3)
  assert "exact_match_no_stress" not in tasks.Seq2Seq(decode_fn=task.decode_fn).decode_metrics(
      None, None, {"inputs": targets, "targets": targets}
  )


def test_cmudict_classes_drop_only_the_stress_digit():
  from experiments import cmudict_transformer as experiment

  vocab = ["<pad>", "<bos>", "<eos>", "AH0", "AH1", "AH2", "B", "ER0", "ER1"]
  assert experiment.unstressed_classes(vocab) == (0, 1, 2, 3, 3, 3, 4, 5, 5)
  task = experiment.get_task(experiment.get_config(), {"tgt_vocab": vocab})
  assert task.token_classes == (0, 1, 2, 3, 3, 3, 4, 5, 5) and task.classes_name == "no_stress"


def test_seq2seq_label_smoothing_trains_on_smoothed_targets_and_reports_plain_cross_entropy():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 4, 7)), jnp.float32)
  targets = jnp.asarray([[1, 3, 4, 2, 0], [1, 5, 2, 0, 0], [1, 6, 6, 6, 2]], jnp.int32)
  batch = {"inputs": targets, "targets": targets}
  w = np.asarray(targets[:, 1:] != 0, np.float32)
  labels = optax.smooth_labels(jax.nn.one_hot(targets[:, 1:], 7), 0.1)
  smoothed = np.asarray(optax.softmax_cross_entropy(logits, labels)) * w
  plain = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, targets[:, 1:])) * w
  loss, sums = tasks.Seq2Seq(label_smoothing=0.1).losses(logits, batch)
  np.testing.assert_allclose(loss, smoothed, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sums["loss"][0], smoothed.sum(), rtol=1e-5)
  np.testing.assert_allclose(sums["cross_entropy"][0], plain.sum(), rtol=1e-5)
  metrics = tasks.Seq2Seq(label_smoothing=0.1).finalize({"loss": 2.0, "cross_entropy": 1.0})
  assert metrics["perplexity"] == pytest.approx(np.e)
  loss, sums = tasks.Seq2Seq().losses(logits, batch)
  np.testing.assert_allclose(loss, plain, rtol=1e-5, atol=1e-6)
  assert "cross_entropy" not in sums


@pytest.mark.parametrize(
    "overrides, says",
    [
        ({"label_smoothing": -3.0}, "label_smoothing=-3.0 must be in [0, 1)"),
        ({"label_smoothing": 1.0}, "label_smoothing=1.0 must be in [0, 1)"),
        ({"momentum": 1.5}, "momentum=1.5 must be in [0, 1)"),
        ({"b2": -0.1}, "b2=-0.1 must be in [0, 1)"),
        ({"step_decay": 0.0}, "step_decay=0.0 must be in (0, 1]"),
        ({"step_boundaries": (0.5, 1.5)}, "step_boundaries=(0.5, 1.5)"),
        ({"warmup_steps": 50}, "warmup_steps=50 must be less than config.num_train_steps=40"),
        ({"warmup_steps": 40, "schedule": "warmup_cosine"}, "'warmup_cosine' schedule would"),
        ({"eps": 0.0}, "eps=0.0 must be > 0"),
        ({"seed": -1}, "seed=-1 must be >= 0"),
        ({"validation_size": -5}, "validation_size=-5 must be >= 0"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(overrides, says):
  with pytest.raises(config_lib.ConfigError, match=re.escape(says)):
    config_lib.check(_tiny_config(**overrides), 8)


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("dropout_rate", 1.5, "model.dropout_rate=1.5 must be"),
        ("dense_features", 0, "model.dense_features=0 must be a positive integer"),
        ("features", (4, 0), "model.features=(4, 0): each entry is a size and must be a positive"),
    ],
)
def test_an_out_of_range_model_value_is_refused(key, value, says):
  config = _tiny_config()
  config.model[key] = value
  with pytest.raises(config_lib.ConfigError, match=re.escape(says)):
    config_lib.check(config, 8)
  config_lib.check(_tiny_config(), 8)  # the defaults pass
  config_lib.check(_tiny_config(warmup_steps=39), 8)  # one step after the warmup is enough


def test_a_model_epsilon_must_be_positive():
  from experiments import gpt3

  config = gpt3.get_config()
  config.model.layer_norm_epsilon = -1.0
  with pytest.raises(config_lib.ConfigError, match=re.escape("layer_norm_epsilon=-1.0 must be >")):
    config_lib.check(config, 8)
