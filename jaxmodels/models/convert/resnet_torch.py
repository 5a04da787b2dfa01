"""torchvision ResNet-18/34/50 state dicts <-> jaxmodels `ResNet` variables.

The layers map one to one (`jaxmodels.models.resnet` follows torchvision's layout):

  torchvision                         jaxmodels (params / batch_stats)
  conv1, bn1                          stem_conv, stem_bn
  layer{s+1}.{j}.conv{m+1}, bn{m+1}   {Basic,Bottleneck}Block_{k}/Conv_{m}, BatchNorm_{m}
  layer{s+1}.{j}.downsample.0, .1     {Basic,Bottleneck}Block_{k}/proj_conv, proj_bn
  fc                                  Dense_0

where block k is block j of stage s, counted over all stages. Convolution weights OIHW <->
kernels HWIO, fc.weight (out, in) <-> the Dense kernel (in, out); BatchNorm weight, bias,
running_mean, running_var <-> scale, bias (params) and mean, var (batch_stats).
`num_batches_tracked` is optional on import and written as 0 on export. The number of classes
and of input channels are read from the weights (fc and conv1), so a ResNet trained here on
1-channel images exports to a torchvision model whose conv1 takes 1 channel.

torch is imported only to read or write `.pth` files and to resolve `torchvision:` sources;
`.safetensors` files need only the `safetensors` package.
"""

from collections.abc import Callable, Mapping
import functools
import os
from typing import Any, NamedTuple
import urllib.parse

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.models.convert.errors import ConvertError
from jaxmodels.models.resnet import ResNet, ResNet18, ResNet34, ResNet50

TORCHVISION_ARCHS: dict[str, Callable[..., ResNet]] = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
}
TORCHVISION_PREFIX = "torchvision:"
_SHOWN = 5  # keys listed per kind of mismatch in an error
_COLLECTIONS = ("params", "batch_stats")
_LEAVES = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}

Variables = dict[str, Any]


class _Entry(NamedTuple):
  """One torchvision tensor: where it lives in our variables and how its layout differs."""

  path: tuple[str, ...]  # ('params', 'stem_conv', 'kernel')
  shape: tuple[int, ...]  # our shape
  torch_shape: tuple[int, ...]
  kind: str  # 'conv' (OIHW <-> HWIO), 'dense' (transposed) or 'vector'


def _to_torch(kind: str, x: np.ndarray) -> np.ndarray:
  if kind == "conv":
    return x.transpose(3, 2, 0, 1)
  return x.T if kind == "dense" else x


def _from_torch(kind: str, x: np.ndarray) -> np.ndarray:
  if kind == "conv":
    return x.transpose(2, 3, 1, 0)
  return x.T if kind == "dense" else x


def _module(arch: str, num_classes: int) -> ResNet:
  """Our ResNet for a torchvision arch, with torch's BatchNorm running-variance convention."""
  return TORCHVISION_ARCHS[arch](num_classes=num_classes, bn_running_variance="unbiased")


def _check_arch(arch: Any) -> str:
  if arch not in TORCHVISION_ARCHS:
    raise ConvertError(
        f"unknown torchvision architecture {arch!r}: use one of {', '.join(TORCHVISION_ARCHS)}"
    )
  return arch


def _torch_module(names: list[str], blocks: list[tuple[int, int]]) -> str:
  """torchvision's dotted module name for one of our module paths."""
  if len(names) == 1:
    return {"stem_conv": "conv1", "stem_bn": "bn1", "Dense_0": "fc"}[names[0]]
  stage, j = blocks[int(names[0].rsplit("_", 1)[1])]
  layer = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}.get(names[1])
  if layer is None:
    kind, index = names[1].split("_")
    layer = f"{'conv' if kind == 'Conv' else 'bn'}{int(index) + 1}"
  return f"layer{stage + 1}.{j}.{layer}"


def _torch_order(name: str) -> tuple[tuple[int, ...], ...]:
  """Sort key putting names in torchvision's state_dict order (conv1, bn1, layer1.0.conv1, ...)."""
  *modules, leaf = name.split(".")
  key = []
  for token in modules:
    if token.isdigit():
      key.append((int(token),))
    elif token.startswith(("conv", "bn")):
      kind, index = ("conv", token[4:]) if token.startswith("conv") else ("bn", token[2:])
      key.append((int(index), kind == "bn"))
    else:  # layerN, downsample, fc
      key.append({"downsample": (9,), "fc": (99,)}.get(token) or (10 + int(token[5:]),))
  return (*key, (("weight", "bias", "running_mean", "running_var").index(leaf),))


