"""GPT-2/GPT-3 language model on the one engine: a small model on Shakespeare here, the published
sizes (--config.model.size) for TPU pods and the ahead-of-time check.

  python -m experiments.gpt3 --workdir=runs/gpt3
  python -m jaxmodels.predict --workdir=runs/gpt3 --prompt="ROMEO:" --num_tokens=300
  python -m jaxmodels.aot experiments.gpt3 --topology=v4-1024 --config.model.size=gpt3-13b \
      --config.batch_size=1024 --config.fsdp=128 --config.tensor=4 \
      --config.model.scan_layers=True --config.model.remat=full --config.model.dtype=bfloat16

Expect (measured 2026-12-04 on the 2-core AMD EPYC CPU, idle): validation loss about 2.44
nats/char at step 200 and 2.04 at 400 (intermediate evaluations estimate it on 10 batches,
config.eval_batches), 1.94 on the whole split after the 600 steps (test 1.92) in 2m21s
(4.6 steps/s on 2 host devices, compile 2.5 s, MFU 50%), and a sample with speaker names and
line breaks. The aot command above: GPT-3 13B at its 2M-token batch fits a v4-1024 slice in
14.9 of each chip's 32 GiB (README, "The plan at scale").

`model.size` is "" by default: the model is the config.model.* fields, a 4x128 GPT with GPT-2's
architecture options that trains on this CPU in minutes, because that is what running the
command with no flags should do. A size from `jaxmodels.models.transformer.GPT_SIZES` ('gpt2',
'gpt2-medium', 'gpt2-large', 'gpt2-xl', 'gpt3-small', ... 'gpt3-175b') replaces the architecture
fields (model_dim, num_layers, num_heads, mlp_dim, vocab_size, max_len and the GPT-2 options);
remat, scan_layers, dtype and dropout_rate still come from config.model. The context is
`block_size`, or the model's max_len when block_size is 0. On Shakespeare the vocabulary is the
corpus' 84 characters whatever the size; with synthetic_data=True the tokens are random ids of
the model's vocabulary (50257 for a named size) at its context (2048 for GPT-3).
"""

import sys
from typing import Any

import jax.numpy as jnp
import ml_collections

from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models import transformer
from jaxmodels.predict import print_sample
from jaxmodels.report import Headline
from jaxmodels.train import base_config, run_experiment
from jaxmodels.train.config import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The fields a named size sets; everything else in config.model is kept.
ARCHITECTURE = (
    "vocab_size",
    "model_dim",
    "num_layers",
    "num_heads",
    "mlp_dim",
    "max_len",
    "tie_embeddings",
    "use_bias",
    "layer_norm_epsilon",
    "gelu_approximate",
)

# The result column of the README's table (python -m jaxmodels.report).
HEADLINE = Headline(
    "eval_loss",
    "validation {} nats/char",
    "{:.2f}",
    about="GPT-2 architecture, 4 layers, 128 wide",
)


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.batch_size = 32
  config.block_size = 0  # 0: the model's max_len
  config.num_train_steps = 600
  # GPT-3's optimiser (Adam b2=0.95, weight decay 0.1, clipping at 1, warm-up then cosine), at
  # a learning rate for the small default model.
  config.optimizer = "adamw"
  config.learning_rate = 3e-3
  config.b2 = 0.95
  config.weight_decay = 0.1
  config.grad_clip_norm = 1.0
  config.schedule = "warmup_cosine"
  config.warmup_steps = 50
  config.log_every_steps = 50
  config.eval_every_steps = 200
  # The evaluations at steps 200 and 400 read 10 batches (41k characters) of a fixed sample of
  # the validation split: ~2.2% of the run by the estimate in jaxmodels/train/config.py, where
  # the whole split (62 batches) would be ~13%. The final evaluation reads every split whole.
  config.eval_batches = 10
  config.checkpoint_every_steps = 200
  config.sample_prompt = "ROMEO:"
  config.sample_tokens = 200
  config.model = ml_collections.ConfigDict(
      dict(
          size="",
          vocab_size=84,  # the Shakespeare characters; synthetic data uses the same
          model_dim=128,
          num_layers=4,
          num_heads=4,
          mlp_dim=512,
          max_len=128,
          dropout_rate=0.0,
          tie_embeddings=True,
          use_bias=True,
          layer_norm_epsilon=1e-5,
          gelu_approximate=True,
          remat="none",
          scan_layers=False,
          dtype="float32",
      )
  )
  return config


def model_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """GPT keyword arguments from config.model, a named size filling the architecture fields."""
  fields = dict(config.model)
  size = fields.pop("size")
  if size:
    if size not in transformer.GPT_SIZES:
      raise ConfigError(
          f"config.model.size={size!r} is unknown; valid sizes: "
          f"{', '.join(transformer.GPT_SIZES)} (or '' for the config.model.* fields)"
      )
    fields.update({k: v for k, v in transformer.GPT_SIZES[size].items() if k in ARCHITECTURE})
  if fields["dtype"] not in DTYPES:
    raise ConfigError(
        f"config.model.dtype={fields['dtype']!r} is unknown; valid: {', '.join(DTYPES)}"
    )
  fields["dtype"] = DTYPES[fields["dtype"]]
  if fields["remat"] not in transformer.REMAT_POLICIES:
    raise ConfigError(
        f"config.model.remat={fields['remat']!r} is unknown; valid: "
        f"{', '.join(transformer.REMAT_POLICIES)}"
    )
  return fields


def block_size(config: ml_collections.ConfigDict) -> int:
  """The training context: config.block_size, or the model's max_len when that is 0."""
  max_len = model_fields(config)["max_len"]
  if config.block_size > max_len:
    raise ConfigError(
        f"config.block_size={config.block_size} exceeds the model's max_len={max_len}"
    )
  return config.block_size or max_len


def get_data(config):
  if config.synthetic_data:
    vocab = model_fields(config)["vocab_size"]
    return SyntheticDataset(
        "language_model",
        block_size=block_size(config),
        vocab_size=vocab,
        vocab=[chr(32 + i) for i in range(vocab)],
    )
  from jaxmodels import data

  return data.load("shakespeare", data_dir=config.data_dir or None, block_size=block_size(config))


def get_model(config, info):
  fields = model_fields(config)
  fields["vocab_size"] = info["vocab_size"]
  return transformer.GPT(**fields, param_dtype=jnp.float32)


def get_task(config, info):
  return tasks.LanguageModel()


def generate(model, variables, prompt_ids, num_tokens, rng, temperature=0.8, top_k=None):
  return transformer.generate(model, variables, prompt_ids, num_tokens, rng, temperature, top_k)


def on_finish(model, variables, info, config):
  """Prints a sample from the trained model and keeps it in summary.json."""
  return {"sample": print_sample(generate, model, variables, info["vocab"], config)}


if __name__ == "__main__":
  run_experiment(sys.modules[__name__])
