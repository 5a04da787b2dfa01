"""Experiment configs: the keys every experiment has, checks, and freezing."""

from __future__ import annotations

import ast
from collections.abc import Sequence
import json
from typing import Any

import ml_collections

PARALLELISM = ("pmap", "mesh", "none")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")
DP_PER_EXAMPLE = ("auto", "ghost", "vmap")
QUANTIZATIONS = ("", "int8_qat")  # "": float32 training; jaxmodels/quantize/__init__.py
# Keys that may change when a run resumes: they do not change what is computed.
RESUMABLE_KEYS = (
    "num_train_steps",
    "log_every_steps",
    "eval_every_steps",
    "eval_batches",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "max_steps_in_flight",
    "progress_bar",
    "profile_steps",
    "data_dir",
    "compilation_cache_dir",
    # The mesh shape changes the layout, not the values (equal to one device within 1e-5).
    "fsdp",
    "tensor",
)


class ConfigError(ValueError):
  """A config key or value that cannot be used; the message says which and what is valid."""


def base_config() -> ml_collections.ConfigDict:
  """The keys every experiment has, with defaults; an experiment overrides and adds to them."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128
  c.eval_batch_size = 0  # 0: same as batch_size
  c.num_train_steps = 1000
  c.learning_rate = 1e-3
  c.optimizer = "adam"
  c.momentum = 0.9
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.weight_decay = 0.0
  c.schedule = "constant"
  c.warmup_steps = 0
  c.step_boundaries = (0.5, 0.75)  # step schedule: fractions of num_train_steps
  c.step_decay = 0.1
  c.grad_clip_norm = 0.0  # 0 disables clipping
  c.grad_accum_steps = 1  # >1: sum the gradients of that many micro-batches per update
  c.label_smoothing = 0.0
  # >0: evaluation, the summary and predictions use a moving average of the parameters with this
  # decay (train/optim.with_params_ema); 0: the parameters themselves.
  c.ema_decay = 0.0
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  # >0: evaluations during training read that many batches of a fixed sample of the split (an
  # estimate); the final evaluation always reads the whole split. Experiments choose it so that
  # their intermediate evaluations cost <= 5% of a default run, estimated as
  #   evals x batches per eval x r / num_train_steps,
  # with r = (eval batch time) / (train step time) ~ 0.65: measured 31 ms / 48.6 ms for the
  # 4x128 GPT at batch 12 (issue 20); forward-only FLOPs alone would give 1/3, but small models'
  # batches cost more than their FLOPs say.
  c.eval_batches = 0
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.parallelism = "pmap"
  c.fsdp = 1  # mesh only: size of the axis that shards parameters, optimizer state and batch
  c.tensor = 1  # mesh only: size of the axis that shards heads, MLP width and vocabulary
  c.max_steps_in_flight = 2
  c.synthetic_data = False
  c.data_dir = ""  # "": $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.progress_bar = True
  c.profile_steps = 0  # >0: write a jax.profiler trace of that many steps after step 10
  c.compilation_cache_dir = ""  # "": $JAXMODELS_CACHE_DIR or ~/.cache/jaxmodels/xla; "none": off
  # Fine-tuning (jaxmodels/train/init_from.py): the weights step 0 starts from ("": the seed's
  # init); a workdir, DIR@STEP, a torchvision file or name, a Hugging Face directory or hf:NAME.
  c.init_from = ""
  c.trainable = ""  # regex on '/'-joined parameter paths; the others are frozen ("": all train)
  c.freeze_batch_stats = False  # BatchNorm uses and keeps its running statistics (torch's eval())
  # "int8_qat": quantization-aware training, the forward pass on int8 weights (qwix) with float32
  # parameters, for `python -m jaxmodels.quantize` to quantize after training.
  c.quantization = ""
  c.dp = dp_config()
  return c


def dp_config() -> ml_collections.ConfigDict:
  """DP-SGD (jaxmodels/train/privacy.py): give exactly one of noise_multiplier and epsilon."""
  dp = ml_collections.ConfigDict()
  dp.enabled = False
  dp.l2_clip = 1.0  # each example's gradient is scaled to at most this L2 norm
  dp.noise_multiplier = ml_collections.config_dict.placeholder(float)  # noise std / l2_clip
  dp.epsilon = ml_collections.config_dict.placeholder(float)  # target: calibrates the noise
  dp.delta = ml_collections.config_dict.placeholder(float)  # None: 1/N down to a power of ten
  dp.per_example = "auto"  # 'ghost' (ghost clipping), 'vmap', or 'auto': ghost where it applies
  return dp


def check(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Rejects values the engine cannot run, naming the key and what would be valid."""
  _choice(config, "parallelism", PARALLELISM)
  _choice(config, "optimizer", OPTIMIZERS)
  _choice(config, "schedule", SCHEDULES)
  _choice(config, "quantization", QUANTIZATIONS)
  for key in (
      "batch_size",
      "num_train_steps",
      "log_every_steps",
      "eval_every_steps",
      "checkpoint_every_steps",
      "keep_checkpoints",
      "max_steps_in_flight",
      "fsdp",
      "tensor",
      "grad_accum_steps",
  ):
    if config[key] <= 0:
      raise ConfigError(f"config.{key}={config[key]} must be a positive integer.")
  if config.profile_steps < 0:
    raise ConfigError(f"config.profile_steps={config.profile_steps} must be >= 0 (0: no trace).")
  if config.eval_batch_size < 0:
    raise ConfigError(
        f"config.eval_batch_size={config.eval_batch_size} must be >= 0 (0: batch_size)."
    )
  if not config.learning_rate > 0:
    raise ConfigError(f"config.learning_rate={config.learning_rate} must be > 0.")
  if config.warmup_steps < 0 or config.grad_clip_norm < 0 or config.weight_decay < 0:
    raise ConfigError(
        "config.warmup_steps, config.grad_clip_norm and config.weight_decay must be "
        f">= 0; got {config.warmup_steps}, {config.grad_clip_norm}, {config.weight_decay}."
    )
  _check_warmup(config)
  _check_dp(config)
  _check_ranges(config)
  _check_counts(config)
  if config.parallelism == "mesh" and num_devices % (config.fsdp * config.tensor):
    valid = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
    raise ConfigError(
        f"config.fsdp={config.fsdp} x config.tensor={config.tensor} = "
        f"{config.fsdp * config.tensor} must divide the {num_devices} devices; valid products: "
        f"{', '.join(map(str, valid))}."
    )
  shards = batch_shards(config, num_devices)
  if config.parallelism != "none":
    where = f"the {num_devices} devices of parallelism='{config.parallelism}'"
    if shards != num_devices:
      where = (
          f"the data x fsdp = {shards} batch shards of parallelism='mesh' "
          f"({num_devices} devices / tensor={config.tensor})"
      )
    for key in ("batch_size", "eval_batch_size"):
      if config[key] % shards:
        raise ConfigError(
            f"config.{key}={config[key]} does not divide across {where}; use a multiple of "
            f"{shards}, set JAXMODELS_HOST_DEVICES to a divisor, or --config.parallelism=none."
        )
  if config.batch_size % (shards * config.grad_accum_steps):
    raise ConfigError(
        f"config.batch_size={config.batch_size} does not split into config.grad_accum_steps="
        f"{config.grad_accum_steps} micro-batches on each of {shards} device(s); use a batch_size "
        f"that is a multiple of {shards * config.grad_accum_steps}."
    )


