"""Fashion-MNIST with ResNet-18 (small-image stem), SGD with Nesterov momentum and cosine decay.

  python -m experiments.fashion_mnist_resnet --workdir=runs/fashion_mnist_resnet

Expect (measured 2026-12-03 on the 2-core CPU, an Intel Xeon with AVX-512, idle, one run): 94.25%
test accuracy with test-time flip (94.19% without) after the 7500 steps (16 epochs, random crop +
flip) in 27m20s (4.6 steps/s, 596 images/s on 2 host devices, MFU 34%); on the 20-batch sample
of the intermediate evaluations 91.5% at step 3000, 93.4% at 5000, 94.3% at 7000. The target of
94.5% within 30 minutes is not reached; train accuracy (with augmentation) ends at 95.8%, so
the run is still budget-bound rather than overfitting. The same recipe at 5000 steps reached
93.8% (Nov 2026). That run used XLA's convolutions; the config now sets conv_impl='auto'
(oneDNN's where built): on the 2-core AMD EPYC host (AVX2) of 2026-12-03 its step ran 1.15x as
fast as XLA's (paired rounds, `python -m benchmarks.conv_impl --strategy=pmap --num_filters=16
--image=28,28,1`; README, oneDNN kernels), and the whole run was not repeated there.
"""

import sys

import ml_collections

from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models.resnet import ResNet18
from jaxmodels.report import Headline
from jaxmodels.sweep import LogUniform, Sweep
from jaxmodels.train import base_config, run_experiment

# The result column of the README's table (python -m jaxmodels.report).
HEADLINE = Headline(
    "test_flip_accuracy",
    "{} test accuracy (test-time flip)",
    fmt="{:.2%}",
    about="ResNet-18, width 16, crop + flip",
)


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.batch_size = 128
  config.num_train_steps = 7500  # 16 epochs
  config.optimizer = "nesterov"
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.schedule = "warmup_cosine"
  config.warmup_steps = 300
  config.label_smoothing = 0.1
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  # Steps 1000-7000 estimate the test accuracy on 20 batches of a fixed sample (~1.2% of the run
  # by the estimate in jaxmodels/train/config.py); the final evaluation reads all 10000 images.
  config.eval_batches = 20
  config.checkpoint_every_steps = 500
  config.augment = True
  config.flip_eval = True  # the final evaluation also averages each test image with its mirror
  config.validation_size = 0  # >0 holds out that many train examples as the eval split
  # Width 16 (a quarter of the FLOPs of 32) trains 4.6 steps/s on 2 CPU cores (docstring).
  config.model = ml_collections.ConfigDict(dict(num_filters=16, stem="cifar", conv_impl="auto"))
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
  )


def get_model(config, info):
  return ResNet18(num_classes=info["num_classes"], **config.model)


def get_task(config, info):
  return tasks.Classification(
      info["num_classes"], label_smoothing=config.label_smoothing, flip_eval=config.flip_eval
  )


def get_sweep() -> Sweep:
  """Sweep on a held-out part of train, not on test:

    python -m jaxmodels.sweep experiments.fashion_mnist_resnet \
      --workdir=runs/sweep_fashion_mnist_resnet --num_trials=20 --workers=2 \
      --config.validation_size=5000
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