@functools.cache
def _spec(arch: str, in_channels: int = 3, num_classes: int = 1000) -> dict[str, _Entry]:
  """torchvision name -> _Entry, for every tensor of the arch (num_batches_tracked aside)."""
  module = _module(arch, num_classes)
  x = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  blocks = [(s, j) for s, size in enumerate(module.stage_sizes) for j in range(size)]
  spec = {}
  for path, leaf in traverse_util.flatten_dict(shapes).items():
    *names, param = path[1:]
    kind = "vector"
    if param == "kernel":
      kind = "dense" if names == ["Dense_0"] else "conv"
    name = f"{_torch_module(names, blocks)}.{_LEAVES[param]}"
    torch_shape = _to_torch(kind, np.empty(leaf.shape, np.bool_)).shape
    spec[name] = _Entry(path, tuple(leaf.shape), torch_shape, kind)
  return dict(sorted(spec.items(), key=lambda item: _torch_order(item[0])))


def _num_batches_tracked(spec: Mapping[str, _Entry]) -> list[str]:
  suffix = ".running_mean"
  return [n[: -len(suffix)] + ".num_batches_tracked" for n in spec if n.endswith(suffix)]


def _listed(keys: list[str]) -> str:
  shown = ", ".join(keys[:_SHOWN])
  return f"{shown}, ..." if len(keys) > _SHOWN else shown


def _mismatch(
    missing: list[str], unexpected: list[str], shapes: list[tuple[str, tuple, tuple]]
) -> str:
  """'N missing keys (a, b, ...); M unexpected keys (...); K shape mismatches (...)' or ''."""
  parts = []
  if missing:
    parts.append(f"{len(missing)} missing keys ({_listed(missing)})")
  if unexpected:
    parts.append(f"{len(unexpected)} unexpected keys ({_listed(unexpected)})")
  if shapes:
    shown = [f"{k}: {got} instead of {want}" for k, got, want in shapes]
    parts.append(f"{len(shapes)} shape mismatches ({_listed(shown)})")
  return "; ".join(parts)


def _compare_state(state: Mapping[str, np.ndarray], arch: str) -> tuple[dict[str, _Entry], str]:
  """The spec for `state`'s conv1 channels and fc classes, and how `state` differs from it."""
  conv1, fc = state.get("conv1.weight"), state.get("fc.weight")
  in_channels = conv1.shape[1] if conv1 is not None and conv1.ndim == 4 else 3
  num_classes = fc.shape[0] if fc is not None and fc.ndim == 2 else 1000
  spec = _spec(arch, in_channels, num_classes)
  optional = set(_num_batches_tracked(spec))
  missing = [k for k in spec if k not in state]
  unexpected = [k for k in state if k not in spec and k not in optional]
  shapes = [
      (k, tuple(state[k].shape), spec[k].torch_shape)
      for k in spec
      if k in state and tuple(state[k].shape) != spec[k].torch_shape
  ]
  return spec, _mismatch(missing, unexpected, shapes)


def infer_torchvision_arch(state: Mapping[str, Any], where: str = "the state dict") -> str:
  """The torchvision arch whose tensor names are exactly those of `state`."""
  names = set(state)
  for arch in TORCHVISION_ARCHS:
    spec = _spec(arch)
    if set(spec) <= names <= set(spec) | set(_num_batches_tracked(spec)):
      return arch
  closest = min(TORCHVISION_ARCHS, key=lambda a: len(names ^ set(_spec(a))))
  _, diff = _compare_state(state, closest)
  raise ConvertError(
      f"{where} is not a torchvision {', '.join(TORCHVISION_ARCHS)} state dict; against the"
      f" closest, {closest}: {diff}"
  )


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  text = text if len(text) <= 300 else text[:300] + " ..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _to_numpy(value: Any, key: str, where: str) -> np.ndarray:
  """A copy: torch tensors and arrays of a state dict share memory with the model they left."""
  if hasattr(value, "detach"):  # a torch tensor, without importing torch
    value = value.detach().cpu()
    value = value.float() if str(value.dtype) == "torch.bfloat16" else value
    return value.numpy().copy()
  array = np.array(value)
  if array.dtype == object:
    raise ConvertError(f"{where}: {key!r} holds a {type(value).__name__}, not a tensor")
  return array


def _read_torch(path: str) -> Any:
  try:
    import torch
  except ImportError as e:
    raise ConvertError(
        f"reading {path} needs torch (pip install torch); a .safetensors file needs only"
        " the safetensors package"
    ) from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise ConvertError(
        f"cannot read {path} as a torch state dict ({_one_line(e)}); is the file complete and"
        " written by torch.save(model.state_dict(), path)?"
    ) from e


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  try:
    return load_file(path)
  except Exception as e:
    raise ConvertError(f"cannot read {path} as safetensors ({_one_line(e)})") from e


