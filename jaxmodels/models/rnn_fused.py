"""The fused recurrence behind `rnn.RecurrentLayer` (`impl='fused'`): one direction of one LSTM,
GRU or Elman layer over time-major inputs, with a hand-written VJP.

The input projections of all time steps are one large matmul before the scan and only `h @ W_h`
stays in the loop; the backward loop multiplies by `W_h^T` stored once, and both weight gradients
are one large matmul each after the loop. Parameters come fused as `rnn.CellParams` returns them
(gate blocks LSTM i, f, o, g; GRU r, z, n). Carries follow flax: LSTM `(c, h)`, GRU and RNN `h`.
"""

import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp

Carry = Any


def carry_output(cell: str, carry: Carry) -> jax.Array:
  """The hidden state `h` [B, H] inside a carry."""
  return carry[1] if cell == "lstm" else carry


# Each cell's step in two halves for the hand-written VJP of the whole scan. `fwd(w_h, b_hn,
# carry, xp_t)` -> (new carry, output, residuals), where xp_t already holds the input projection
# and bias; `bwd(w_h_t, residuals, h_prev, d_carry, d_out)` -> (d previous carry, d xp_t, d hp_t),
# with w_h_t = w_h.T and hp_t = h_prev @ w_h the recurrent pre-activation; d hp_t is None where it
# equals d xp_t (LSTM, RNN: only GRU's reset gate sits between them).


def _lstm_fwd(w_h, b_hn, carry, xp):
  del b_hn
  c, h = carry
  z = xp + h @ w_h
  hid = h.shape[-1]
  s = jax.nn.sigmoid(z[:, : 3 * hid])
  g = jnp.tanh(z[:, 3 * hid :])
  i, f, o = jnp.split(s, 3, axis=-1)
  c_new = f * c + i * g
  tc = jnp.tanh(c_new)
  h_new = o * tc
  return (c_new, h_new), h_new, (s, g, tc, c)


def _lstm_bwd(w_h_t, res, h_prev, d_carry, dy):
  del h_prev
  s, g, tc, c_prev = res
  i, f, o = jnp.split(s, 3, axis=-1)
  dc, dh = d_carry
  dh = dh + dy
  dc = dc + dh * o * (1 - tc * tc)
  ds = jnp.concatenate([dc * g, dc * c_prev, dh * tc], axis=-1) * s * (1 - s)
  dz = jnp.concatenate([ds, dc * i * (1 - g * g)], axis=-1)
  return (dc * f, dz @ w_h_t), dz, None


def _gru_fwd(w_h, b_hn, h, xp):
  hp = h @ w_h
  hid = h.shape[-1]
  r, u = jnp.split(jax.nn.sigmoid(xp[:, : 2 * hid] + hp[:, : 2 * hid]), 2, axis=-1)
  hn = hp[:, 2 * hid :] + b_hn
  n = jnp.tanh(xp[:, 2 * hid :] + r * hn)
  h_new = (1 - u) * n + u * h
  return h_new, h_new, (r, u, n, hn)


def _gru_bwd(w_h_t, res, h_prev, d_carry, dy):
  r, u, n, hn = res
  dh = d_carry + dy
  dn = dh * (1 - u) * (1 - n * n)
  dr = dn * hn * r * (1 - r)
  du = dh * (h_prev - n) * u * (1 - u)
  dxp = jnp.concatenate([dr, du, dn], axis=-1)
  dhp = jnp.concatenate([dr, du, dn * r], axis=-1)
  return dh * u + dhp @ w_h_t, dxp, dhp


def _rnn_fwd(w_h, b_hn, h, xp):
  del b_hn
  h_new = jnp.tanh(xp + h @ w_h)
  return h_new, h_new, h_new


def _rnn_bwd(w_h_t, res, h_prev, d_carry, dy):
  del h_prev
  dz = (d_carry + dy) * (1 - res * res)
  return dz @ w_h_t, dz, None


_FWD = {"lstm": _lstm_fwd, "gru": _gru_fwd, "rnn": _rnn_fwd}
_BWD = {"lstm": _lstm_bwd, "gru": _gru_bwd, "rnn": _rnn_bwd}


