"""Fine-tuning: `config.init_from` loads another run's (or torchvision's) weights at step 0 only,
re-initialises a head of another shape, refuses sources that do not fit; `config.trainable`
freezes parameters and `config.freeze_batch_stats` the BatchNorm statistics."""

import os
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models.resnet import BasicBlock, ResNet
from jaxmodels.train import base_config, config as config_lib, finetune, loop, optim, steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _experiment():
  """A tiny ResNet classifier on synthetic 8x8 images with config.num_classes classes."""
  module = types.ModuleType("finetune_fixture")

  def get_config():
    c = base_config()
    c.update(
        batch_size=8,
        num_train_steps=2,
        log_every_steps=1,
        eval_every_steps=100,
        checkpoint_every_steps=2,
        optimizer="momentum",
        learning_rate=0.05,
        progress_bar=False,
        synthetic_data=True,
        parallelism="none",
    )
    c.num_classes = 10
    c.model = dict(num_filters=4)
    return c

  module.get_config = get_config
  module.get_data = lambda c: SyntheticDataset(
      "image_classification", image_shape=(8, 8, 1), num_classes=c.num_classes
  )
  module.get_model = lambda c, info: ResNet(
      stage_sizes=(1, 1),
      block_cls=BasicBlock,
      stem="cifar",
      num_classes=info["num_classes"],
      **c.model,
  )
  module.get_task = lambda c, info: tasks.Classification(info["num_classes"])
  return module


EXPERIMENT = _experiment()


def _config(**overrides):
  config = EXPERIMENT.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _train(workdir, **overrides):
  return loop.train_and_evaluate(EXPERIMENT, _config(**overrides), str(workdir))


