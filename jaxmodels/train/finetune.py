"""Fine-tuning: `--config.init_from=<source>` (read once, at step 0) and frozen BatchNorm.

`config.trainable` (which parameters the optimizer updates) lives in optim.py.

Sources:
  DIR                          a jaxmodels workdir: its latest checkpoint's parameters and
                               model state (BatchNorm statistics)
  DIR@STEP                     that workdir's checkpoint STEP
  FILE.pth | .pt | .safetensors  a torchvision ResNet state dict, read as the architecture of
                               this config's model (resnet18, resnet34 or resnet50)
  torchvision:ARCH[:WEIGHTS]   torchvision's named weights, e.g. torchvision:resnet50:IMAGENET1K_V2
  HF_DIR                       a Hugging Face directory (config.json + model.safetensors or
                               pytorch_model.bin)
  hf:NAME                      a Hugging Face Hub name, e.g. hf:gpt2

The source's variables go into the freshly initialised state: every array of the same path and
shape loads (parameters and BatchNorm statistics alike); the classifier head (the model's last
top-level layer) keeps its fresh initialisation when its shape differs, as when the number of
classes does; any other array missing from the source or of another shape is an error listing
them; arrays only the source has are ignored and reported. The optimizer state is the fresh one
of the loaded parameters. The run saves the result as its checkpoint 0, so a resumed run
continues from its own checkpoints and never reads the source again.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import logging
import re
from typing import Any

from etils import epath
import flax.linen as nn
import jax
import numpy as np

from jaxmodels.train.config import ConfigError
from jaxmodels.train.optim import param_path
from jaxmodels.train.steps import TrainState

SOURCES = (
    "a jaxmodels workdir (DIR or DIR@STEP), a torchvision .pth/.pt/.safetensors file, "
    "torchvision:ARCH[:WEIGHTS], a Hugging Face directory or hf:NAME"
)
TORCHVISION_SUFFIXES = (".pth", ".pt", ".safetensors")
# Fields of a source's module that are this run's own choice: not reported when they differ.
_RUN_FIELDS = (
    "parent",
    "name",
    "num_classes",
    "axis_name",
    "freeze_batch_stats",
    "dtype",
    "param_dtype",
    "dropout_rate",
    "remat",
    "scan_layers",
    "decode",
    "implementation",
)


class InitFromError(ConfigError):
  """config.init_from names a source that cannot be read or does not fit the model."""


@dataclasses.dataclass(frozen=True)
class Report:
  """What a source contributed: '/'-joined array paths with their collection first."""

  source: str
  loaded: list[str]
  reinitialised: list[str]
  ignored: list[str]
  notes: list[str] = dataclasses.field(default_factory=list)

  def text(self) -> str:
    counts = {}
    for path in self.loaded:
      collection = path.split("/", 1)[0]
      counts[collection] = counts.get(collection, 0) + 1
    parts = ", ".join(f"{n} {c}" for c, n in sorted(counts.items()))
    lines = [f"init_from {self.source}: loaded {len(self.loaded)} tensors ({parts or 'none'})"]
    lines.append(
        f"  re-initialised (classifier head): {_short(self.reinitialised)}"
        if self.reinitialised
        else "  re-initialised: none"
    )
    lines.append(
        f"  ignored (only in the source): {_short(self.ignored) if self.ignored else 'none'}"
    )
    lines += [f"  note: {n}" for n in self.notes]
    return "\n".join(lines)


def _short(paths: list[str], limit: int = 8) -> str:
  more = f", ... ({len(paths)} in all)" if len(paths) > limit else ""
  return ", ".join(paths[:limit]) + more


def initialise(
    source: str, state: TrainState, model: nn.Module, task: Any, tx: Any, batch: Any
) -> tuple[TrainState, Report]:
  """`state` (freshly initialised, on its devices) with the source's weights merged in, in the
  same shardings, and a fresh optimizer state for them."""
  variables, source_model = load_variables(source, model)
  fresh = {"params": state.params, **state.model_state}
  merged, report = merge(fresh, variables, head_name(model, task, batch), source)
  notes = convention_notes(source_model, model)
  report = dataclasses.replace(report, notes=notes)
  placed = jax.tree_util.tree_map(_place, merged, fresh)
  params = placed.pop("params")
  opt_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state.opt_state)
  opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
  return state.replace(params=params, model_state=placed, opt_state=opt_state), report


def _place(value: Any, like: jax.Array) -> jax.Array:
  """`value` as an array of `like`'s dtype, shape and sharding (any mesh, any process count)."""
  if value is like:
    return like
  host = np.asarray(value, dtype=like.dtype)
  return jax.make_array_from_callback(like.shape, like.sharding, lambda index: host[index])


