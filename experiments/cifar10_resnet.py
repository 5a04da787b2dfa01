"""CIFAR-10 with ResNet-50 (small-image stem), SGD momentum 0.9, random crop and horizontal flip.

  python -m jaxmodels.data.prepare cifar10   # needs the internet or --manual_dir with the archive
  python -m experiments.cifar10_resnet --workdir=runs/cifar10_resnet

CIFAR-10 cannot be fetched on the project's offline machines, so no result was measured here; on a
2-core CPU a ResNet-50 step at batch 128 takes seconds: this experiment is meant for a GPU or TPU.
"""

import sys

import ml_collections

from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models.resnet import ResNet50
from jaxmodels.report import Headline
from jaxmodels.sweep import LogUniform, Sweep
from jaxmodels.train import base_config, run_experiment

# The result column of the README's table (python -m jaxmodels.report).
HEADLINE = Headline("test_accuracy", "{} test accuracy", about="ResNet-50, crop + flip")


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.batch_size = 128
  config.num_train_steps = 39000  # 100 epochs of 50k
  config.optimizer = "momentum"
  config.momentum = 0.9
  config.learning_rate = 0.1
  config.weight_decay = 5e-4
  config.schedule = "warmup_cosine"
  config.warmup_steps = 1000
  config.log_every_steps = 100
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 2000
  config.augment = True
  config.validation_size = 0  # >0 holds out that many train examples as the eval split
  config.model = ml_collections.ConfigDict(dict(num_filters=64, stem="cifar"))
  return config


def get_data(config):
  if config.synthetic_data:
    return SyntheticDataset("image_classification", image_shape=(32, 32, 3), num_classes=10)
  from jaxmodels import data

  return data.load(
      "cifar10",
      data_dir=config.data_dir or None,
      validation_size=config.validation_size,
      augment=config.augment,
  )


def get_model(config, info):
  return ResNet50(num_classes=info["num_classes"], **config.model)


def get_task(config, info):
  return tasks.Classification(info["num_classes"], label_smoothing=config.label_smoothing)


def get_sweep() -> Sweep:
  """Sweep on a held-out part of train, not on test:

    python -m jaxmodels.sweep experiments.cifar10_resnet --workdir=runs/sweep_cifar10_resnet \
      --num_trials=20 --workers=2 --config.validation_size=5000
  """
  return Sweep(
      metric="eval_accuracy",
      mode="max",
      num_trials=20,
      params={
          "learning_rate": LogUniform(0.02, 0.4),
          "weight_decay": LogUniform(1e-5, 1e-3),
      },
  )


if __name__ == "__main__":
  run_experiment(sys.modules[__name__])
