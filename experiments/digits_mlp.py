"""scikit-learn's 8x8 digits: a Dense 64-64-10 network, Adam and sparse categorical cross-entropy.

  python -m experiments.digits_mlp --workdir=runs/digits_mlp

Then predict with the trained workdir (softmax probabilities and classes):

  python -m jaxmodels.predict --workdir=runs/digits_mlp --split=test --num_examples=8

Expect (measured 2026-12-04 on the 2-core AMD EPYC CPU, idle): over seeds 0, 1, 2
(`--config.seed=N`, `python -m jaxmodels.report` on the three workdirs) 98.1% ± 0.6% test
accuracy on the 360 held-out digits (mean ± sample std; 97.8%, 98.9%, 97.8%), 3 s per seed.
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
HEADLINE = Headline("test_accuracy", "{} on the 360 held-out test digits", about="64-64-10, Adam")


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.batch_size = 32
  config.num_train_steps = 2000
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.validation_size = 0  # >0 holds out that many train examples as the eval split
  config.model = ml_collections.ConfigDict(dict(hidden_sizes=(64,), dropout_rate=0.0))
  return config


def get_data(config):
  if config.synthetic_data:
    return SyntheticDataset("image_classification", image_shape=(8, 8, 1), num_classes=10)
  from jaxmodels import data

  return data.load(
      "digits", data_dir=config.data_dir or None, validation_size=config.validation_size
  )


def get_model(config, info):
  return MLP(num_classes=info["num_classes"], **config.model)


def get_task(config, info):
  return tasks.Classification(info["num_classes"], label_smoothing=config.label_smoothing)


def get_sweep() -> Sweep:
  """Sweep on a held-out part of train, not on test:

    python -m jaxmodels.sweep experiments.digits_mlp --workdir=runs/sweep_digits_mlp \
      --num_trials=20 --workers=2 --config.validation_size=300
  """
  return Sweep(
      metric="eval_accuracy",
      mode="max",
      num_trials=20,
      params={
          "learning_rate": LogUniform(1e-4, 1e-2),
          "batch_size": Choice([16, 32, 64]),
      },
  )


if __name__ == "__main__":
  run_experiment(sys.modules[__name__])
