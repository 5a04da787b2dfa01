"""MNIST with the seed MLP 784-128-64-10, plain SGD at 0.01, batch 64, loss logged every step.

  python -m experiments.mnist_mlp --workdir=runs/mnist_mlp

A tuned configuration (Adam, wider layers with dropout, cosine decay):

  python -m experiments.mnist_mlp --workdir=runs/mnist_mlp_tuned --config.optimizer=adam \
    --config.learning_rate=1e-3 --config.schedule=cosine --config.batch_size=128 \
    --config.num_train_steps=6000 --config.model.hidden_sizes='(512, 256)' \
    --config.model.dropout_rate=0.2 --config.log_every_steps=100 --config.eval_every_steps=2000 \
    --config.checkpoint_every_steps=2000

Expect (measured 2026-12-04 on the 2-core AMD EPYC CPU, idle, `--config.progress_bar=False`):
the seed configuration reaches 95.3% test accuracy in 17 s (5 epochs); the tuned one 98.6% in
42 s.
"""

import sys

import ml_collections

from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models.mlp import MLP
from jaxmodels.report import Headline
from jaxmodels.sweep import Choice, LogUniform, Sweep
from jaxmodels.train import base_config, run_experiment

# The result column of the README's table (python -m jaxmodels.report).
HEADLINE = Headline("test_accuracy", "{} test accuracy", about="784-128-64-10, SGD 0.01, batch 64")


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.batch_size = 64
  config.num_train_steps = 4690  # 5 epochs of 60k
  config.optimizer = "sgd"
  config.learning_rate = 0.01
  config.log_every_steps = 1  # the seed prints the loss at every step
  config.eval_every_steps = 938
  config.checkpoint_every_steps = 938
  config.validation_size = 0  # >0 holds out that many train examples as the eval split
  config.model = ml_collections.ConfigDict(dict(hidden_sizes=(128, 64), dropout_rate=0.0))
  return config


def get_data(config):
  if config.synthetic_data:
    return SyntheticDataset("image_classification", image_shape=(28, 28, 1), num_classes=10)
  from jaxmodels import data

  return data.load(
      "mnist", data_dir=config.data_dir or None, validation_size=config.validation_size
  )


def get_model(config, info):
  return MLP(num_classes=info["num_classes"], **config.model)


def get_task(config, info):
  return tasks.Classification(info["num_classes"], label_smoothing=config.label_smoothing)


def get_sweep() -> Sweep:
  """Sweep on a held-out part of train, not on test:

    python -m jaxmodels.sweep experiments.mnist_mlp --workdir=runs/sweep_mnist_mlp \
      --num_trials=20 --workers=2 --config.validation_size=5000
  """
  return Sweep(
      metric="eval_accuracy",
      mode="max",
      num_trials=20,
      params={
          "learning_rate": LogUniform(1e-3, 3e-1),
          "optimizer": Choice(["sgd", "momentum", "adam"]),
          "batch_size": Choice([32, 64, 128]),
      },
  )


if __name__ == "__main__":
  run_experiment(sys.modules[__name__])
