"""Use a trained workdir: predict classes for examples, or sample text from a prompt.

python -m jaxmodels.predict --workdir=runs/digits_mlp --split=test --num_examples=8
python -m jaxmodels.predict --workdir=runs/shakespeare_gpt --prompt="ROMEO:" --num_tokens=300
python -m jaxmodels.predict --workdir=runs/fashion_mnist_cnn --quantized  # DIR/quantized/
python -m jaxmodels.predict --init_from=DIR/gpt2 --prompt="Hello" --num_tokens=40
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import importlib
import os
import sys
from types import ModuleType
from typing import Any

from etils import epath
import jax
import ml_collections
import numpy as np

from jaxmodels import _env
from jaxmodels.train import checkpoint, loop, optim, steps, storage


@dataclasses.dataclass
class Trained:
  experiment: ModuleType
  config: ml_collections.FrozenConfigDict
  data: Any
  model: Any
  variables: dict[str, Any]
  step: int


def load(workdir: str) -> Trained:
  """The experiment, config, model and latest-checkpoint variables of a workdir."""
  return restore(workdir, *load_run(workdir))


def restore(
    workdir: str, experiment: ModuleType, config: ml_collections.FrozenConfigDict, data, model
) -> Trained:
  """The latest checkpoint of `workdir` as variables of `model` (from `load_run`)."""
  task = experiment.get_task(config, data.info)
  tx = optim.make_optimizer(config)
  first = next(data.train_batches(config.batch_size, config.seed))
  target = steps.init_state(model, task, tx, first, config.seed)
  ckpts = checkpoint.Checkpoints(workdir, config.keep_checkpoints)
  restored = ckpts.restore_latest(target)
  ckpts.close()
  if restored is None:
    raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint yet; train first.")
  state, _ = restored
  variables = {"params": optim.eval_params(state.params, state.opt_state), **state.model_state}
  return Trained(experiment, config, data, model, variables, int(state.step))


def load_run(workdir: str) -> tuple[ModuleType, ml_collections.FrozenConfigDict, Any, Any]:
  """(experiment, config, data, model) of a training run's workdir that holds checkpoints/."""
  storage.check_remote(workdir, write=False)  # gs://: one paragraph, fast, when unreachable
  run_path = epath.Path(workdir, "run.json")
  if not run_path.exists():
    raise FileNotFoundError(
        f"{run_path} does not exist: --workdir must be the directory of a "
        "training run (python -m experiments.<name> --workdir=DIR)."
    )
  if not epath.Path(workdir, "checkpoints").exists():  # Checkpoints() would create it
    raise FileNotFoundError(f"{workdir} holds no checkpoints/ yet; train first.")
  again = "run the training command again to rewrite it (it resumes from the checkpoints)"
  run = loop.read_json(run_path, f"It names the experiment of this workdir: {again}.")
  experiment = importlib.import_module(run["experiment"])
  config = ml_collections.FrozenConfigDict(
      loop.read_json(
          os.path.join(workdir, "config.json"),
          f"It holds the config of this workdir: {again} with --allow_config_change.",
      )
  )
  data = experiment.get_data(config)
  return experiment, config, data, experiment.get_model(config, data.info)


def load_quantized(workdir: str) -> Trained:
  """Like `load`, with the int8 model and variables that `python -m jaxmodels.quantize` wrote
  to DIR/quantized/ instead of the float32 checkpoint."""
  from jaxmodels import quantize

  experiment, config, data, model = load_run(workdir)
  task = experiment.get_task(config, data.info)
  first = next(data.train_batches(config.batch_size, config.seed))
  saved = quantize.load(workdir, model, task.model_args(first))
  return Trained(experiment, config, data, saved.model, saved.variables, saved.meta.get("step", -1))


