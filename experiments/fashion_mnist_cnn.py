"""Fashion-MNIST with a small CNN: the main job (`make train`).

  python -m experiments.fashion_mnist_cnn --workdir=runs/fashion_mnist_cnn

The recipe: 5000 steps (10.7 epochs) of batch 128 on conv 32 -> conv 64 -> dense 128, AdamW 2e-3
with a cosine decay, label smoothing 0.1, dropout 0.1, training images mirrored left-right with
probability 1/2, and test-time flip in the final evaluation (summary.json's test_flip_accuracy;
test_accuracy is without it).

Measured 2026-12-04 on the 2-core AMD EPYC host (AVX2, no AVX-512; pmap over 2 host devices,
oneDNN convolutions by conv_impl='auto'), idle, one seed at a time: seeds 0, 1, 2 reached 93.19%
+- 0.18% test accuracy with test-time flip (93.30%, 93.28%, 92.98%; without it 92.80%, 93.12%,
92.70%) in 2m57s per seed (3m08s, 2m53s, 2m50s; 5-8 s to the first step with a warm compilation
cache, 27-29 steps/s, 3650-4030 examples/s). The Intel Xeon host with AVX-512 of 2026-12-03 ran
the run in 2m47s (31.6 steps/s; XLA's convolutions, 93.06% +- 0.14% over the three seeds). Batch
128 is the fastest per example there (batch 64: 3530 examples/s, 256: 3475, in 600-step runs).

Tried on seed 0 at 4500 steps against this recipe's 93.00% (one device each, two runs side by
side) and not kept: BatchNorm (92.72%), SGD with Nesterov momentum at
learning rate 0.05 (92.21%; 0.1 with BatchNorm 90.77%), AdamW weight decay 0.05 with dropout 0.2
(92.98%), dense 256 with dropout 0.3 (92.60%), random crops after 2-pixel padding (91.95%), conv 32
-> conv 96 for 3200 steps (the same time; 92.40%), a third block of 128 for 2500 steps (92.08%); on
3000-step runs, a moving average of the weights (config.ema_decay 0.999: +0.05). The learning
curves say the budget limits it: the same recipe at 3000 steps ended at 92.39% (mean of 3 seeds)
and at 4500 at 92.88% (one device, side by side), and the training loss still falls at the last
step (the experiments of this paragraph ran on the Intel host).
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
  config.num_train_steps = 5000  # 10.7 epochs
  config.label_smoothing = 0.1
  config.optimizer = "adamw"
  config.learning_rate = 2e-3
  config.weight_decay = 1e-4
  config.schedule = "cosine"
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  # Steps 1000-4000 estimate the test accuracy on 20 batches of a fixed sample (~1% of the run
  # by the estimate in jaxmodels/train/config.py, where the whole split would be ~4%); the final
  # evaluation reads all 10000 images.
  config.eval_batches = 20
  config.checkpoint_every_steps = 1000
  config.augment = True  # training images only
  config.crop_padding = 0  # augment: random crop after zero-padding by this many pixels
  config.flip = True  # augment: mirror left-right with probability 1/2
  config.flip_eval = True  # the final evaluation also averages each test image with its mirror
  config.validation_size = 0  # >0 holds out that many train examples as the eval split
  config.model = ml_collections.ConfigDict(
      dict(
          features=(32, 64),
          convs_per_block=1,
          dense_features=128,
          dropout_rate=0.1,
          use_batchnorm=False,
          conv_impl="auto",  # oneDNN where its kernels are built (README: oneDNN kernels)
      )
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
