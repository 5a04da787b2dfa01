"""One direction of one LSTM layer through oneDNN on CPU, differentiable (`jax.custom_vjp`), for
`rnn.RecurrentLayer`.

`lstm_layer` computes what `rnn_fused.run_fused('lstm', ...)` computes, with oneDNN's forward
(training) and backward LSTM primitives over the whole sequence (jaxmodels/kernels/onednn/lstm.cc):
float32, time-major, left to right. `choose` decides per layer whether it runs under an `impl`
choice:

  'fused'   never (the default of the models: `rnn_fused.run_fused`)
  'onednn'  always; an error naming the reason when the kernels are not built or the layer is not
            one they cover (a GRU or RNN cell, a dtype other than float32, an empty dimension)
  'auto'    when the kernels are built and cover the layer, else the fused path (the reason the
            kernels are unavailable logged once)

The caller wraps the choice in `lax.platform_dependent`, so GPU and TPU lowerings never see the
CPU-only FFI targets. Forward-mode differentiation (jvp) is not defined for these kernels.
"""

import ctypes
import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jaxmodels.kernels import onednn

IMPLS = ("fused", "onednn", "auto")

Params = tuple[jax.Array, jax.Array, jax.Array, None]
LSTMCarry = tuple[jax.Array, jax.Array]


class LSTMImplError(ValueError):
  """An impl choice that is unknown, or 'onednn' for a layer it cannot run."""


def unsupported(cell: str, x: jax.Array, hidden: int) -> str | None:
  """Why oneDNN's LSTM cannot run this layer (x [T, B, F], `hidden` units), or None if it can."""
  if cell != "lstm":
    return f"cell {cell!r} (LSTM only)"
  if x.dtype != jnp.float32:
    return f"dtype {x.dtype} (float32 only)"
  if x.ndim != 3 or min(x.shape) < 1 or hidden < 1:
    return f"input shape {x.shape} with {hidden} units (needs [T, B, F] and H, all >= 1)"
  return None


def choose(impl: str, reason_unsupported: str | None) -> bool:
  """True to run this layer with oneDNN under `impl` (see the module docstring)."""
  return onednn.choose(
      impl, IMPLS, reason_unsupported, LSTMImplError, "this layer", "the fused recurrent layers"
  )


def lstm_layer(
    x: jax.Array, params: Params, carry: LSTMCarry, lengths: jax.Array | None = None
) -> tuple[LSTMCarry, jax.Array]:
  """`rnn_fused.run_fused('lstm', x, params, carry, mask)` computed by oneDNN, with gradients.

  x [T, B, F] float32; `params` `(w_x [F, 4H], b [4H], w_h [H, 4H], None)` as `rnn.CellParams`
  returns them (gate blocks i, f, o, g); carry `(c, h)` [B, H]. `lengths` [B] stands for the mask
  `t < lengths[b]` (padding at the end): the final carry is the one after each sequence's last
  real step, the initial carry where a length is 0. Returns (final carry, h of every step
  [T, B, H]). Loads the kernels on first use (KernelUnavailableError if it cannot).
  """
  onednn.load()
  w_x, b, w_h, b_hn = params
  if b_hn is not None:
    raise LSTMImplError("lstm_layer: an LSTM has no b_hn; pass CellParams('lstm', ...)'s tuple")
  c0, h0 = carry
  ys, h_n, c_n = _lstm(x, h0, c0, _to_onednn(w_x), _to_onednn(w_h), _to_onednn(b))
  if lengths is None:
    return (c_n, h_n), ys
  steps = x.shape[0]
  n = jnp.clip(lengths, 0, steps)
  last = jnp.take_along_axis(ys, ((n - 1) % steps)[None, :, None], axis=0)[0]
  h = jnp.where((n > 0)[:, None], last, h0)
  mask = jnp.arange(steps)[:, None] < lengths[None, :]
  return (_final_cell(x, params, c0, h0, ys, mask), h), ys


def _to_onednn(w: jax.Array) -> jax.Array:
  """Gate blocks i, f, o, g (ours) <-> i, f, g, o (oneDNN's i, f, c~, o) on the last axis; the
  swap is its own inverse. Slices and a concatenate, so its gradient is the same swap."""
  hid = w.shape[-1] // 4
  return jnp.concatenate([w[..., : 2 * hid], w[..., 3 * hid :], w[..., 2 * hid : 3 * hid]], -1)


