"""Grapheme-to-phoneme on the CMU pronouncing dictionary with a Transformer encoder-decoder.

  python -m experiments.cmudict_transformer --workdir=runs/cmudict_transformer

The final evaluation decodes with beam search (4 beams) and reports exact match and word error
rate (1 - exact match) against each word's first dictionary pronunciation, stress digits
included; word_error_rate_no_stress beside it counts a phoneme right whatever its stress digit
(published G2P results often drop stress; they also accept any listed pronunciation, which the
dataset module does not keep). Expect (measured 2026-12-03 on the 2-core CPU, an Intel Xeon
with AVX-512, idle, one run, before the no-stress rate was reported): test word error rate 33.3%
(validation 33.9%) after 10000 steps (11 epochs) in 27m13s (6.5 steps/s on 2 host devices, MFU
36%). Greedy decoding of the same weights: 34.0% test, 34.7%
validation; a length penalty of 0.6 did not help on validation (34.0%). Training batches come
from 4 length buckets (`length_buckets`: each batch holds words of similar length and is cut to
the longest of them); label smoothing 0.1 and a moving average of the weights (`ema_decay`
0.999) are on. Teacher-forced validation token accuracy climbs slowly to the end (90.9% at
step 2000, 93.5% at 8000, 93.6% at 10000) while the train token accuracy reaches 96.8%. Dropout
0.1 (same recipe) costs speed on a CPU, where drawing the masks dominates: 3.7 steps/s against
6.5 without (5.0 with masks of 16 random bits per element instead of 32, in a trial), so 10000
steps do not fit 30 minutes; it also under-fitted: 90.4% validation token accuracy at step
4000 against 92.1% without, where that trial was stopped. The 30% target is not reached.
"""

import functools
import re
import sys

import ml_collections

from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models import transformer
from jaxmodels.report import Headline
from jaxmodels.sweep import IntRange, LogUniform, Sweep, Uniform
from jaxmodels.train import ConfigError, base_config, run_experiment

# The result column of the README's table (python -m jaxmodels.report).
HEADLINE = Headline("test_word_error_rate", "test word error rate {}", about="3+3 layers, 128 wide")


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.batch_size = 128
  config.num_train_steps = 10000
  config.optimizer = "adamw"
  config.learning_rate = 2e-3
  config.weight_decay = 0.01
  config.schedule = "warmup_cosine"
  config.warmup_steps = 200
  config.label_smoothing = 0.1
  config.ema_decay = 0.999
  config.length_buckets = 4  # batches of similar length: ~3/4 of the positions were padding
  config.log_every_steps = 100
  config.eval_every_steps = 2000
  # The whole validation split (6395 words, 50 batches, teacher-forced) at steps 2000-8000:
  # ~1.3% of the run by the estimate in jaxmodels/train/config.py, so they stay exact.
  config.checkpoint_every_steps = 1000
  # The final evaluation decodes with a beam of this width (1: greedy), ranking hypotheses by
  # log p / ((5 + n) / 6) ** length_penalty.
  config.beam_size = 4
  config.length_penalty = 0.0
  config.model = ml_collections.ConfigDict(
      dict(model_dim=128, num_layers=3, num_heads=4, mlp_dim=512, dropout_rate=0.0)
  )
  return config


def get_data(config):
  if config.synthetic_data:
    return SyntheticDataset("seq2seq", src_len=24, tgt_len=24, src_vocab_size=32, tgt_vocab_size=72)
  from jaxmodels import data

  return data.load(
      "cmudict", data_dir=config.data_dir or None, length_buckets=config.length_buckets
  )


def get_model(config, info):
  return transformer.EncoderDecoder(
      src_vocab_size=info["src_vocab_size"],
      tgt_vocab_size=info["tgt_vocab_size"],
      max_len=max(info["src_len"], info["tgt_len"]),
      **config.model,
  )


def get_task(config, info):
  if config.beam_size < 1:
    raise ConfigError(f"config.beam_size={config.beam_size} must be >= 1 (1 decodes greedily).")
  decode = functools.partial(
      transformer.beam_search_decode,
      beam_size=config.beam_size,
      length_penalty=config.length_penalty,
  )
  vocab = info.get("tgt_vocab")
  return tasks.Seq2Seq(
      decode_fn=decode,
      label_smoothing=config.label_smoothing,
      token_classes=unstressed_classes(vocab) if vocab else None,
      classes_name="no_stress",
  )


def unstressed_classes(vocab: list[str]) -> tuple[int, ...]:
  """Phoneme id -> id of its class without the stress digit (AH0, AH1, AH2 -> one class)."""
  index: dict[str, int] = {}
  return tuple(index.setdefault(re.sub(r"[012]$", "", p), len(index)) for p in vocab)


def get_sweep() -> Sweep:
  """python -m jaxmodels.sweep experiments.cmudict_transformer \
  --workdir=runs/sweep_cmudict_transformer --workers=2
  """
  return Sweep(
      metric="eval_loss",
      mode="min",
      num_trials=12,
      params={
          "learning_rate": LogUniform(3e-4, 3e-3),
          "model.num_layers": IntRange(2, 4),
          "model.dropout_rate": Uniform(0.0, 0.3),
      },
  )


if __name__ == "__main__":
  run_experiment(sys.modules[__name__])
