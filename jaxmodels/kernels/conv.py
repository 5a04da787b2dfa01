"""2-D convolution through oneDNN on CPU, differentiable (`jax.custom_vjp`), for the conv models.

`conv2d` runs oneDNN's forward primitive and, for gradients, its backward-data and
backward-weights primitives (jaxmodels/kernels/onednn/conv.cc): NHWC inputs, HWIO kernels,
float32, any strides, explicit padding and kernel dilation. `choose` decides per call whether a
`lax.conv_general_dilated` call goes to oneDNN under an `impl` choice:

  'xla'     never (the default of the models)
  'onednn'  always; an error naming the reason when the kernels are not built or the call is not
            one they cover
  'auto'    when the kernels are built and cover the call, else XLA (the reason logged once)

The caller still wraps the choice in `lax.platform_dependent`, so GPU and TPU lowerings never see
the CPU-only FFI targets. Forward-mode differentiation (jvp) is not defined for these kernels.
"""

from collections.abc import Sequence
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jaxmodels.kernels import onednn

IMPLS = ("xla", "onednn", "auto")
NHWC = ("NHWC", "HWIO", "NHWC")

Padding = tuple[tuple[int, int], tuple[int, int]]


class ConvImplError(ValueError):
  """An impl choice that is unknown, or 'onednn' for a convolution it cannot run."""


def unsupported(
    lhs: jax.Array,
    rhs: jax.Array,
    lhs_dilation: Sequence[int] | None,
    dimension_numbers: Any,
    feature_group_count: int,
    kwargs: dict[str, Any],
) -> str | None:
  """Why oneDNN's conv2d cannot run this `lax.conv_general_dilated` call, or None if it can."""
  if lhs.ndim != 4 or rhs.ndim != 4:
    return f"{lhs.ndim - 2}-D convolution (2-D only)"
  if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
    return f"dtype {lhs.dtype}/{rhs.dtype} (float32 only)"
  dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if dims != lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC):
    return f"dimension numbers {dims} (NHWC/HWIO only)"
  if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
    return f"lhs_dilation {tuple(lhs_dilation)} (transposed convolution)"
  if feature_group_count != 1 or kwargs.get("batch_group_count", 1) != 1:
    return "grouped convolution"
  extra = {k: v for k, v in kwargs.items() if k not in ("precision", "batch_group_count")}
  if any(v is not None for v in extra.values()):
    return f"arguments {sorted(extra)}"
  return None


def choose(impl: str, reason_unsupported: str | None) -> bool:
  """True to run this convolution with oneDNN under `impl` (see the module docstring)."""
  return onednn.choose(
      impl, IMPLS, reason_unsupported, ConvImplError, "this convolution", "XLA convolutions"
  )


def explicit_padding(
    lhs_shape: Sequence[int],
    rhs_shape: Sequence[int],
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    dilation: Sequence[int],
) -> Padding:
  """(low, high) padding of H and W, with 'SAME'/'VALID' resolved as lax resolves them."""
  if isinstance(padding, str):
    window = [(k - 1) * d + 1 for k, d in zip(rhs_shape[:2], dilation)]
    padding = lax.padtype_to_pads(lhs_shape[1:3], window, strides, padding)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    strides: Sequence[int] = (1, 1),
    padding: Padding = ((0, 0), (0, 0)),
    dilation: Sequence[int] = (1, 1),
) -> jax.Array:
  """`lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))` computed by oneDNN, with its gradients.

  x: [N, H, W, C] float32; w: [KH, KW, C, O] float32; padding explicit ((top, bottom),
  (left, right)). Loads the kernels on first use (KernelUnavailableError if it cannot).
  """
  onednn.load()
  geometry = (tuple(map(int, strides)), tuple(map(tuple, padding)), tuple(map(int, dilation)))
  _output_shape(x.shape, w.shape, geometry)
  return _conv(x, w, geometry)


def _output_shape(x_shape, w_shape, geometry) -> tuple[int, int, int, int]:
  strides, padding, dilation = geometry
  out = []
  for size, k, s, (lo, hi), d in zip(x_shape[1:3], w_shape[:2], strides, padding, dilation):
    out.append((size + lo + hi - (k - 1) * d - 1) // s + 1)
  if min(out) < 1 or x_shape[3] != w_shape[2]:
    raise ValueError(
        f"conv2d: input {tuple(x_shape)} and kernel {tuple(w_shape)} with strides {strides}, "
        f"padding {padding}, dilation {dilation} give no output (or the channels differ)"
    )
  return (x_shape[0], out[0], out[1], w_shape[3])


def _ffi(target: str, shape: Sequence[int], a: jax.Array, b: jax.Array, geometry) -> jax.Array:
  strides, padding, dilation = geometry
  call = jax.ffi.ffi_call(
      target,
      jax.ShapeDtypeStruct(tuple(shape), jnp.float32),
      # Under vmap, one kernel call per batch element (a loop); correct, not fast.
      vmap_method="sequential",
  )
  return call(
      a,
      b,
      strides=np.asarray(strides, np.int64),
      padding=np.asarray(padding, np.int64).reshape(-1),
      dilation=np.asarray(dilation, np.int64),
      threads=np.int64(onednn.call_threads()),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, w: jax.Array, geometry) -> jax.Array:
  shape = _output_shape(x.shape, w.shape, geometry)
  return _ffi("jaxmodels_onednn_conv_forward", shape, x, w, geometry)


def _conv_forward(x, w, geometry):
  return _conv(x, w, geometry), (x, w)


def _conv_backward(geometry, residuals, g):
  x, w = residuals
  dx = _ffi("jaxmodels_onednn_conv_backward_data", x.shape, g, w, geometry)
  dw = _ffi("jaxmodels_onednn_conv_backward_weights", w.shape, x, g, geometry)
  return dx, dw


_conv.defvjp(_conv_forward, _conv_backward)
