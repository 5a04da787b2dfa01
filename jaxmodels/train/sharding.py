"""How arrays are laid out on the (data, fsdp, tensor) mesh: the one logical-axis rule table.

Models name the axes of their parameters (`nn.with_logical_partitioning`) and activations
(`nn.with_logical_constraint`) with logical names; RULES maps each name to mesh axes. A parameter
without names (CNN, ResNet, RNN, MLP) is split over 'fsdp' along its largest divisible dimension.
A parameter axis ('fsdp', 'tensor') that an array's names leave unused, or that does not divide
its dimension, goes to the largest dimension it divides (GPT-2's vocabulary of 50257 cannot
split over 'tensor', so the embedding's model dimension takes 'tensor' as well as 'fsdp'; a
LayerNorm scale is split too); with none, the array is replicated over that axis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from jaxmodels.train.config import ConfigError

AXES = ("data", "fsdp", "tensor")
PARAMETER_AXES = ("fsdp", "tensor")  # parameters are split over these, replicated over data
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("kv", None),
    ("pos", None),
    ("layers", None),
    ("norm", None),
    ("length", None),
)


def make_mesh(fsdp: int, tensor: int, devices: Any = None) -> Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: all); data takes what remains."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  n = devices.size
  if fsdp < 1 or tensor < 1 or n % (fsdp * tensor):
    raise ConfigError(
        f"config.fsdp={fsdp} x config.tensor={tensor} must divide the {n} devices; valid "
        f"products: {', '.join(str(d) for d in _divisors(n))}."
    )
  return Mesh(devices.reshape(n // (fsdp * tensor), fsdp, tensor), AXES)


def check_model(model: nn.Module, tensor: int) -> None:
  """Rejects a tensor size that does not divide the model's heads or MLP width."""
  fields = {f.name for f in dataclasses.fields(model)}
  for name in ("num_heads", "mlp_dim"):
    value = getattr(model, name, None) if name in fields else None
    if isinstance(value, int) and value % tensor:
      raise ConfigError(
          f"config.tensor={tensor} does not divide the model's {name}={value}; use a tensor "
          f"size among {', '.join(str(d) for d in _divisors(value))} or change model.{name}."
      )


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def is_boxed(x: Any) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def tree_shardings(boxed: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree whose leaves are arrays or shape structs, some of them in
  `nn.Partitioned` boxes; the result has the structure of the unboxed tree."""
  return jax.tree_util.tree_map(lambda x: leaf_sharding(x, mesh), boxed, is_leaf=is_boxed)


def leaf_sharding(x: Any, mesh: Mesh) -> NamedSharding:
  """Through RULES for a boxed leaf; the largest divisible dimension over 'fsdp' otherwise."""
  if is_boxed(x):
    shape = np.shape(x.unbox(apply_constraint=False))
    spec = nn.logical_to_mesh_axes(x.get_partition_spec(), RULES)
    return NamedSharding(mesh, P(*_moved_where_they_fit(list(spec), shape, mesh)))
  return NamedSharding(mesh, _fsdp_spec(np.shape(x), mesh.shape["fsdp"]))


def _names(axes: Any) -> tuple[str, ...]:
  return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def _moved_where_they_fit(spec: list[Any], shape: tuple[int, ...], mesh: Mesh) -> list[Any]:
  """`spec` with the axes that do not divide their dimension removed, then every parameter axis
  ('fsdp', 'tensor') it does not use added to the largest dimension it divides (with the axes
  already there): each device then holds 1/(fsdp*tensor) of every array that allows it."""
  fitted = [_fitting(a, d, mesh) for a, d in zip(spec, shape)]
  used = {n for f in fitted for n in _names(f)}
  for name in (n for n in PARAMETER_AXES if mesh.shape[n] > 1 and n not in used):
    for dim in sorted(range(len(shape)), key=lambda i: -shape[i]):
      names = _names(fitted[dim]) + (name,)
      if shape[dim] % math.prod(mesh.shape[n] for n in names) == 0:
        fitted[dim] = names
        break
  return fitted


def _fitting(axes: Any, dim: int, mesh: Mesh) -> Any:
  """`axes` where their size divides `dim`, else None (that dimension replicated)."""
  if axes is None:
    return None
  names = (axes,) if isinstance(axes, str) else tuple(axes)
  size = math.prod(mesh.shape[a] for a in names)
  return axes if size > 1 and dim % size == 0 else None


def _fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
  if fsdp == 1 or not shape:
    return P()
  dims = [d for d in np.argsort(shape)[::-1] if shape[d] % fsdp == 0]
  if not dims:
    return P()
  spec = [None] * len(shape)
  spec[dims[0]] = "fsdp"
  return P(*spec)