def load_variables(source: str, model: nn.Module) -> tuple[dict[str, Any], nn.Module | None]:
  """({'params': ..., 'batch_stats': ...} as host arrays, the source's module if it has one)."""
  if source.startswith("torchvision:"):
    return _torchvision_variables(source, source, model)
  if source.startswith("hf:"):
    return _huggingface_variables(source, source, model)
  path, step = _split_step(source)
  if not path.exists():
    raise InitFromError(f"config.init_from={source!r}: {path} does not exist. Give {SOURCES}.")
  if step is not None or _is_workdir(path):
    return _workdir_variables(source, path, step), None
  if path.is_dir():
    if (path / "config.json").exists():
      return _huggingface_variables(source, str(path), model)
    raise InitFromError(
        f"config.init_from={source!r}: the directory {path} is neither a jaxmodels workdir (no "
        "checkpoints/ or run.json) nor a Hugging Face directory (no config.json). "
        f"Give {SOURCES}."
    )
  if path.suffix in TORCHVISION_SUFFIXES:
    return _torchvision_variables(source, str(path), model)
  raise InitFromError(
      f"config.init_from={source!r}: {path} is a file without a torchvision suffix "
      f"({', '.join(TORCHVISION_SUFFIXES)}). Give {SOURCES}."
  )


def _split_step(source: str) -> tuple[epath.Path, int | None]:
  """DIR@STEP -> (DIR, STEP); a path that exists as written keeps its '@'."""
  match = re.fullmatch(r"(.+)@(\d+)", source)
  if match and not epath.Path(source).exists():
    return epath.Path(match.group(1)), int(match.group(2))
  return epath.Path(source), None


def _is_workdir(path: epath.Path) -> bool:
  return path.is_dir() and any((path / f).exists() for f in ("checkpoints", "run.json"))


def checkpoint_steps(workdir: epath.Path) -> list[int]:
  """The finished checkpoints of a workdir (orbax writes unfinished ones under other names)."""
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _workdir_variables(source: str, workdir: epath.Path, step: int | None) -> dict[str, Any]:
  """The params and model state of a workdir's checkpoint, as host numpy arrays, whatever
  strategy or mesh wrote it; the checkpoint's optimizer state is not read."""
  if not workdir.is_dir():
    raise InitFromError(f"config.init_from={source!r}: {workdir} is not a jaxmodels workdir.")
  steps = checkpoint_steps(workdir)
  if not steps:
    raise InitFromError(
        f"config.init_from={source!r}: the workdir {workdir} has no checkpoint "
        f"({workdir / 'checkpoints'} holds none). Train it first, or give another source."
    )
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise InitFromError(
        f"config.init_from={source!r}: {workdir} has no checkpoint at step {step}; its "
        f"checkpoints are at steps {', '.join(map(str, steps))} (use {workdir}@STEP)."
    )
  path = workdir / "checkpoints" / str(step) / "state"
  try:
    out = _restore_weights(path)
  except Exception as e:  # orbax raises many types for truncated or foreign files
    raise InitFromError(
        f"config.init_from={source!r}: checkpoint {path} cannot be read "
        f"({type(e).__name__}: {str(e)[:300]}). Name another step with {workdir}@STEP "
        f"(steps {', '.join(map(str, steps))})."
    ) from e
  return {"params": out["params"], **out.get("model_state", {})}


def _restore_weights(path: epath.Path) -> dict[str, Any]:
  """{'params', 'model_state'} of a saved TrainState, as numpy, without its optimizer state."""
  import orbax.checkpoint as ocp

  checkpointer = ocp.PyTreeCheckpointer()
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # orbax warns that a step's item has no metadata file
  try:
    metadata = checkpointer.metadata(path)
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
    item = {k: tree[k] for k in ("params", "model_state") if tree.get(k)}
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    return checkpointer.restore(
        path,
        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
    )
  finally:
    absl_logger.setLevel(level)
    checkpointer.close()


def _torchvision_variables(
    source: str, path: str, model: nn.Module
) -> tuple[dict[str, Any], nn.Module]:
  """A torchvision file or 'torchvision:ARCH[:WEIGHTS]' read as this config's model's arch."""
  from jaxmodels.models import convert

  arch = torchvision_arch(source, model)
  try:
    module, variables = convert.load_torchvision(path, arch)
  except convert.ConvertError as e:
    raise InitFromError(f"config.init_from={source!r} (read as {arch}): {e}") from e
  return dict(variables), module


def _huggingface_variables(
    source: str, directory: str, model: nn.Module
) -> tuple[dict[str, Any], nn.Module]:
  """A Hugging Face GPT-2 directory or 'hf:NAME', its blocks scanned as this model's are."""
  from jaxmodels.models import convert

  try:
    module, variables = convert.load_huggingface(
        directory, scan_layers=bool(getattr(model, "scan_layers", False))
    )
  except convert.ConvertError as e:
    raise InitFromError(f"config.init_from={source!r}: {e}") from e
  return dict(variables), module


def torchvision_arch(source: str, model: nn.Module) -> str:
  """'resnet18', 'resnet34' or 'resnet50': the torchvision name of this config's model."""
  from jaxmodels.models.resnet import BasicBlock, BottleneckBlock, ResNet

  archs = {
      ((2, 2, 2, 2), BasicBlock): "resnet18",
      ((3, 4, 6, 3), BasicBlock): "resnet34",
      ((3, 4, 6, 3), BottleneckBlock): "resnet50",
  }
  arch = None
  if isinstance(model, ResNet):
    arch = archs.get((tuple(model.stage_sizes), model.block_cls))
  if arch is None:
    raise InitFromError(
        f"config.init_from={source!r} holds torchvision ResNet weights, but this config's model "
        f"is a {type(model).__name__} that is not ResNet-18, -34 or -50; use an experiment with "
        "such a ResNet, or another source."
    )
  return arch


