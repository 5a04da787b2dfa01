"""A stand-in experiment for the sweep tests: the experiment contract in a few ms of numpy.

  python -m tests.sweep_fixture_experiment --workdir=DIR [--config.<key>=<value> ...]

"Training" is gradient descent on 0.5 * |w - 1|^2 from w0 ~ N(0, I) (seeded) with the step size
a = learning_rate * batch_size / 64, so after k steps the loss is exactly
0.5 * (1 - a)^(2k) * |w0 - 1|^2 (`expected_loss`), which the tests use as the reference. It
writes config.json, metrics.jsonl, checkpoints/ckpt.json (resumed from), summary.json; exits 3
when config.fail is true and 2 on an unknown key. Its stand-in dataset (`get_data`) has a
validation split only while config.validation_size > 0, as the image datasets of jaxmodels.data
do; only then does it record eval_* metrics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import sys
import time

import ml_collections
import numpy as np

from jaxmodels.sweep import Choice, Sweep


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.learning_rate = 0.1
  config.batch_size = 64
  config.optimizer = "sgd"
  config.num_train_steps = 10
  config.eval_every_steps = 2
  config.step_sleep = 0.0  # seconds per step, so that tests can catch a trial mid-run
  config.fail = False
  config.validation_size = 16  # train examples held out as the validation split (0: none)
  config.model = ml_collections.ConfigDict({"width": 4})
  return config


def get_sweep() -> Sweep:
  return Sweep(
      metric="eval_accuracy",
      mode="max",
      sampler="grid",
      params={"learning_rate": Choice([0.05, 0.2]), "batch_size": Choice([32, 64])},
  )


NUM_TRAIN, NUM_TEST = 64, 16


class Data:
  """The stand-in dataset: NUM_TRAIN train and NUM_TEST test examples, `validation_size` of the
  train examples held out as a validation split."""

  def __init__(self, validation_size: int):
    if not 0 <= validation_size < NUM_TRAIN:
      raise ValueError(f"validation_size must be in [0, {NUM_TRAIN}); got {validation_size}")
    self.sizes = {"train": NUM_TRAIN - validation_size, "test": NUM_TEST}
    if validation_size:
      self.sizes["validation"] = validation_size

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return tuple(s for s in ("validation", "test") if s in self.sizes)

  def num_examples(self, split: str) -> int:
    return self.sizes[split]


def get_data(config: ml_collections.ConfigDict) -> Data:
  return Data(config.validation_size)


def initial_weights(config: ml_collections.ConfigDict) -> np.ndarray:
  return np.random.default_rng(config.seed).normal(size=config.model.width)


def expected_loss(config: ml_collections.ConfigDict, step: int) -> float:
  """The loss after `step` steps in closed form."""
  a = config.learning_rate * config.batch_size / 64
  return float(0.5 * (1 - a) ** (2 * step) * np.sum((initial_weights(config) - 1.0) ** 2))


def accuracy(loss: float) -> float:
  return 1.0 / (1.0 + loss)


def parse(argv: list[str]) -> tuple[Path, ml_collections.ConfigDict]:
  config, workdir = get_config(), None
  valid = sorted(_flat(config.to_dict()))
  for arg in argv:
    if arg.startswith("--workdir="):
      workdir = Path(arg.split("=", 1)[1])
    elif arg.startswith("--config.") and "=" in arg:
      key, value = arg[len("--config.") :].split("=", 1)
      if key not in valid:
        _die(f'unknown config key {key!r}; valid keys: {", ".join(valid)}')
      _set(config, key, value)
    else:
      _die(f"unknown flag {arg!r}")
  if workdir is None:
    _die("--workdir is required")
  return workdir, config


def _flat(d: dict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in d.items():
    keys += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
  return keys


def _set(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  default = node[leaf]
  if isinstance(default, bool):
    if text.lower() not in ("true", "false"):
      _die(f"config.{key} must be true or false, got {text!r}")
    node[leaf] = text.lower() == "true"
  else:
    try:
      node[leaf] = type(default)(text)
    except ValueError:
      _die(f"config.{key} must be {type(default).__name__}, got {text!r}")


def _die(msg: str) -> None:
  print(f"sweep_fixture_experiment: {msg}", file=sys.stderr)
  sys.exit(2)


def _write_json(path: Path, obj: dict) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj))
  os.replace(tmp, path)


def train(workdir: Path, config: ml_collections.ConfigDict) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "checkpoints").mkdir(exist_ok=True)
  _write_json(workdir / "config.json", config.to_dict())
  summary_path, ckpt_path = workdir / "summary.json", workdir / "checkpoints" / "ckpt.json"
  if summary_path.exists():
    print("fixture: finished run, nothing to do")
    return
  if config.fail:
    print("fixture: failing as asked (config.fail=true)", file=sys.stderr)
    sys.exit(3)
  target = np.ones(config.model.width)
  w, start = initial_weights(config), 0
  if ckpt_path.exists():
    ckpt = json.loads(ckpt_path.read_text())
    w, start = np.array(ckpt["w"]), ckpt["step"]
  has_eval = "validation" in get_data(config).eval_splits
  print(f"fixture: start at step {start}", flush=True)
  a = config.learning_rate * config.batch_size / 64
  t0 = time.time()
  with open(workdir / "metrics.jsonl", "a") as metrics:
    for step in range(start + 1, config.num_train_steps + 1):
      w = w - a * (w - target)
      loss = float(0.5 * np.sum((w - target) ** 2))
      metrics.write(json.dumps({"step": step, "split": "train", "loss": loss}) + "\n")
      if step % config.eval_every_steps == 0 or step == config.num_train_steps:
        if has_eval:
          record = {"step": step, "split": "eval", "loss": loss, "accuracy": accuracy(loss)}
          metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        _write_json(ckpt_path, {"step": step, "w": w.tolist()})
      time.sleep(config.step_sleep)
  loss = float(0.5 * np.sum((w - target) ** 2))
  wall = time.time() - t0
  summary = {"train_loss": loss, "test_loss": loss, "test_accuracy": accuracy(loss)}
  if has_eval:
    summary.update(eval_loss=loss, eval_accuracy=accuracy(loss))
  summary.update(
      steps=config.num_train_steps,
      wall_s=wall,
      compile_s=0.0,
      resumed_from=start,
      examples_per_s=config.batch_size * (config.num_train_steps - start) / max(wall, 1e-9),
  )
  _write_json(summary_path, summary)


if __name__ == "__main__":
  train(*parse(sys.argv[1:]))