def _transposed(x: jax.Array) -> jax.Array:
  """x [..., N] flattened to [M, N] and transposed, as a real copy.

  Contracting the (time, batch) axes of two [T, B, *] arrays, XLA on CPU either ran the matmul at
  half speed or transposed the larger operand; the barrier makes it transpose this one.
  """
  return lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def run_fused(
    cell: str, x: jax.Array, params, carry: Carry, mask: jax.Array | None
) -> tuple[Carry, jax.Array]:
  """Runs one direction over time-major x [T, B, F] from `carry`; returns (final carry, h [T,B,H]).

  `params` is `(w_x, b_x, w_h, b_hn)` from `rnn.CellParams`. The input projection of all steps is
  one matmul before the loop. Where `mask[t, b]` is False the carry is left unchanged, so with
  padding at the end the final carry is the one after each sequence's last real step (outputs
  there are still computed). Its VJP is written by hand: the backward loop keeps only
  `dz @ w_h.T` and the elementwise derivatives, and both weight gradients are one large matmul
  each after the loop (autodiff of `lax.scan` accumulates `h_{t-1}^T dz_t` step by step).
  First-order reverse mode only.
  """
  return _scan_forward(cell, x, params, carry, mask, save=False)[0]


def _scan_forward(cell, x, params, carry, mask, save):
  w_x, b_x, w_h, b_hn = params
  fwd = _FWD[cell]
  xp = jnp.einsum("tbf,fg->tbg", x, w_x)

  def body(c, inputs):
    xp_t, m_t = inputs
    # The bias is added per step: a separate pass over the whole xp was slower on CPU.
    new, y, res = fwd(w_h, b_hn, c, xp_t + b_x)
    if m_t is not None:
      new = jax.tree.map(lambda a, b: jnp.where(m_t[:, None], a, b), new, c)
    return new, (y, (res, carry_output(cell, c)) if save else None)

  carry, (ys, saved) = lax.scan(body, carry, (xp, mask))
  return (carry, ys), saved


def _run_fused_fwd(cell, x, params, carry, mask):
  out, saved = _scan_forward(cell, x, params, carry, mask, save=True)
  return out, (saved, x, params, mask)


def _run_fused_bwd(cell, residuals, cotangents):
  (res, h_prev), x, (w_x, _, w_h, b_hn), mask = residuals
  d_carry, d_ys = cotangents
  bwd = _BWD[cell]
  # Stored transposed once: YNNPACK ran `dz @ w_h.T` 20% slower than a matmul with w_h.T stored.
  w_h_t = lax.optimization_barrier(w_h.T)

  def body(dc, inputs):
    res_t, h_prev_t, m_t, dy_t = inputs
    if m_t is None:
      return _bwd_step(bwd, w_h_t, res_t, h_prev_t, dc, dy_t)
    keep = lambda a: jnp.where(m_t[:, None], a, 0)
    skip = lambda a: jnp.where(m_t[:, None], 0, a)
    d_prev, grads = _bwd_step(bwd, w_h_t, res_t, h_prev_t, jax.tree.map(keep, dc), dy_t)
    return jax.tree.map(lambda a, b: a + skip(b), d_prev, dc), grads

  d_carry, (d_xp, d_hp) = lax.scan(body, d_carry, (res, h_prev, mask, d_ys), reverse=True)
  d_hp = d_xp if d_hp is None else d_hp
  d_xp2 = d_xp.reshape(-1, d_xp.shape[-1])
  d_w_x = _transposed(x) @ d_xp2
  d_w_h = _transposed(h_prev) @ d_hp.reshape(-1, d_hp.shape[-1])
  d_b_hn = None if b_hn is None else jnp.sum(d_hp[..., -b_hn.shape[0] :], axis=(0, 1))
  d_x = (d_xp2 @ lax.optimization_barrier(w_x.T)).reshape(x.shape)
  return d_x, (d_w_x, jnp.sum(d_xp2, axis=0), d_w_h, d_b_hn), d_carry, None


def _bwd_step(bwd, w_h_t, res, h_prev, d_carry, dy):
  d_prev, d_xp, d_hp = bwd(w_h_t, res, h_prev, d_carry, dy)
  return d_prev, (d_xp, d_hp)


run_fused.defvjp(_run_fused_fwd, _run_fused_bwd)
