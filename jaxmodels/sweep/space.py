"""The search space an experiment declares in `get_sweep()`, and its checks against the config.

Plain dataclasses with no Optuna import, so experiment modules stay cheap to import:

  def get_sweep():
    return Sweep(
        metric='eval_accuracy', mode='max', num_trials=20,
        params={'learning_rate': LogUniform(1e-4, 1e-1),
                'batch_size': Choice([64, 128]),
                'model.num_layers': IntRange(1, 4),
                'optimizer': ['adam', 'sgd']})   # a plain list is a Choice

Keys are config keys (dotted for nested fields). Every kind works with the random and TPE
samplers; the grid sampler needs every parameter enumerable (Choice, IntRange).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any

SAMPLERS = ("grid", "random", "tpe")
SPLITS = ("train", "eval", "test")


class SweepError(ValueError):
  """Bad sweep input: the message says what is wrong and what would be valid."""


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of a list of values (str, int, float, bool or None); a grid axis in grid mode."""

  values: Sequence[Any]

  def grid(self) -> list[Any]:
    return list(self.values)


@dataclasses.dataclass(frozen=True)
class Uniform:
  """A float drawn uniformly from [low, high]."""

  low: float
  high: float
  log = False


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """A float whose logarithm is uniform on [log low, log high]; for learning rates and decays."""

  low: float
  high: float
  log = True


@dataclasses.dataclass(frozen=True)
class IntRange:
  """An int in low..high inclusive, every `step`-th value (or log-uniform with log=True)."""

  low: int
  high: int
  step: int = 1
  log: bool = False

  def grid(self) -> list[int]:
    return list(range(self.low, self.high + 1, self.step))


Param = Choice | Uniform | LogUniform | IntRange


@dataclasses.dataclass
class Sweep:
  """What to optimise and over which config keys.

  metric: a summary.json key "<split>_<name>", e.g. 'eval_accuracy' or 'eval_loss'; a metric
    given as "validation_<name>" (the dataset's name for the split) is read as "eval_<name>".
  mode: 'max' or 'min'.
  num_trials: how many trials by default (grid mode: the grid size when None).
  sampler: the default sampler, 'tpe', 'random' or 'grid'.
  """

  params: dict[str, Any]
  metric: str = "eval_accuracy"
  mode: str = "max"
  num_trials: int | None = None
  sampler: str = "tpe"

  def __post_init__(self) -> None:
    self.params = {k: as_param(k, v) for k, v in dict(self.params).items()}
    self.metric = canonical_metric(self.metric)


def canonical_metric(metric: str) -> str:
  """The metric under the split name the engine records: "validation_<name>" is "eval_<name>"."""
  prefix = "validation_"
  return "eval_" + metric[len(prefix) :] if metric.startswith(prefix) else metric


def as_param(key: str, value: Any) -> Param:
  """A space entry as a Param; a plain list or tuple becomes a Choice."""
  if isinstance(value, (list, tuple)):
    value = Choice(list(value))
  if not isinstance(value, (Choice, Uniform, LogUniform, IntRange)):
    raise SweepError(
        f"sweep parameter {key!r}: expected Choice, Uniform, LogUniform, IntRange or "
        f"a list of values, got {value!r}"
    )
  return value


def as_sweep(obj: Any) -> Sweep:
  """Accept a Sweep or a dict with the same fields (what `get_sweep()` may return)."""
  if isinstance(obj, Sweep):
    return obj
  if isinstance(obj, Mapping):
    fields = {f.name for f in dataclasses.fields(Sweep)}
    unknown = sorted(set(obj) - fields)
    if unknown:
      raise SweepError(f"get_sweep() returned unknown fields {unknown}; valid: {sorted(fields)}")
    if "params" not in obj:
      raise SweepError("get_sweep() returned a dict without 'params'")
    return Sweep(**obj)
  raise SweepError(f"get_sweep() must return a Sweep or a dict, got {type(obj).__name__}")