def _read_state(source: Any) -> tuple[dict[str, np.ndarray], str]:
  """(name -> array, a description for errors) of a state dict or a .pth/.safetensors file."""
  if isinstance(source, Mapping):
    where = "the state dict"
    return {str(k): _to_numpy(v, str(k), where) for k, v in source.items()}, where
  if not isinstance(source, str | os.PathLike):
    raise ConvertError(
        f"expected a state dict, a .pth or .safetensors file, or a"
        f" '{TORCHVISION_PREFIX}<arch>[:<weights>]' source; got a {type(source).__name__}"
    )
  path = os.fspath(source)
  if not os.path.isfile(path):
    state = "is a directory" if os.path.isdir(path) else "not found"
    raise ConvertError(f"torchvision weights file {path} {state}")
  raw = _read_safetensors(path) if path.endswith(".safetensors") else _read_torch(path)
  where = f"file {path}"
  if not isinstance(raw, Mapping):
    raise ConvertError(
        f"{where} holds a {type(raw).__name__}, not a state dict (names mapped to tensors)"
    )
  return {str(k): _to_numpy(v, str(k), where) for k, v in raw.items()}, where


def load_torchvision(path_or_state_dict: Any, arch: str | None = None) -> tuple[ResNet, Variables]:
  """A torchvision ResNet's weights as our `(module, {'params', 'batch_stats'})`.

  `path_or_state_dict`: a state dict (names to torch tensors or arrays), a file written by
  `torch.save(model.state_dict(), path)` (any suffix but .safetensors; needs torch), a
  `.safetensors` file, or a `torchvision:<arch>[:<weights>]` source (see `resolve_torchvision`).
  `arch`: 'resnet18', 'resnet34' or 'resnet50'; None takes the one whose names the weights have.
  The module is `ResNet18/34/50` with the weights' number of classes and torch's BatchNorm
  convention (`bn_running_variance='unbiased'`); it applies to NHWC images. A missing or
  unexpected name or a shape that differs raises ConvertError listing them; nothing loads partly.
  """
  if isinstance(path_or_state_dict, str) and path_or_state_dict.startswith(TORCHVISION_PREFIX):
    return resolve_torchvision(path_or_state_dict, arch)
  state, where = _read_state(path_or_state_dict)
  arch = infer_torchvision_arch(state, where) if arch is None else _check_arch(arch)
  spec, diff = _compare_state(state, arch)
  if diff:
    others = [a for a in TORCHVISION_ARCHS if a != arch and not _compare_state(state, a)[1]]
    hint = f" Its names and shapes are those of torchvision {others[0]}." if others else ""
    raise ConvertError(f"{where} does not match torchvision {arch}: {diff}.{hint}")
  flat = {
      e.path: jnp.asarray(_from_torch(e.kind, state[name]), jnp.float32) for name, e in spec.items()
  }
  num_classes = state["fc.weight"].shape[0]
  return _module(arch, num_classes), traverse_util.unflatten_dict(flat)


def torchvision_state_dict(variables: Mapping[str, Any], arch: str) -> dict[str, np.ndarray]:
  """Our ResNet `{'params', 'batch_stats'}` as a torchvision state dict of float32 arrays.

  The variables must be those of `ResNet18/34/50` for `arch` with the 'imagenet' stem and 64
  filters (any number of input channels and classes); num_batches_tracked is 0.
  """
  arch = _check_arch(arch)
  extra = sorted(set(variables) - set(_COLLECTIONS))
  if extra or any(c not in variables for c in _COLLECTIONS):
    raise ConvertError(
        f"expected variables with the collections {', '.join(_COLLECTIONS)} only; got"
        f" {', '.join(map(str, variables)) or 'none'}"
    )
  flat = {
      path: np.asarray(jax.device_get(value))
      for path, value in traverse_util.flatten_dict(
          {c: dict(variables[c]) for c in _COLLECTIONS}
      ).items()
  }
  kernel = lambda name: flat.get(("params", name, "kernel"))
  stem, dense = kernel("stem_conv"), kernel("Dense_0")
  in_channels = stem.shape[2] if stem is not None and stem.ndim == 4 else 3
  num_classes = dense.shape[1] if dense is not None and dense.ndim == 2 else 1000
  spec = _spec(arch, in_channels, num_classes)
  by_path = {e.path: e for e in spec.values()}
  slash = lambda path: "/".join(path)
  diff = _mismatch(
      [slash(p) for p in by_path if p not in flat],
      [slash(p) for p in flat if p not in by_path],
      [
          (slash(p), tuple(flat[p].shape), e.shape)
          for p, e in by_path.items()
          if p in flat and tuple(flat[p].shape) != e.shape
      ],
  )
  if diff:
    raise ConvertError(
        f"the variables are not those of a torchvision {arch}: {diff}. torchvision's"
        f" {arch} is jaxmodels ResNet{arch[len('resnet'):]} with stem='imagenet' and"
        " num_filters=64 (any number of input channels and num_classes)."
    )
  state = {}
  for name, e in spec.items():
    state[name] = np.array(_to_torch(e.kind, flat[e.path]), np.float32, order="C")
    if name.endswith(".running_var"):
      state[name.removesuffix("running_var") + "num_batches_tracked"] = np.zeros((), np.int64)
  return state