def _final_cell(x, params, c0, h0, ys, mask):
  """The cell state after each sequence's last real step, which oneDNN does not expose.

  The inputs of every step are known once the kernel has run (h_{t-1} is y_{t-1}), so the gates
  are one parallel matmul and c_t = f_t c_{t-1} + i_t g_t is a linear recurrence, frozen where
  the mask is off: an associative scan. Plain JAX, so under jit XLA drops all of it when the
  final c goes unused (a classifier uses the final h only).
  """
  w_x, b, w_h, _ = params
  hid = h0.shape[-1]
  ifg = lambda w: jnp.concatenate([w[..., : 2 * hid], w[..., 3 * hid :]], -1)  # o is not needed
  h_prev = jnp.concatenate([h0[None], ys[:-1]])
  z = jnp.einsum("tbf,fg->tbg", x, ifg(w_x)) + jnp.einsum("tbh,hg->tbg", h_prev, ifg(w_h))
  z = z + ifg(b)
  i, f = jax.nn.sigmoid(z[..., :hid]), jax.nn.sigmoid(z[..., hid : 2 * hid])
  g = jnp.tanh(z[..., 2 * hid :])
  m = mask[..., None]
  decay, add = jnp.where(m, f, 1.0), jnp.where(m, i * g, 0.0)

  def compose(first, second):
    (a1, u1), (a2, u2) = first, second
    return a1 * a2, a2 * u1 + u2

  decay, add = lax.associative_scan(compose, (decay, add))
  return decay[-1] * c0 + add[-1]


def _threads() -> np.int64:
  return np.int64(onednn.call_threads())


@functools.cache
def _workspace_bytes(steps: int, batch: int, features: int, hidden: int) -> int:
  fn = onednn.load().JaxmodelsOnednnLstmWorkspaceBytes
  fn.restype = ctypes.c_int64
  fn.argtypes = [ctypes.c_int64] * 4
  size = fn(steps, batch, features, hidden)
  if size < 0:
    raise LSTMImplError(
        f"oneDNN has no LSTM for T={steps}, B={batch}, F={features}, H={hidden} (see stderr)"
    )
  return size


def _call_forward(x, h0, c0, w_x, w_h, b):
  steps, batch, features = x.shape
  hidden = h0.shape[-1]
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  workspace = jax.ShapeDtypeStruct((_workspace_bytes(steps, batch, features, hidden),), jnp.uint8)
  call = jax.ffi.ffi_call(
      "jaxmodels_onednn_lstm_forward",
      (f32(steps, batch, hidden), f32(batch, hidden), f32(batch, hidden), workspace),
      # Under vmap, one kernel call per batch element (a loop); correct, not fast.
      vmap_method="sequential",
  )
  return call(x, h0, c0, w_x, w_h, b, threads=_threads())


@jax.custom_vjp
def _lstm(x, h0, c0, w_x, w_h, b):
  """oneDNN's LSTM with its own gate order: (y [T, B, H], final h, final c).

  Undifferentiated calls (evaluation, sampling) run the inference primitive, which writes no
  workspace; under differentiation `_lstm_forward` runs the training one.
  """
  steps, batch, _ = x.shape
  state = jax.ShapeDtypeStruct((batch, h0.shape[-1]), jnp.float32)
  call = jax.ffi.ffi_call(
      "jaxmodels_onednn_lstm_inference",
      (jax.ShapeDtypeStruct((steps, batch, h0.shape[-1]), jnp.float32), state, state),
      vmap_method="sequential",
  )
  return call(x, h0, c0, w_x, w_h, b, threads=_threads())


def _lstm_forward(x, h0, c0, w_x, w_h, b):
  y, h_n, c_n, workspace = _call_forward(x, h0, c0, w_x, w_h, b)
  return (y, h_n, c_n), (x, h0, c0, w_x, w_h, b, y, h_n, c_n, workspace)


def _lstm_backward(residuals, cotangents):
  inputs = residuals[:6]
  call = jax.ffi.ffi_call(
      "jaxmodels_onednn_lstm_backward",
      tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in inputs),
      vmap_method="sequential",
  )
  return tuple(call(*residuals, *cotangents, threads=_threads()))


_lstm.defvjp(_lstm_forward, _lstm_backward)