def split_metric(metric: str) -> tuple[str, str]:
  """'eval_accuracy' -> ('eval', 'accuracy')."""
  for split in SPLITS:
    if metric.startswith(split + "_") and len(metric) > len(split) + 1:
      return split, metric[len(split) + 1 :]
  raise SweepError(
      f'metric {metric!r} must be "<split>_<name>" with split one of {list(SPLITS)}, '
      "e.g. 'eval_accuracy'"
  )


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
  """Leaf values of a ConfigDict (or dict) under dotted keys."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
      out.update(flatten_config(value, name + "."))
    else:
      out[name] = value
  return out


def validate(sweep: Sweep, config: Any, sampler: str, fixed: Mapping[str, str] = ()) -> None:
  """Raise SweepError when the sweep cannot run against this config.

  Checks: a non-empty space; every key (swept or fixed) exists in the config; value types fit
  the config's defaults; ranges are well formed; grid mode has only enumerable parameters.
  """
  defaults = flatten_config(config)
  valid = ", ".join(sorted(defaults))
  if sampler not in SAMPLERS:
    raise SweepError(f'unknown sampler {sampler!r}; valid: {", ".join(SAMPLERS)}')
  if sweep.mode not in ("max", "min"):
    raise SweepError(f"sweep mode must be 'max' or 'min', got {sweep.mode!r}")
  split_metric(sweep.metric)
  if not sweep.params:
    raise SweepError(f"empty search space: the sweep defines no parameters; valid keys: {valid}")
  for key in list(sweep.params) + list(fixed):
    if key not in defaults:
      raise SweepError(f"unknown config key {key!r}; valid keys: {valid}")
  for key, param in sweep.params.items():
    if key in fixed:
      raise SweepError(f"config key {key!r} is both swept and fixed by --config.{key}")
    _check_param(key, param, defaults[key])
    if sampler == "grid" and not hasattr(param, "grid"):
      raise SweepError(
          f"grid sampler: parameter {key!r} is a continuous range "
          f"({type(param).__name__}); use Choice([...]) or IntRange for grid sweeps, "
          "or --sampler=random|tpe"
      )
  if sweep.num_trials is not None and sweep.num_trials < 1:
    raise SweepError(f"num_trials must be positive, got {sweep.num_trials}")


def _check_param(key: str, param: Param, default: Any) -> None:
  if isinstance(param, Choice):
    if not param.values:
      raise SweepError(f"parameter {key!r}: Choice has no values")
    for value in param.values:
      if value is not None and not isinstance(value, (str, int, float, bool)):
        raise SweepError(
            f"parameter {key!r}: choice {value!r} is not a str, int, float, bool " "or None"
        )
      _check_type(key, value, default)
    return
  if not param.low < param.high:
    raise SweepError(f"parameter {key!r}: low {param.low} must be below high {param.high}")
  if param.log and param.low <= 0:
    raise SweepError(f"parameter {key!r}: a log range needs low > 0, got {param.low}")
  if isinstance(param, IntRange):
    if param.step < 1 or (param.log and param.step != 1):
      raise SweepError(f"parameter {key!r}: step must be >= 1 (and 1 for a log range)")
    _check_type(key, param.low, default)
  elif not all(math.isfinite(v) for v in (param.low, param.high)):
    raise SweepError(f"parameter {key!r}: bounds must be finite")
  else:
    _check_type(key, float(param.low), default)


def _check_type(key: str, value: Any, default: Any) -> None:
  """A swept value must fit the config default's type (ints are fine for float fields)."""
  if default is None or value is None:
    return
  if isinstance(default, bool) or isinstance(value, bool):
    ok = isinstance(default, bool) and isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float))
  elif isinstance(default, int):
    ok = isinstance(value, int)
  else:
    ok = isinstance(value, type(default))
  if not ok:
    raise SweepError(
        f"parameter {key!r}: value {value!r} ({type(value).__name__}) does not fit "
        f"the config default {default!r} ({type(default).__name__})"
    )


def grid_space(sweep: Sweep) -> dict[str, list[Any]]:
  """The grid axes: every value of every parameter (all must be enumerable)."""
  return {key: param.grid() for key, param in sweep.params.items()}


def grid_size(sweep: Sweep) -> int:
  return math.prod(len(values) for values in grid_space(sweep).values())


def distributions(sweep: Sweep) -> dict[str, Any]:
  """Optuna distributions for study.ask()."""
  from optuna import distributions as dist  # pylint: disable=import-outside-toplevel

  out = {}
  for key, param in sweep.params.items():
    if isinstance(param, Choice):
      out[key] = dist.CategoricalDistribution(list(param.values))
    elif isinstance(param, IntRange):
      out[key] = dist.IntDistribution(param.low, param.high, log=param.log, step=param.step)
    else:
      out[key] = dist.FloatDistribution(param.low, param.high, log=param.log)
  return out


def is_log(param: Param) -> bool:
  """Whether plots should use a log x-axis for this parameter."""
  return bool(getattr(param, "log", False))


def trial_flags(overrides: Mapping[str, str], params: Mapping[str, Any]) -> list[str]:
  """The --config.k=v flags of one trial: the fixed overrides, then the sampled parameters."""
  flags = [f"--config.{k}={v}" for k, v in overrides.items()]
  return flags + [f"--config.{k}={format_value(v)}" for k, v in sorted(params.items())]


def format_value(value: Any) -> str:
  """A value as a --config.k=v flag reads it (absl booleans are lower case)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return repr(value)
  return str(value)