def predict_classes(trained: Trained, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(probabilities [N, classes], predicted classes [N]) for a batch of model inputs."""
  logits = trained.model.apply(trained.variables, inputs, train=False)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  return probs, probs.argmax(-1)


def encode_prompt(prompt: str, vocab: list[str]) -> np.ndarray:
  """Character ids of `prompt`; characters outside the vocabulary are an error that names them."""
  index = {ch: i for i, ch in enumerate(vocab)}
  unknown = sorted({ch for ch in prompt if ch not in index})
  if unknown:
    raise ValueError(
        f"--prompt has characters outside the model's vocabulary: {unknown!r}. "
        f"Valid characters: {''.join(sorted(vocab))!r}"
    )
  if not prompt:
    raise ValueError("--prompt is empty: give at least one character to start from.")
  return np.array([[index[ch] for ch in prompt]], np.int32)


def print_sample(
    generate, model: Any, variables: Any, vocab: list[str], config: ml_collections.ConfigDict
) -> str:
  """Continues config.sample_prompt by config.sample_tokens characters, prints and returns it."""
  prompt = "".join(ch for ch in config.sample_prompt if ch in vocab) or vocab[0]
  ids = generate(
      model,
      variables,
      encode_prompt(prompt, vocab),
      config.sample_tokens,
      jax.random.PRNGKey(config.seed),
  )
  text = "".join(vocab[i] for i in np.asarray(ids)[0])
  print(f"--- sample ---\n{text}\n--------------", flush=True)
  return text


def check_flags(num_examples: int, num_tokens: int, temperature: float, top_k: int) -> None:
  """Raises ValueError naming the first flag outside its range."""
  for name, value, low, meaning in (
      ("num_examples", num_examples, 1, "examples to predict"),
      ("num_tokens", num_tokens, 1, "tokens to sample"),
      ("temperature", temperature, 0, "0 is greedy"),
      ("top_k", top_k, 0, "0 samples among all tokens"),
  ):
    if value < low:
      raise ValueError(f"--{name}={value}: must be >= {low} ({meaning}).")


def sample_pretrained(
    source: str, prompt: str, num_tokens: int, seed: int, temperature: float, top_k: int | None
) -> str:
  """Continues `prompt` with the Hugging Face GPT-2 of `source` (a directory or hf:NAME) and the
  BPE tokenizer beside its weights: the prompt and its continuation as text."""
  from jaxmodels.models import convert, transformer

  directory = convert.resolve_huggingface(source)
  model, variables = convert.load_huggingface(directory)
  tokenizer = convert.load_tokenizer(directory, vocab_size=model.vocab_size)
  ids = tokenizer.encode(prompt).ids
  if not ids:
    raise ValueError("--prompt is empty: give at least one character to start from.")
  out = transformer.generate(
      model,
      variables,
      np.array([ids], np.int32),
      num_tokens,
      jax.random.PRNGKey(seed),
      temperature,
      top_k,
  )
  return tokenizer.decode(np.asarray(out)[0].tolist())


def main(argv: list[str]) -> None:
  from absl import flags

  del argv
  fv = flags.FLAGS
  check_flags(fv.num_examples, fv.num_tokens, fv.temperature, fv.top_k)
  if fv.init_from is not None:
    if fv.workdir is not None:
      raise ValueError(
          "--init_from and --workdir are exclusive: give --workdir=DIR for a training run, or "
          "--init_from=DIR for a Hugging Face GPT-2 directory (or hf:NAME)."
      )
    if fv.prompt is None:
      raise ValueError(f"--init_from={fv.init_from} is a language model: give --prompt=TEXT.")
    if fv.quantized:
      raise ValueError("--quantized reads DIR/quantized/ of a training run: give --workdir=DIR.")
    print(
        sample_pretrained(
            fv.init_from, fv.prompt, fv.num_tokens, fv.seed, fv.temperature, fv.top_k or None
        )
    )
    return
  if fv.workdir is None:
    raise ValueError(
        "give --workdir=DIR (a training run) or --init_from=DIR (a Hugging Face GPT-2 "
        "directory, or hf:NAME)."
    )
  trained = load_quantized(fv.workdir) if fv.quantized else load(fv.workdir)
  if fv.prompt is None and hasattr(trained.experiment, "generate"):
    raise ValueError(
        f"{trained.experiment.__name__} is a language model: give --prompt=TEXT to continue "
        "(with --num_tokens, --temperature, --top_k)."
    )
  if fv.prompt is not None:
    if not hasattr(trained.experiment, "generate"):
      raise ValueError(
          f"{trained.experiment.__name__} is not a language model: --prompt needs "
          "one (shakespeare_gpt, shakespeare_rnn)."
      )
    vocab = trained.data.info["vocab"]
    ids = encode_prompt(fv.prompt, vocab)
    out = trained.experiment.generate(
        trained.model,
        trained.variables,
        ids,
        fv.num_tokens,
        jax.random.PRNGKey(fv.seed),
        fv.temperature,
        fv.top_k or None,
    )
    print("".join(vocab[i] for i in np.asarray(out)[0]))
    return
  try:
    available = trained.data.num_examples(fv.split)
  except KeyError as e:  # the dataset's message names its splits
    raise ValueError(f"--split={fv.split}: {e.args[0]}") from e
  batch = next(trained.data.eval_batches(fv.split, min(fv.num_examples, available)))
  probs, classes = predict_classes(trained, batch["inputs"])
  for i in range(int(batch["mask"].sum())):
    print(
        f"example {i}: predicted {classes[i]} (p={probs[i, classes[i]]:.3f}), "
        f"label {batch['targets'][i]}"
    )


def guard(fn: Callable[[], None], *errors: type[Exception]) -> None:
  """Runs a workdir command's `fn` with absl logging at WARNING; a bad flag, workdir or
  checkpoint (or one of `errors`) is one 'error:' line and exit status 2, no traceback."""
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  try:
    fn()
  except (
      ValueError,
      FileNotFoundError,
      checkpoint.CheckpointError,
      storage.StorageError,
      loop.WorkdirError,
      *errors,
  ) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def cli() -> None:
  from absl import app, flags

  try:
    _env.configure_process()
  except _env.EnvError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  flags.DEFINE_string("workdir", None, "A training run's workdir.")
  flags.DEFINE_string(
      "init_from",
      None,
      "A Hugging Face GPT-2 directory (config.json, model.safetensors or pytorch_model.bin, "
      "tokenizer.json or vocab.json + merges.txt) or hf:NAME, instead of --workdir.",
  )
  flags.DEFINE_bool(
      "quantized",
      False,
      "Use the int8 model of DIR/quantized/ (python -m jaxmodels.quantize) instead of the "
      "float32 checkpoint.",
  )
  flags.DEFINE_string("split", "test", "Split to take examples from (classifiers).")
  flags.DEFINE_integer("num_examples", 8, "Examples to predict (classifiers).")
  flags.DEFINE_string("prompt", None, "Text to continue (language models).")
  flags.DEFINE_integer("num_tokens", 200, "Tokens to sample after the prompt.")
  flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 is greedy.")
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0 for all.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")

  app.run(lambda argv: guard(lambda: main(argv)))


if __name__ == "__main__":
  cli()
