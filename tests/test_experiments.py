"""Every experiment trains on synthetic data with a tiny config, through the one engine."""

import importlib
import json
import math

import pytest

from jaxmodels.train import loop

TINY = {
    "fashion_mnist_cnn": {"model.features": (4,), "model.dense_features": 8},
    "mnist_mlp": {"model.hidden_sizes": (8,)},
    "mnist_dp": {"model.features": (4,), "model.dense_features": 8},
    "digits_mlp": {"model.hidden_sizes": (8,)},
    "fashion_mnist_resnet": {"model.num_filters": 4},
    "cifar10_resnet": {"model.num_filters": 2},
    "finetune_resnet": {"model.num_filters": 2, "arch": "resnet18", "init_from": ""},
    "imdb_lstm": {"max_len": 12, "vocab_size": 50, "model.embed_dim": 8, "model.hidden_size": 8},
    "shakespeare_rnn": {
        "block_size": 12,
        "model.embed_dim": 8,
        "model.hidden_size": 16,
        "sample_tokens": 5,
    },
    "shakespeare_gpt": {
        "block_size": 12,
        "model.model_dim": 16,
        "model.num_layers": 1,
        "model.num_heads": 2,
        "model.mlp_dim": 32,
        "sample_tokens": 5,
    },
    "gpt3": {
        "block_size": 12,
        "model.model_dim": 16,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.mlp_dim": 32,
        "model.scan_layers": True,
        "model.remat": "dots_saveable",
        "sample_tokens": 5,
    },
    "cmudict_transformer": {
        "model.model_dim": 16,
        "model.num_layers": 1,
        "model.num_heads": 2,
        "model.mlp_dim": 32,
    },
}


def tiny_config(module, overrides):
  config = module.get_config()
  config.update(
      dict(
          synthetic_data=True,
          batch_size=8,
          num_train_steps=3,
          log_every_steps=1,
          eval_every_steps=2,
          checkpoint_every_steps=2,
          progress_bar=False,
      )
  )
  config.warmup_steps = min(config.warmup_steps, 1)  # a warmup must end before the last step
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_trains_on_synthetic_data(name, tmp_path):
  module = importlib.import_module(f"experiments.{name}")
  summary = loop.train_and_evaluate(module, tiny_config(module, TINY[name]), str(tmp_path))
  assert summary["steps"] == 3
  assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["test_loss"])
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
  assert module.__doc__.lstrip().splitlines()[0]
  assert f"python -m experiments.{name}" in module.__doc__
  assert isinstance(summary[module.HEADLINE.metric], float)  # the README table's result column
  if hasattr(module, "generate"):
    assert len(summary["sample"]) > 0
