"""Fashion-MNIST with a small CNN: the main job (`make train`).

  python -m experiments.fashion_mnist_cnn --workdir=runs/fashion_mnist_cnn

The recipe: 3000 steps (6.4 epochs) of batch 128 on conv 32 -> conv 64 -> dense 128, AdamW 2e-3
with a cosine decay, label smoothing 0.1, dropout 0.1, training images mirrored left-right with
probability 1/2, and test-time flip in the final evaluation (summary.json's test_flip_accuracy;
test_accuracy is without it).

Measured 2026-12-02 on the 2-core CPU (AMD EPYC, no AVX-512; pmap over 2 host devices), seeds 0,
1, 2: 92.39% +- 0.22% test accuracy with test-time flip (92.44%, 92.58%, 92.14%; without it
92.24%, 92.28%, 91.94%). Seed 0 on the idle machine: 3m55s in the loop, 4m34s for `make train`
with packages and data in place (seeds 1 and 2 ran side by side and are not timed). The target of
93.0% (mean of the three) in 3 minutes is not reached; the training loss still falls at the last
step, so the model is under-trained for its budget. The same network without flips and test-time
flip (the recipe at commit 56ea665) reached 92.02% for seed 0 at the same cost per step (1742 vs
1841 examples/s in 600-step runs on this machine). Tried on seed 0 and not kept: dropout 0.3 with
flips (91.72%, 92.09% with test-time flip); a moving average of the weights (config.ema_decay
0.999: 92.17%, 92.49% with test-time flip; nothing over the cosine decay to 0).
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
    "test_flip_accuracy",
    "{} test accuracy (test-time flip)",
    fmt="{:.2%}",
    about="small CNN, the main job: `make train`",
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