def save_torchvision(variables: Mapping[str, Any], path: str | os.PathLike, arch: str) -> None:
  """Writes our ResNet variables as a torchvision state dict that `load_state_dict` accepts.

  A path ending in `.safetensors` is written with the safetensors package (read it with
  `safetensors.torch.load_file`); any other path with `torch.save` (read it with `torch.load`).
  The file appears whole or not at all.
  """
  state = torchvision_state_dict(variables, arch)
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    if path.endswith(".safetensors"):
      from safetensors.numpy import save_file

      save_file(state, tmp)
    else:
      try:
        import torch
      except ImportError as e:
        raise ConvertError(
            f"writing {path} needs torch (pip install torch); a .safetensors path does not"
        ) from e
      torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _parse_source(source: str) -> tuple[str, str]:
  fields = source[len(TORCHVISION_PREFIX) :].split(":")
  if not source.startswith(TORCHVISION_PREFIX) or len(fields) > 2 or not fields[0]:
    raise ConvertError(
        f"bad torchvision source {source!r}: use '{TORCHVISION_PREFIX}<arch>[:<weights>]', e.g."
        f" '{TORCHVISION_PREFIX}resnet50:IMAGENET1K_V2' (<weights> defaults to DEFAULT)"
    )
  _check_arch(fields[0])
  return fields[0], fields[1] if len(fields) == 2 else "DEFAULT"


def torchvision_weights_file(source: str) -> tuple[str, str]:
  """(arch, local file) of a `torchvision:<arch>[:<weights>]` source, e.g. resnet50:IMAGENET1K_V2.

  The file is torch hub's (`$TORCH_HOME/hub/checkpoints/<name of the weights' url>`, by default
  under ~/.cache/torch); when absent it is downloaded there, and offline the error names the file
  to place there by hand. Needs torch and torchvision.
  """
  arch, name = _parse_source(source)
  try:
    import torch
    import torchvision.models
  except ImportError as e:
    raise ConvertError(f"resolving {source} needs torch and torchvision ({_one_line(e)})") from e
  enum = torchvision.models.get_model_weights(arch)
  try:
    weights = enum[name]
  except KeyError:
    valid = ", ".join(["DEFAULT", *enum.__members__])
    raise ConvertError(
        f"torchvision has no {arch} weights {name!r} ({source}): use one of {valid}"
    ) from None
  url = weights.url
  path = os.path.join(
      torch.hub.get_dir(), "checkpoints", os.path.basename(urllib.parse.urlparse(url).path)
  )
  if not os.path.isfile(path):
    _download(url, path, source)
  return arch, path


def _download(url: str, path: str, source: str) -> None:
  import torch

  match = torch.hub.HASH_REGEX.search(os.path.basename(path))
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.hub.download_url_to_file(url, path, match.group(1) if match else None, progress=False)
  except Exception as e:
    raise ConvertError(
        f"could not download {source} from {url} ({_one_line(e)}). Without the internet, place"
        f" that file at {path} (torch hub's checkpoints directory, $TORCH_HOME/hub/checkpoints,"
        " by default ~/.cache/torch/hub/checkpoints); it is then loaded from there."
    ) from e


def resolve_torchvision(source: str, arch: str | None = None) -> tuple[ResNet, Variables]:
  """`load_torchvision` of a `torchvision:<arch>[:<weights>]` source's file (see
  `torchvision_weights_file`); `arch`, when given, must be the source's."""
  source_arch, path = torchvision_weights_file(source)
  if arch is not None and _check_arch(arch) != source_arch:
    raise ConvertError(f"{source} holds {source_arch} weights, not {arch}")
  return load_torchvision(path, source_arch)
