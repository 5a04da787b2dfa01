"""What a sweep checks before its first trial, so that a space, a fixed override or a dataset that
no trial can run with stops it with one message instead of failing every trial after training.

The points checked: every parameter at its low end (or first choice), then each parameter in turn
at its other bound or choices. For each, the config a trial would get (its --config flags parsed
as the experiment's command line parses them) must pass the engine's config.check, and the
experiment's get_data(config) must serve the split the objective is read from. get_data runs
inside jaxmodels.data.splits_only(), so a prepared dataset's metadata is read, not its examples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import copy
import sys
from typing import Any

from jaxmodels.sweep import space
from jaxmodels.sweep.space import Choice, IntRange, Sweep, SweepError

# The split a dataset names for each split the engine records (loop.recorded_split's inverse).
_DATASET_SPLIT = {"eval": "validation", "test": "test"}


def points(sweep: Sweep) -> list[dict[str, Any]]:
  """The parameter values checked: the low ends, then each parameter at its other ends."""
  ends = {key: _ends(param) for key, param in sweep.params.items()}
  first = {key: values[0] for key, values in ends.items()}
  out = [first]
  for key, values in ends.items():
    out += [{**first, key: v} for v in values[1:] if v != first[key]]
  return out


def _ends(param: Any) -> list[Any]:
  if isinstance(param, Choice):
    return list(param.values)
  if isinstance(param, IntRange):
    return [param.low, param.high - (param.high - param.low) % param.step]
  return [param.low, param.high]


def trial_config(config: Any, overrides: Mapping[str, str], params: Mapping[str, Any]) -> Any:
  """The config of a trial with these fixed overrides and parameters, parsed by absl's
  config_flags as the experiment's command line does; SweepError for a value it rejects."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

  argv = ["trial", *space.trial_flags(overrides, params)]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_dict(
      "config", copy.deepcopy(config), flag_values=values, sys_argv=argv
  )
  try:
    values(argv)
  except flags.Error as e:
    raise SweepError(f"{e}") from e
  return holder.value


def check(
    module: Any,
    experiment: str,
    config: Any,
    sweep: Sweep,
    overrides: Mapping[str, str],
    devices: Callable[[Any], int],
) -> None:
  """Raise SweepError, saying which value and what would be valid, if a point of the space
  gives a config that the engine rejects or whose data lacks the objective's split.
  `devices(config)` is the device count a trial with that config sees."""
  checked = points(sweep)
  for point in checked:
    try:
      trial = trial_config(config, overrides, point)
      problem = _config_problem(trial, devices) or _data_problem(module, experiment, trial, sweep)
    except SweepError as e:
      problem = str(e)
    if problem:
      where = _where(point, checked[0], sweep, overrides)
      raise SweepError(f"the sweep cannot start: {where}: {problem}")


def _where(
    point: dict[str, Any], first: dict[str, Any], sweep: Sweep, overrides: Mapping[str, str]
) -> str:
  """The trial that would fail: the low ends of the space, or the one value that differs."""
  fixed = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
  fixed = f" with {fixed}" if fixed else ""
  if point == first:
    values = " ".join(f"{k}={space.format_value(v)}" for k, v in sorted(point.items()))
    return f"a trial ({values}){fixed} would fail"
  key = next(k for k, v in point.items() if v != first[k])
  kind = "choice" if isinstance(sweep.params[key], Choice) else "bound"
  return (
      f"a trial with {key}={space.format_value(point[key])} (a {kind} of the search space in "
      f"get_sweep(): narrow it){fixed} would fail"
  )


def _config_problem(trial: Any, devices: Callable[[Any], int]) -> str | None:
  """The engine's objection to the config, if it is an engine config (built on base_config)."""
  config_lib = sys.modules.get("jaxmodels.train.config")
  if config_lib is None:  # an engine config comes from base_config: its module is loaded
    return None
  if not set(config_lib.flat_keys(config_lib.base_config())) <= set(config_lib.flat_keys(trial)):
    return None
  try:
    config_lib.check(trial, devices(trial))
  except (config_lib.ConfigError, ValueError) as e:
    return f"{e}"
  return None


def _data_problem(module: Any, experiment: str, trial: Any, sweep: Sweep) -> str | None:
  """Why the experiment's data cannot give the objective, if it cannot."""
  get_data = getattr(module, "get_data", None)
  if get_data is None:
    return None
  import ml_collections  # pylint: disable=import-outside-toplevel

  from jaxmodels import data as data_lib  # pylint: disable=import-outside-toplevel

  try:
    with data_lib.splits_only():
      data = get_data(ml_collections.FrozenConfigDict(trial))
  except data_lib.DataError as e:
    return f"{experiment}.get_data: {e}"
  except Exception as e:  # pylint: disable=broad-except  (every trial would fail the same way)
    return f"{experiment}.get_data fails: {type(e).__name__}: {e}"
  split, name = space.split_metric(sweep.metric)
  if split == "train" or not hasattr(data, "eval_splits"):
    return None
  recorded = [space.canonical_metric(f"{s}_{name}") for s in data.eval_splits]
  if sweep.metric in recorded:
    return None
  served = ", ".join(data.eval_splits) or "none"
  problem = (
      f"the objective {sweep.metric} is never recorded, because the data of {experiment} has "
      f"no {_DATASET_SPLIT[split]} split (its evaluated splits: {served})."
  )
  return f"{problem} {_provide(split, trial, data, recorded)}"


def _provide(split: str, trial: Any, data: Any, recorded: list[str]) -> str:
  """What gives the split: the config key that holds part of train out, or another metric."""
  keys = space.flatten_config(trial)
  if split == "eval" and "validation_size" in keys:
    try:
      train = int(data.num_examples("train"))
    except (KeyError, TypeError, ValueError):
      train = 0
    sizes = f" with 0 < N < {train} (its train split has {train} examples)" if train > 1 else ""
    example = f", e.g. --config.validation_size={max(1, train // 10)}" if train > 1 else ""
    return (
        "The config key validation_size holds part of the train split out as the validation "
        f"split: add --config.validation_size=N to the sweep command{sizes}{example}."
    )
  have = " or ".join(recorded) if recorded else "a train_ metric"
  return f"Choose a metric it records in get_sweep(): {have}."