def _check_warmup(config: ml_collections.ConfigDict) -> None:
  """A warmup leaves at least one step at the full learning rate, where a decay can begin."""
  warmup, steps = config.warmup_steps, config.num_train_steps
  if warmup and warmup >= steps:
    raise ConfigError(
        f"config.warmup_steps={warmup} must be less than config.num_train_steps={steps}: the "
        "learning rate would still be warming up at the last step, and the "
        f"{config.schedule!r} schedule would never reach its full value. Give "
        f"--config.warmup_steps a value below {steps} (0: no warmup), or train for more steps."
    )


def _check_dp(config: ml_collections.ConfigDict) -> None:
  """DP-SGD's keys: a positive clip, exactly one of noise_multiplier and epsilon, delta in (0, 1),
  and no option whose examples are not independent."""
  dp = config.get("dp")
  if dp is None or not dp.enabled:
    return
  sigma, epsilon, delta = dp.noise_multiplier, dp.epsilon, dp.delta
  if not dp.l2_clip > 0:
    raise ConfigError(f"config.dp.l2_clip={dp.l2_clip} must be > 0 (the per-example L2 bound).")
  per_example = dp.get("per_example", "auto")
  if per_example not in DP_PER_EXAMPLE:
    raise ConfigError(
        f"config.dp.per_example={per_example!r} is not valid; choose one of: "
        f"{', '.join(DP_PER_EXAMPLE)}."
    )
  if (sigma is None) == (epsilon is None):
    raise ConfigError(
        "config.dp.enabled=True needs exactly one of config.dp.noise_multiplier (the noise std "
        "over l2_clip) and config.dp.epsilon (a target the noise is calibrated to); got "
        f"noise_multiplier={sigma}, epsilon={epsilon}."
    )
  if sigma is not None and not sigma > 0:
    raise ConfigError(
        f"config.dp.noise_multiplier={sigma} must be > 0: without noise no epsilon is finite."
    )
  if epsilon is not None and not epsilon > 0:
    raise ConfigError(f"config.dp.epsilon={epsilon} must be > 0 (for example 1, 3 or 8).")
  if delta is not None and not 0 < delta < 1:
    raise ConfigError(
        f"config.dp.delta={delta} must be in (0, 1), well below 1/N (unset: 1/N rounded down "
        "to a power of ten)."
    )
  if config.grad_accum_steps > 1:
    raise ConfigError(
        f"config.dp.enabled=True with config.grad_accum_steps={config.grad_accum_steps}: DP-SGD "
        "clips and noises the whole batch's per-example gradients in one step and does not "
        "accumulate micro-batches; set --config.grad_accum_steps=1."
    )


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  """Rates and fractions in their ranges."""
  if not config.eps > 0:
    raise ConfigError(
        f"config.eps={config.eps} must be > 0: it keeps the optimizer's update finite."
    )
  unit = [("label_smoothing", config.label_smoothing), ("momentum", config.momentum)]
  unit += [("ema_decay", config.ema_decay)]
  unit += [("b1", config.b1), ("b2", config.b2)]
  unit += [(f"model.{k}", v) for k, v in _flat(config).items() if k.endswith("dropout_rate")]
  for key, value in unit:
    if not 0 <= value < 1:
      raise ConfigError(f"config.{key}={value} must be in [0, 1).")
  if not 0 < config.step_decay <= 1:
    raise ConfigError(f"config.step_decay={config.step_decay} must be in (0, 1].")
  if any(not 0 < f < 1 for f in config.step_boundaries):
    raise ConfigError(
        f"config.step_boundaries={tuple(config.step_boundaries)}: each must be a fraction of "
        "num_train_steps in (0, 1)."
    )