def _checkpoint(workdir, step):
  """The saved state of checkpoint `step`, read by orbax as written (no target)."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  try:
    return manager.restore(step)["state"]
  finally:
    manager.close()


def _assert_trees_equal(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def _written(workdir):
  """Files a run left in a workdir, apart from the lock every run takes."""
  return sorted(
      os.path.relpath(os.path.join(d, f), workdir)
      for d, _, files in os.walk(workdir)
      for f in files
      if f != ".lock"
  )


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A trained workdir with checkpoints at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp("source")
  _train(workdir, num_train_steps=4)
  return str(workdir)


@pytest.mark.parametrize("parallelism", ["none", "pmap", "mesh"])
def test_init_from_a_workdir_starts_from_its_latest_weights(source, tmp_path, parallelism, capsys):
  _train(tmp_path, init_from=source, parallelism=parallelism, num_train_steps=1)
  assert "init_from" in capsys.readouterr().out
  start, src = _checkpoint(str(tmp_path), 0), _checkpoint(source, 4)
  assert int(start["step"]) == 0
  _assert_trees_equal(start["params"], src["params"])
  _assert_trees_equal(start["model_state"], src["model_state"])  # BatchNorm statistics
  # The optimizer starts afresh: no momentum carried over from the source run.
  assert all(not np.any(x) for x in jax.tree_util.tree_leaves(start["opt_state"]))
  assert any(np.any(x) for x in jax.tree_util.tree_leaves(src["opt_state"]))
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [0, 1]


def test_init_from_dir_at_step_takes_that_checkpoint(source, tmp_path):
  _train(tmp_path, init_from=f"{source}@2", num_train_steps=1)
  start = _checkpoint(str(tmp_path), 0)
  _assert_trees_equal(start["params"], _checkpoint(source, 2)["params"])
  with pytest.raises(AssertionError):
    _assert_trees_equal(start["params"], _checkpoint(source, 4)["params"])


def test_head_is_reinitialised_when_the_classes_differ(source, tmp_path, capsys):
  _train(tmp_path, init_from=source, num_classes=5, num_train_steps=1)
  out = capsys.readouterr().out
  assert "re-initialised (classifier head): params/Dense_0/bias, params/Dense_0/kernel" in out
  start, src = _checkpoint(str(tmp_path), 0), _checkpoint(source, 4)
  head = start["params"].pop("Dense_0")
  src["params"].pop("Dense_0")
  _assert_trees_equal(start["params"], src["params"])
  _assert_trees_equal(start["model_state"], src["model_state"])
  # The head is this config's fresh initialisation (the seed's), of 5 classes.
  config = _config(num_classes=5)
  data = EXPERIMENT.get_data(config)
  model, task = EXPERIMENT.get_model(config, data.info), EXPERIMENT.get_task(config, data.info)
  tx = optim.make_optimizer(config)
  fresh = steps.init_state(model, task, tx, next(data.train_batches(8, 0)), config.seed)
  _assert_trees_equal(head, fresh.params["Dense_0"])
  assert head["kernel"].shape == (8, 5)


@pytest.mark.parametrize("parallelism", ["none", "mesh"])
def test_frozen_parameters_do_not_change(source, tmp_path, parallelism):
  _train(
      tmp_path, init_from=source, trainable="^Dense_0/", parallelism=parallelism, num_train_steps=3
  )
  start, end = _checkpoint(str(tmp_path), 0), _checkpoint(str(tmp_path), 3)
  head_start, head_end = start["params"].pop("Dense_0"), end["params"].pop("Dense_0")
  _assert_trees_equal(end["params"], start["params"])
  for name in ("kernel", "bias"):
    assert not np.allclose(head_end[name], head_start[name])
  # BatchNorm statistics still follow the batches (torch: requires_grad=False alone)...
  with pytest.raises(AssertionError):
    _assert_trees_equal(end["model_state"], start["model_state"])


def test_frozen_batch_stats_stay_as_loaded(source, tmp_path):
  _train(tmp_path, init_from=source, freeze_batch_stats=True, num_train_steps=3)
  start, end = _checkpoint(str(tmp_path), 0), _checkpoint(str(tmp_path), 3)
  _assert_trees_equal(end["model_state"], start["model_state"])
  _assert_trees_equal(start["model_state"], _checkpoint(source, 4)["model_state"])
  with pytest.raises(AssertionError):
    _assert_trees_equal(end["params"], start["params"])


def test_trainable_matching_nothing_is_a_config_error(source, tmp_path):
  with pytest.raises(
      config_lib.ConfigError,
      match=r"config.trainable=.\^head. matches no param.*modules BasicBlock_0, BasicBlock_1, Den",
  ):
    _train(tmp_path, init_from=source, trainable="^head")
  assert _written(tmp_path) == []
  with pytest.raises(config_lib.ConfigError, match="config.trainable='Dense_0/\\('"):
    _train(tmp_path, trainable="Dense_0/(")


def test_freeze_batch_stats_without_batchnorm_is_a_config_error(tmp_path):
  from experiments import mnist_mlp

  config = mnist_mlp.get_config()
  config.update(synthetic_data=True, freeze_batch_stats=True, progress_bar=False)
  with pytest.raises(config_lib.ConfigError, match="freeze_batch_stats"):
    loop.train_and_evaluate(mnist_mlp, config, str(tmp_path))


def test_a_resumed_fine_tuning_run_never_reads_the_source_again(source, tmp_path):
  moving = str(tmp_path / "moving_source")
  shutil.copytree(source, moving)
  straight = _train(tmp_path / "straight", init_from=moving, num_train_steps=4)
  # Interrupted after its checkpoint 0; meanwhile the source is replaced by another run's.
  _train(tmp_path / "resumed", init_from=moving, num_train_steps=4)
  for stale in ("checkpoints/2", "checkpoints/4", "summary.json", "metrics.jsonl"):
    path = tmp_path / "resumed" / stale
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  shutil.rmtree(moving)
  _train(moving, seed=1, num_train_steps=2)
  resumed = _train(tmp_path / "resumed", init_from=moving, num_train_steps=4)
  assert resumed["steps"] == 4 and resumed["train_loss"] == straight["train_loss"]
  _assert_trees_equal(
      _checkpoint(str(tmp_path / "resumed"), 4)["params"],
      _checkpoint(str(tmp_path / "straight"), 4)["params"],
  )
  # Deleted: the resumed run does not look for it.
  shutil.rmtree(moving)
  more = _train(tmp_path / "resumed", init_from=moving, num_train_steps=6)
  assert more["steps"] == 6
  # Another source on resume is a config change: refused, the keys listed.
  with pytest.raises(config_lib.ConfigError, match="init_from"):
    _train(tmp_path / "resumed", init_from=source, num_train_steps=6)


def _no_checkpoint_workdir(source, tmp_path):
  path = tmp_path / "no_checkpoints"
  shutil.copytree(source, path)
  shutil.rmtree(path / "checkpoints")
  return str(path)


def _other_width_workdir(source, tmp_path):
  path = tmp_path / "wide"
  _train(path, **{"model.num_filters": 8, "num_train_steps": 1})
  return str(path)


BAD_SOURCES = [
    # (source maker, words the message must contain)
    (lambda src, tmp: str(tmp / "missing"), ["missing", "does not exist", "workdir"]),
    (_no_checkpoint_workdir, ["no checkpoint", "no_checkpoints"]),
    (lambda src, tmp: f"{src}@3", ["no checkpoint at step 3", "steps 2, 4"]),
    (
        _other_width_workdir,
        ["does not fit", "params/BasicBlock_0/BatchNorm_0/bias: source (8,), this model (4,)"],
    ),
]


@pytest.mark.parametrize(
    "make,words", BAD_SOURCES, ids=["missing", "no_checkpoint", "no_such_step", "other_width"]
)
def test_bad_source_is_a_clear_error_and_writes_nothing(source, tmp_path, make, words):
  bad = make(source, tmp_path)
  workdir = tmp_path / "new"
  with pytest.raises(finetune.InitFromError) as info:
    _train(workdir, init_from=bad)
  message = str(info.value)
  assert message.startswith(f"config.init_from={bad!r}")
  for word in words:
    assert word in message, message
  assert _written(workdir) == []


def test_merge_reports_ignored_and_refuses_missing_arrays():
  fresh = {"params": {"body": {"kernel": np.zeros((2, 3))}, "head": {"kernel": np.zeros((3, 4))}}}
  source = {
      "params": {
          "body": {"kernel": np.ones((2, 3))},
          "head": {"kernel": np.ones((3, 7))},
          "extra": {"bias": np.ones(3)},
      }
  }
  merged, report = finetune.merge(fresh, source, "head", "src")
  np.testing.assert_array_equal(merged["params"]["body"]["kernel"], np.ones((2, 3)))
  np.testing.assert_array_equal(merged["params"]["head"]["kernel"], np.zeros((3, 4)))
  assert report.loaded == ["params/body/kernel"]
  assert report.reinitialised == ["params/head/kernel"]
  assert report.ignored == ["params/extra/bias"]
  del source["params"]["head"]  # a head the source lacks is initialised afresh too
  assert finetune.merge(fresh, source, "head", "src")[1].reinitialised == ["params/head/kernel"]
  del source["params"]["body"]
  with pytest.raises(finetune.InitFromError, match=r"params/body/kernel \(2, 3\) is not in"):
    finetune.merge(fresh, source, "head", "src")


def test_command_line_bad_source_exits_2_with_one_paragraph(tmp_path):
  workdir = tmp_path / "w"
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "experiments.finetune_resnet",
          f"--workdir={workdir}",
          f"--config.init_from={tmp_path / 'nothing_here'}",
          "--config.synthetic_data=True",
          "--config.arch=resnet18",
          "--config.model.num_filters=2",
          "--config.batch_size=8",
          "--config.num_train_steps=1",
      ],
      cwd=ROOT,
      env=dict(
          {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, JAXMODELS_HOST_DEVICES="2"
      ),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert "error: config.init_from=" in result.stderr and "does not exist" in result.stderr
  assert "Traceback" not in result.stderr + result.stdout
  assert _written(workdir) == []


def _fresh(model, task, batch, seed=0):
  config = base_config()
  config.optimizer = "momentum"
  tx = optim.make_optimizer(config)
  return steps.init_state(model, task, tx, batch, seed), tx


def _resnet18(num_classes=10):
  from jaxmodels.models.resnet import ResNet18

  return ResNet18(num_classes=num_classes, bn_running_variance="unbiased")


IMAGES = {"inputs": np.zeros((2, 28, 28, 1), np.float32), "targets": np.zeros((2,), np.int32)}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_init_from_a_torchvision_file_equals_the_imported_variables(tmp_path, suffix, capsys):
  from jaxmodels.models import convert

  task = tasks.Classification(10)
  trained, _ = _fresh(_resnet18(), task, IMAGES, seed=1)
  rng = np.random.default_rng(0)
  stats = jax.tree_util.tree_map(
      lambda x: rng.uniform(0.5, 2.0, x.shape).astype(np.float32), trained.model_state
  )
  path = str(tmp_path / f"resnet18{suffix}")
  convert.save_torchvision({"params": trained.params, **stats}, path, "resnet18")
  _, imported = convert.load_torchvision(path, "resnet18")
  # Our model with flax's BatchNorm convention: loads, with a note on the difference.
  model = _resnet18().clone(bn_running_variance="biased")
  fresh, tx = _fresh(model, task, IMAGES)
  state, report = finetune.initialise(path, fresh, model, task, tx, IMAGES)
  _assert_trees_equal(state.params, imported["params"])
  _assert_trees_equal(state.model_state["batch_stats"], imported["batch_stats"])
  assert report.reinitialised == [] and report.ignored == []
  assert len(report.loaded) == len(jax.tree_util.tree_leaves(imported))
  assert any("bn_running_variance='unbiased'" in n for n in report.notes)
  # Into 7 classes: the head is this model's fresh one, everything else the file's.
  model7 = _resnet18(7)
  fresh7, tx7 = _fresh(model7, tasks.Classification(7), IMAGES)
  state7, report7 = finetune.initialise(path, fresh7, model7, tasks.Classification(7), tx7, IMAGES)
  assert report7.reinitialised == ["params/Dense_0/bias", "params/Dense_0/kernel"]
  _assert_trees_equal(state7.params.pop("Dense_0"), fresh7.params["Dense_0"])
  imported["params"].pop("Dense_0")
  _assert_trees_equal(state7.params, imported["params"])


def test_torchvision_file_of_another_architecture_is_a_clear_error(tmp_path):
  from safetensors.numpy import save_file

  from jaxmodels.models import convert
  from jaxmodels.models.mlp import MLP
  from jaxmodels.models.resnet import ResNet34

  shapes = jax.eval_shape(ResNet34(num_classes=10).init, jax.random.key(0), IMAGES["inputs"])
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  path = str(tmp_path / "resnet34.safetensors")
  save_file(convert.torchvision_state_dict(zeros, "resnet34"), path)
  task = tasks.Classification(10)
  fresh, tx = _fresh(_resnet18(), task, IMAGES)
  with pytest.raises(finetune.InitFromError) as info:
    finetune.initialise(path, fresh, _resnet18(), task, tx, IMAGES)
  message = str(info.value)
  assert message.startswith(f"config.init_from={path!r} (read as resnet18)")
  assert "unexpected keys (layer1.2." in message and "those of torchvision resnet34" in message
  with pytest.raises(finetune.InitFromError, match="MLP that is not ResNet-18, -34 or -50"):
    finetune.load_variables(path, MLP(hidden_sizes=(4,)))


def test_torchvision_name_offline_names_the_file_to_place(tmp_path, monkeypatch):
  import torch.hub

  monkeypatch.setenv("TORCH_HOME", str(tmp_path))

  def offline(url, *args, **kwargs):
    raise OSError("Name or service not known")

  monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
  with pytest.raises(finetune.InitFromError) as info:
    finetune.load_variables("torchvision:resnet18:IMAGENET1K_V1", _resnet18())
  message = str(info.value)
  assert "config.init_from='torchvision:resnet18:IMAGENET1K_V1'" in message
  assert f"place that file at {tmp_path}/hub/checkpoints/resnet18-" in message


def _gpt(vocab_size=50):
  from jaxmodels.models.transformer import GPT

  return GPT(
      vocab_size=vocab_size,
      model_dim=16,
      num_layers=2,
      num_heads=2,
      mlp_dim=32,
      max_len=8,
      tie_embeddings=True,
      layer_norm_epsilon=1e-5,
  )


def test_init_from_a_hugging_face_directory(tmp_path):
  from jaxmodels.models import convert

  task, tokens = tasks.LanguageModel(), np.zeros((2, 8), np.int32)
  batch = {"inputs": tokens, "targets": tokens}
  trained, _ = _fresh(_gpt(), task, batch, seed=1)
  directory = str(tmp_path / "gpt2")
  convert.save_huggingface(_gpt(), {"params": trained.params}, directory)
  fresh, tx = _fresh(_gpt(), task, batch)
  state, report = finetune.initialise(directory, fresh, _gpt(), task, tx, batch)
  _assert_trees_equal(state.params, convert.load_huggingface(directory)[1]["params"])
  _assert_trees_equal(state.params, trained.params)
  assert report.reinitialised == [] and report.notes == []
  # Another vocabulary is not a classifier head: refused, naming the embedding.
  fresh60, tx = _fresh(_gpt(60), task, batch)
  with pytest.raises(finetune.InitFromError, match=r"source \(50, 16\), this model \(60, 16\)"):
    finetune.initialise(directory, fresh60, _gpt(60), task, tx, batch)
