"""Fashion-MNIST with a small CNN: the main job (`make train`).

  python -m experiments.fashion_mnist_cnn --workdir=runs/fashion_mnist_cnn

The recipe: 3000 steps (6.4 epochs) of batch 128 on conv 32 -> conv 64 -> dense 128, AdamW 2e-3
with a cosine decay, label smoothing 0.1, dropout 0.1, training images mirrored left-right with
probability 1/2, a moving average of the weights for evaluation (ema_decay 0.999) and test-time
flip in the final evaluation (summary.json's test_flip_accuracy; test_accuracy is without it).

Measured 2026-12-02 on a 2-core CPU (pmap over 2 host devices) shared with other jobs, so the wall
time is to be measured idle: seed 0 reached 92.49% test accuracy with test-time flip (92.17%
without). Seeds 1 and 2 were not run to the end, and the target of 93.0% (mean of seeds 0-2) is not
reached. The same seed-0 checkpoint evaluated without the average: 92.24%, 92.44% with test-time
flip (the average adds nothing after a cosine decay to 0). With dropout 0.3 instead: 91.72%, 92.09%
with test-time flip. The network, batch and steps are those of the recipe without these options;
the average adds an elementwise update of the 421k weights per step and test-time flip one more
forward pass over the test split (about 2% of the run's FLOPs).
"""

import sys

import ml_collections

from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models.cnn import CNN
from jaxmodels.report import Headline
from jaxmodels.sweep import Choice, LogUniform, Sweep, Uniform
from jaxmodels.train import base_config, run_experiment

# The result column of the README's table (python -m jaxmodels.report).
HEADLINE = Headline(
    "test_accuracy", "{} test accuracy", about="small CNN, the main job: `make train`"
)


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.batch_size = 128
  config.num_train_steps = 3000  # 6.4 epochs
  config.label_smoothing = 0.1
  config.optimizer = "adamw"
  config.learning_rate = 2e-3
  config.weight_decay = 1e-4
  config.schedule = "cosine"
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  # The whole test split (10000 images, 79 batches) at steps 1000 and 2000: ~3.4% of the run by
  # the estimate in jaxmodels/train/config.py, so the intermediate evaluations stay exact.
  config.checkpoint_every_steps = 1000
  config.ema_decay = 0.999  # evaluate a moving average of the weights
  config.augment = True  # training images only
  config.crop_padding = 0  # augment: random crop after zero-padding by this many pixels
  config.flip = True  # augment: mirror left-right with probability 1/2
  config.flip_eval = True  # the final evaluation also averages each test image with its mirror
  config.validation_size = 0  # >0 holds out that many train examples as the eval split
  config.model = ml_collections.ConfigDict(
      dict(features=(32, 64), dense_features=128, dropout_rate=0.1)
  )
  return config


def get_data(config):
  if config.synthetic_data:
    return SyntheticDataset("image_classification", image_shape=(28, 28, 1), num_classes=10)
  from jaxmodels import data

  return data.load(
      "fashion_mnist",
      data_dir=config.data_dir or None,
      validation_size=config.validation_size,
      augment=config.augment,
      crop_padding=config.crop_padding,
      flip=config.flip,
  )


def get_model(config, info):
  return CNN(num_classes=info["num_classes"], **config.model)


def get_task(config, info):
  return tasks.Classification(
      info["num_classes"], label_smoothing=config.label_smoothing, flip_eval=config.flip_eval
  )


def get_sweep() -> Sweep:
  """Sweep on a held-out part of train, not on test:

    python -m jaxmodels.sweep experiments.fashion_mnist_cnn --workdir=runs/sweep_fashion_mnist_cnn \
      --num_trials=20 --workers=2 --config.validation_size=5000
  """
  return Sweep(
      metric="eval_accuracy",
      mode="max",
      num_trials=20,
      params={
          "learning_rate": LogUniform(3e-4, 1e-2),
          "batch_size": Choice([64, 128, 256]),
          "model.dropout_rate": Uniform(0.0, 0.5),
      },
  )


if __name__ == "__main__":
  run_experiment(sys.modules[__name__])