def _check_counts(config: ml_collections.ConfigDict) -> None:
  """The model's sizes and counts are positive and its epsilons > 0; no integer key is negative."""
  model = config.get("model")
  for key, value in flat_keys(model).items() if _is_config(model) else ():
    name = key.rsplit(".", 1)[-1]
    if _is_int(value) and value < 1:
      raise ConfigError(f"config.model.{key}={value} must be a positive integer (a size or count).")
    if isinstance(value, (tuple, list)) and any(_is_int(v) and v < 1 for v in value):
      raise ConfigError(
          f"config.model.{key}={tuple(value)}: each entry is a size and must be a positive integer."
      )
    if isinstance(value, float) and (name == "eps" or name.endswith("epsilon")) and value <= 0:
      raise ConfigError(f"config.model.{key}={value} must be > 0.")
  for key, value in flat_keys(config).items():
    if _is_int(value) and value < 0:
      raise ConfigError(f"config.{key}={value} must be >= 0.")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_config(value: Any) -> bool:
  return isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict))


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The numeric keys of config.model ('dropout_rate', 'attention.dropout_rate', ...)."""
  model = config.get("model")
  if not _is_config(model):
    return {}
  return {k: v for k, v in flat_keys(model).items() if isinstance(v, (int, float))}


def batch_shards(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """How many parts the global batch is split into: 1, all devices, or mesh data x fsdp."""
  if config.parallelism == "none":
    return 1
  if config.parallelism == "mesh":
    return num_devices // config.tensor
  return num_devices


def _choice(config: ml_collections.ConfigDict, key: str, valid: Sequence[str]) -> None:
  if config[key] not in valid:
    raise ConfigError(
        f"config.{key}={config[key]!r} is not valid; choose one of: {', '.join(valid)}."
    )


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{'a': 1, 'model.hidden': 2, ...} for every leaf."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flat_keys(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def check_overrides(argv: Sequence[str], config: ml_collections.ConfigDict) -> None:
  """Checks `--config.key=value` arguments before absl applies them, for a clear message."""
  leaves = flat_keys(config)
  for i, arg in enumerate(argv):
    if not arg.startswith("--config."):
      continue
    key, equals, value = arg[len("--config.") :].partition("=")
    if key not in leaves:
      raise ConfigError(
          f"--config.{key}: unknown config key. Valid keys: {', '.join(sorted(leaves))}."
      )
    default = leaves[key]
    if not equals and not isinstance(default, bool):
      raise ConfigError(_missing_value(key, argv[i + 1] if i + 1 < len(argv) else None))
    if not _parses_as(value, default):
      raise ConfigError(f"--config.{key}={value!r}: expected {_expected(key, default)}.")


# Alternative keys for one setting: the one given on the command line replaces the other's
# value from get_config() (mnist_dp defaults dp.epsilon; --config.dp.noise_multiplier=X alone
# then means "this noise instead").
ALTERNATIVES = (("dp.noise_multiplier", "dp.epsilon"),)


def prefer_given(argv: Sequence[str], config: ml_collections.ConfigDict) -> None:
  """Unsets in `config` (before flags are parsed) the alternative of a key that `argv` gives
  alone; given both, config.check still reports the clash."""
  given = {a[len("--config.") :].partition("=")[0] for a in argv if a.startswith("--config.")}
  for pair in ALTERNATIVES:
    for key, other in (pair, pair[::-1]):
      if key in given and other not in given:
        parent, _, leaf = other.rpartition(".")
        with config.unlocked():
          config[parent][leaf] = None


def _missing_value(key: str, following: str | None) -> str:
  if following is not None and not following.startswith("--"):
    return (
        f"--config.{key} {following}: a config key and its value are one argument, joined by "
        f"'=': write --config.{key}={following}."
    )
  return f"--config.{key} has no value: write --config.{key}=VALUE."


def _expected(key: str, default: Any) -> str:
  """What a value for `key` must look like, with the default as the example."""
  if isinstance(default, tuple):
    kind = _element_type(default)
    what = f"a tuple of {kind.__name__}" if kind else "a tuple"
    return f"{what}, such as the default: --config.{key}='{default!r}'"
  return f"a value of type {type(default).__name__} (default {default!r})"


def _element_type(default: tuple) -> type | None:
  """int, float or str when every element of a tuple default is one; None when unknown."""
  for kind in (int, float, str):
    if default and all(_has_type(v, kind) for v in default):
      return kind
  return None


def _has_type(value: Any, kind: type) -> bool:
  if isinstance(value, bool):
    return kind is bool
  if kind is float:
    return isinstance(value, (int, float))
  return isinstance(value, kind)


def _tuple_items(value: str) -> tuple | None:
  """The tuple ml_collections makes of a command-line string; None where it cannot make one."""
  try:
    parsed = ast.literal_eval(value)
  except ValueError:  # a bare word
    parsed = value
  except SyntaxError:
    if "," in value or " " in value:
      return None
    parsed = value
  if isinstance(parsed, (tuple, list)):
    return tuple(parsed)
  return None if isinstance(parsed, (dict, set)) else (parsed,)


def _parses_as(value: str, default: Any) -> bool:
  if isinstance(default, bool):
    return value.lower() in ("true", "false", "1", "0", "")
  if isinstance(default, tuple):
    items, kind = _tuple_items(value), _element_type(default)
    return items is not None and (kind is None or all(_has_type(v, kind) for v in items))
  for kind in (int, float):
    if isinstance(default, kind):
      try:
        kind(value)
        return True
      except ValueError:
        return False
  return True


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def differing_keys(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """Keys whose value differs from a saved config.json, ignoring run-length and logging keys
  (num_train_steps only under a constant learning rate: the other schedules are built on it)."""
  now = flat_keys(ml_collections.ConfigDict(json.loads(to_json(config))))
  before = flat_keys(ml_collections.ConfigDict(saved))
  keys = sorted(set(now) | set(before))
  # A key the saved config lacks (added to the engine after that run began) had its default.
  defaults = flat_keys(ml_collections.ConfigDict(json.loads(to_json(base_config()))))
  before = {k: before[k] if k in before else defaults.get(k) for k in keys}
  resumable = set(RESUMABLE_KEYS)
  if now.get("schedule") != "constant" or before.get("schedule") != "constant":
    resumable.discard("num_train_steps")  # the schedule's horizon: a new one bends the lr
  if calibrates_noise(now) or calibrates_noise(before):
    resumable.discard("num_train_steps")  # the noise was calibrated for that many steps
  # A key the engine gained after the saved run began, at its default, computes what that run
  # computed without it.
  defaults = flat_keys(base_config())
  added = {k for k in now if k not in before and k in defaults and now[k] == defaults[k]}
  return [k for k in keys if k not in resumable | added and now.get(k) != before.get(k)]


def calibrates_noise(flat: dict[str, Any]) -> bool:
  """Whether a flat config runs DP-SGD with noise calibrated to a target epsilon."""
  return bool(flat.get("dp.enabled")) and flat.get("dp.epsilon") is not None
