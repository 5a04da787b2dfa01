"""IMDB sentiment with a bidirectional LSTM over word tokens (padding-aware).

  python -m experiments.imdb_lstm --workdir=runs/imdb_lstm

Expect (measured 2026-12-03 on the 2-core CPU, an Intel Xeon with AVX-512, idle, seed 0):
88.47% accuracy on the held-out test split (10% of the 25k reviews by hash), 88.47% on
validation, after 1500 steps in 11m57s (2.1 steps/s on 2 host devices); seed 1 (--config.seed=1)
88.47% test, 88.12% validation. Validation accuracy 85.4%
at step 500, 88.2% at 1000; train accuracy reaches 98.2%, so more steps overfit. Reviews are cut
at 512 tokens: at 256 (half the cost per step) the same recipe reached 87.8% test (86.6%
validation, Nov 2026). The target of 88.5% is missed by 0.03 points on both seeds. Dropout
0.4 (one run, same command with --config.model.dropout_rate=0.4) reached 88.31% on validation and
89.73% on test; the recipe keeps 0.3, the better of the two on validation (by 4 of 2533 reviews,
within seed noise), rather than choose on the test split. On the 2-core AMD EPYC host (AVX2) of
2026-12-03, idle, seed 0 with `--config.progress_bar=False` reached 89.42% test and 88.27%
validation, but took 18m22s (1.4 steps/s), over the 15-minute target there; the host's numerics
differ from the Intel host's, and the two test figures of seed 0 (88.47%, 89.42%) show how much a
2533-review split moves with them.
"""

import sys

import ml_collections

from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models import rnn
from jaxmodels.report import Headline
from jaxmodels.sweep import Choice, LogUniform, Sweep, Uniform
from jaxmodels.train import base_config, run_experiment

# The result column of the README's table (python -m jaxmodels.report).
HEADLINE = Headline(
    "test_accuracy",
    "{} on the held-out test split",
    fmt="{:.2%}",
    about="bidirectional LSTM 128, 512 tokens",
)


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.batch_size = 64
  config.max_len = 512
  config.vocab_size = 20000
  config.num_train_steps = 1500
  config.optimizer = "adam"
  config.learning_rate = 2e-3
  config.schedule = "cosine"
  config.grad_clip_norm = 1.0
  config.log_every_steps = 50
  config.eval_every_steps = 500
  # The whole validation split (2533 reviews, 40 batches) at steps 500 and 1000: ~3.5% of the
  # run by the estimate in jaxmodels/train/config.py, so the intermediate evaluations stay exact.
  config.checkpoint_every_steps = 500
  config.model = ml_collections.ConfigDict(
      dict(
          embed_dim=128,
          hidden_size=128,
          cell="lstm",
          num_layers=1,
          bidirectional=True,
          dropout_rate=0.3,
      )
  )
  return config


def get_data(config):
  if config.synthetic_data:
    return SyntheticDataset(
        "sequence_classification",
        seq_len=config.max_len,
        vocab_size=config.vocab_size,
        num_classes=2,
    )
  from jaxmodels import data

  return data.load(
      "imdb", data_dir=config.data_dir or None, max_len=config.max_len, vocab_size=config.vocab_size
  )


def get_model(config, info):
  return rnn.RNNClassifier(
      vocab_size=info["vocab_size"], num_classes=info["num_classes"], **config.model
  )


def get_task(config, info):
  return tasks.Classification(
      info["num_classes"], label_smoothing=config.label_smoothing, inputs=("inputs", "lengths")
  )


def get_sweep() -> Sweep:
  """python -m jaxmodels.sweep experiments.imdb_lstm --workdir=runs/sweep_imdb_lstm --workers=2"""
  return Sweep(
      metric="eval_accuracy",
      mode="max",
      num_trials=12,
      params={
          "learning_rate": LogUniform(3e-4, 1e-2),
          "model.hidden_size": Choice([64, 128, 256]),
          "model.dropout_rate": Uniform(0.0, 0.5),
      },
  )


if __name__ == "__main__":
  run_experiment(sys.modules[__name__])