def head_name(model: nn.Module, task: Any, batch: Any) -> str | None:
  """The top-level submodule the model calls last: its classifier head (e.g. 'Dense_0')."""
  calls = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and len(context.module.path) == 1:
      calls.append(context.module.path[0])
    return next_fun(*args, **kwargs)

  def init():
    key = jax.random.PRNGKey(0)
    return model.init({"params": key, "dropout": key}, *task.model_args(batch), train=False)

  with nn.intercept_methods(record):
    params = jax.eval_shape(init)["params"]
  owners = [c for c in calls if c in params]
  return owners[-1] if owners else None


def _flat(variables: Mapping[str, Any]) -> dict[str, Any]:
  """{'params/Dense_0/kernel': array, ..., 'batch_stats/...': ...}: parameters first."""
  out = {}
  for collection in sorted(variables, key=lambda c: (c != "params", c)):
    leaves = jax.tree_util.tree_flatten_with_path(variables[collection])[0]
    for path, value in leaves:
      out[f"{collection}/{param_path(path)}"] = value
  return out


def merge(
    fresh: Mapping[str, Any], source: Mapping[str, Any], head: str | None, name: str = ""
) -> tuple[dict[str, Any], Report]:
  """`fresh` ({'params': ..., 'batch_stats': ...}) with every array of the same path and shape
  taken from `source`; the `head` submodule's parameters stay fresh when any of them is missing
  or of another shape; other missing or mismatched arrays raise InitFromError."""
  want, have = _flat(fresh), _flat(source)
  head_prefix = f"params/{head}/" if head else None
  in_head = [k for k in want if head_prefix and k.startswith(head_prefix)]
  head_differs = any(k not in have or np.shape(have[k]) != np.shape(want[k]) for k in in_head)
  loaded, reinitialised, problems = [], [], []
  for key, value in want.items():
    if head_differs and key in in_head:
      reinitialised.append(key)
    elif key not in have:
      problems.append(f"{key} {tuple(np.shape(value))} is not in the source")
    elif np.shape(have[key]) != np.shape(value):
      problems.append(
          f"{key}: source {tuple(np.shape(have[key]))}, this model {tuple(np.shape(value))}"
      )
    else:
      loaded.append(key)
  if problems:
    raise InitFromError(
        f"config.init_from={name!r} does not fit this config's model: {len(problems)} of its "
        f"{len(want)} arrays are missing or of another shape ({'; '.join(problems[:10])}"
        f"{'; ...' if len(problems) > 10 else ''}). Only the classifier head "
        f"({head or 'none found'}) may differ; set config.model.* to the source's "
        "architecture (a workdir's config.json has it)."
    )
  ignored = sorted(set(have) - set(want))
  report = Report(name, loaded, reinitialised, ignored)
  flat = {k: (want[k] if k in reinitialised else have[k]) for k in want}
  return _unflatten_like(fresh, flat), report


def _unflatten_like(fresh: Mapping[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
  leaves, treedef = jax.tree_util.tree_flatten(dict(fresh))
  keys = _flat(jax.tree_util.tree_unflatten(treedef, range(len(leaves))))
  values = [None] * len(leaves)
  for key, index in keys.items():
    values[index] = flat[key]
  return jax.tree_util.tree_unflatten(treedef, values)


def convention_notes(source_model: nn.Module | None, model: nn.Module) -> list[str]:
  """Fields (e.g. normalisation epsilons) where the source's module and this config's model of
  the same class differ: the weights load, but the forward pass is not the source's."""
  if source_model is None or type(source_model) is not type(model):
    return []
  notes = []
  for field in dataclasses.fields(model):
    if field.name in _RUN_FIELDS or not hasattr(source_model, field.name):
      continue
    mine, theirs = getattr(model, field.name), getattr(source_model, field.name)
    if isinstance(mine, (bool, int, float, str)) and mine != theirs:
      notes.append(
          f"the source's model has {field.name}={theirs!r}, this config's {mine!r} "
          f"(set config.model.{field.name} to compute as the source does)"
      )
  return notes


def freeze_batch_stats(model: nn.Module, config: Any) -> nn.Module:
  """With config.freeze_batch_stats, the model's BatchNorm layers normalise with their running
  statistics in training too and never update them (torch's `eval()` on the BatchNorm layers)."""
  if not config.freeze_batch_stats:
    return model
  fields = {f.name for f in dataclasses.fields(model)}
  if "freeze_batch_stats" not in fields or not getattr(model, "use_batchnorm", True):
    raise ConfigError(
        f"config.freeze_batch_stats=True, but this experiment's model ({type(model).__name__}) "
        "has no BatchNorm statistics to freeze; it applies to ResNet and to CNN with "
        "model.use_batchnorm=True."
    )
  return model.clone(freeze_batch_stats=True)
