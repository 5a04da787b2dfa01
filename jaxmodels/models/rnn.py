"""Recurrent models: an Elman cell, LSTM/GRU/RNN layers, a classifier and a language model.

Interchangeable implementations of a layer, with one parameter tree (flax's layout:
`nn.OptimizedLSTMCell`/`nn.LSTMCell`, `nn.GRUCell`, `nn.SimpleCell` names and shapes under a
child called 'cell'):
- `impl='fused'` (default): the input projections of all time steps are one large matmul before
  the scan, only `h @ W_h` stays in the loop, and the layer has a hand-written VJP: the backward
  loop multiplies by `W_h^T` stored once, and both weight gradients are one large matmul each
  after the loop (`rnn_fused.run_fused`).
- `impl='flax'`: `nn.RNN` over the flax cell, input and recurrent matmuls per step, autodiff.
- `impl='onednn'`: float32 LSTM layers on CPU run oneDNN's LSTM primitives over the whole
  sequence, forward and backward (`jaxmodels.kernels.lstm`; an error naming the reason where the
  kernels are not built or the cell or dtype is another); `impl='auto'` uses them where they
  apply and the fused path elsewhere. Other platforms always lower the fused path. Measured
  speeds against the fused path: the README's "oneDNN kernels" section.
Training steps (gradients of a loss over a layer, F=128, T=128, min of 7 in one process, 2-core
CPU, Nov 2026), flax vs fused: LSTM B=64 H=128 75.6 vs 61.5 ms, B=32 H=256 97.9 vs 76.8 ms; GRU
B=64 H=128 65.4 vs 47.6 ms, B=32 H=512 205 vs 166 ms; RNN B=64 H=128 22.4 vs 15.5 ms. The
benchmark's LSTM language model: 126 vs 152 seq/s. Forward passes alone are mixed: fused is
faster for the LSTM at H=128 (21 vs 25 ms) and the RNN, flax for GRU (20 vs 31 ms at B=64 H=128)
and the LSTM at H=256 (22 vs 28 ms); an evaluation-heavy GRU job may prefer `impl='flax'`.

Carries follow flax: LSTM `(c, h)`, GRU and RNN `h`, each [B, H].
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxmodels.kernels import lstm as lstm_kernels
from jaxmodels.models.common import ModelOptionError, logits_dtype, sample_logits
from jaxmodels.models.rnn_fused import Carry, carry_output, run_fused

Initializer = Callable[..., jax.Array]

CELLS = ("rnn", "lstm", "gru")
IMPLS = ("fused", "flax", "onednn", "auto")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}

_default_kernel_init = nn.initializers.lecun_normal()
_default_recurrent_init = nn.initializers.orthogonal()
_zeros = nn.initializers.zeros_init()


def _check_cell(cell: str) -> None:
  if cell not in CELLS:
    raise ModelOptionError(f"unknown cell {cell!r}: choose one of {CELLS}")


class SimpleRNNCell(nn.RNNCellBase):
  """Elman cell: `h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h)`, usable inside `nn.RNN`.

  The carry is `h` [..., features]. The output `y_t` is `h_t` when `output_features` is None (what
  a stacked recurrent layer wants), else the projection `y_t = W_hy h_t + b_y` with
  `output_features` units. Parameters: 'i' (W_xh as kernel [F, H], b_h as bias), 'h' (W_hh as
  kernel [H, H], no bias), 'o' (W_hy, b_y; only with `output_features`). With
  `output_features=None` this matches `nn.SimpleCell`'s parameters exactly.
  """

  features: int
  output_features: int | None = None
  activation_fn: Callable[[jax.Array], jax.Array] = jnp.tanh
  kernel_init: Initializer = _default_kernel_init
  recurrent_kernel_init: Initializer = _default_recurrent_init
  bias_init: Initializer = _zeros
  carry_init: Initializer = _zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    dense = functools.partial(
        nn.Dense, self.features, dtype=self.dtype, param_dtype=self.param_dtype
    )
    pre = dense(kernel_init=self.kernel_init, bias_init=self.bias_init, name="i")(inputs) + dense(
        use_bias=False, kernel_init=self.recurrent_kernel_init, name="h"
    )(carry)
    h = self.activation_fn(pre)
    if self.output_features is None:
      return h, h
    y = nn.Dense(
        self.output_features,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=self.kernel_init,
        bias_init=self.bias_init,
        name="o",
    )(h)
    return h, y

  @nn.nowrap
  def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> jax.Array:
    """Zero state [*batch, features] for inputs of shape [*batch, in_features]."""
    return self.carry_init(rng, tuple(input_shape[:-1]) + (self.features,), self.dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


def flax_cell(
    cell: str, features: int, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, **kw
) -> nn.RNNCellBase:
  """The per-step cell for `cell` ('rnn' | 'lstm' | 'gru') with this module's parameter layout.

  LSTM is `nn.OptimizedLSTMCell` (same parameters as `nn.LSTMCell`), GRU `nn.GRUCell`, RNN
  `SimpleRNNCell`. Extra keywords (e.g. `parent=None`) go to the cell's constructor.
  """
  _check_cell(cell)
  kw = {"dtype": dtype, "param_dtype": param_dtype, **kw}
  if cell == "lstm":
    return nn.OptimizedLSTMCell(features, **kw)
  if cell == "gru":
    return nn.GRUCell(features, **kw)
  return SimpleRNNCell(features, **kw)


class _DenseParams(nn.Module):
  """Creates 'kernel' (and 'bias') exactly as nn.Dense would, and returns them unapplied."""

  features: int
  use_bias: bool
  kernel_init: Initializer
  bias_init: Initializer
  param_dtype: Any

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array | None]:
    kernel = self.param("kernel", self.kernel_init, (in_features, self.features), self.param_dtype)
    if not self.use_bias:
      return kernel, None
    return kernel, self.param("bias", self.bias_init, (self.features,), self.param_dtype)


# (name, use_bias) of the input-side and hidden-side Dense layers of each flax cell, gate order.
_LAYOUT = {
    "lstm": (
        (("ii", False), ("if", False), ("ig", False), ("io", False)),
        (("hi", True), ("hf", True), ("hg", True), ("ho", True)),
    ),
    "gru": (
        (("ir", True), ("iz", True), ("in", True)),
        (("hr", False), ("hz", False), ("hn", True)),
    ),
    "rnn": ((("i", True),), (("h", False),)),
}
_IFOG = (0, 1, 3, 2)  # flax's LSTM gates i, f, g, o -> fused order i, f, o, g


class CellParams(nn.Module):
  """A flax cell's parameters, fused for the whole-sequence layer.

  Returns `(w_x [F, G*H], b_x [G*H], w_h [H, G*H], b_hn [H] | None)` with gate blocks ordered
  LSTM i, f, o, g (flax's i, f, g, o reordered so that one sigmoid covers a contiguous 3H block:
  XLA on CPU ran that scan twice as fast as four sliced activations) and GRU r, z, n. LSTM's
  recurrent biases act as the input-side bias (the two are summed anyway); GRU keeps `b_hn`
  apart because it sits inside `r * (W_hn h + b_hn)`. The parameters themselves keep flax's
  names and shapes; only this fused view is reordered.
  """

  cell: str
  features: int
  kernel_init: Initializer = _default_kernel_init
  recurrent_kernel_init: Initializer = _default_recurrent_init
  bias_init: Initializer = _zeros
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, in_features: int):
    _check_cell(self.cell)
    x_side, h_side = _LAYOUT[self.cell]
    make = functools.partial(
        _DenseParams, self.features, bias_init=self.bias_init, param_dtype=self.param_dtype
    )
    xs = [make(use_bias=b, kernel_init=self.kernel_init, name=n)(in_features) for n, b in x_side]
    hs = [
        make(use_bias=b, kernel_init=self.recurrent_kernel_init, name=n)(self.features)
        for n, b in h_side
    ]
    if self.cell == "lstm":  # fused column order i, f, o, g: one sigmoid over a 3H block
      xs, hs = [xs[j] for j in _IFOG], [hs[j] for j in _IFOG]
    w_x = jnp.concatenate([k for k, _ in xs], axis=-1)
    w_h = jnp.concatenate([k for k, _ in hs], axis=-1)
    if self.cell == "lstm":
      return w_x, jnp.concatenate([b for _, b in hs]), w_h, None
    if self.cell == "gru":
      return w_x, jnp.concatenate([b for _, b in xs]), w_h, hs[2][1]
    return w_x, xs[0][1], w_h, None


def zero_carry(cell: str, batch_size: int, features: int, dtype: Any = jnp.float32) -> Carry:
  """The zero initial carry of one layer and direction: LSTM `(c, h)`, GRU/RNN `h`."""
  h = jnp.zeros((batch_size, features), dtype)
  return (h, h) if cell == "lstm" else h


def reverse_time(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
  """Reverses the real part of each time-major sequence x [T, B, ...]; padding stays at the end.

  Position t < lengths[b] goes to lengths[b] - 1 - t; padding positions are permuted among
  themselves. The map is its own inverse, so it also undoes itself.
  """
  if lengths is None:
    return x[::-1]
  steps = x.shape[0]
  idx = (lengths[None, :] - 1 - jnp.arange(steps)[:, None]) % steps
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=0)


def swap_time_batch(x: jax.Array) -> jax.Array:
  """[B, T, ...] <-> [T, B, ...] as a real copy.

  The barrier keeps XLA from folding the transpose into the neighbouring matmul, which on CPU
  ran the input projection at a quarter of its speed in measurements here.
  """
  return lax.optimization_barrier(jnp.swapaxes(x, 0, 1))


class RecurrentLayer(nn.Module):
  """One direction of one fused recurrent layer on time-major inputs x [T, B, F].

  `__call__(x, lengths, carry) -> (final carry, outputs [T, B, H])`. With `reverse=True` it reads
  each sequence from its last real token back to its first and returns outputs in the original
  order. Outputs at padding positions are unspecified (callers mask them); the final carry
  ignores padding. Parameters live in the child 'cell' in flax's layout (see `CellParams`).

  `impl` ('fused', 'onednn', 'auto'; jaxmodels.kernels.lstm) may hand a float32 LSTM layer to
  oneDNN's LSTM primitives on CPU; other platforms, cells and dtypes run `rnn_fused.run_fused`.
  """

  cell: str
  features: int
  reverse: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  impl: str = "fused"

  @nn.compact
  def __call__(
      self, x: jax.Array, lengths: jax.Array | None, carry: Carry | None = None
  ) -> tuple[Carry, jax.Array]:
    steps, batch = x.shape[:2]
    if carry is None:
      carry = zero_carry(self.cell, batch, self.features, self.dtype)
    params = CellParams(self.cell, self.features, param_dtype=self.param_dtype, name="cell")(
        x.shape[-1]
    )
    params = jax.tree.map(lambda p: p.astype(self.dtype), params)
    carry = jax.tree.map(lambda c: c.astype(self.dtype), carry)
    x = x.astype(self.dtype)
    mask = None if lengths is None else jnp.arange(steps)[:, None] < lengths[None, :]
    if self.reverse:
      x = reverse_time(x, lengths)
    fused = lambda x, params, carry: run_fused(self.cell, x, params, carry, mask)
    if lstm_kernels.choose(self.impl, lstm_kernels.unsupported(self.cell, x, self.features)):
      onednn = lambda x, params, carry: lstm_kernels.lstm_layer(x, params, carry, lengths)
      carry, out = lax.platform_dependent(x, params, carry, cpu=onednn, default=fused)
    else:
      carry, out = fused(x, params, carry)
    if self.reverse:
      out = reverse_time(out, lengths)
    return carry, out


class Recurrent(nn.Module):
  """Stacked, optionally bidirectional recurrent layers honouring sequence lengths.

  `__call__(x [B, T, F], lengths [B] | None, train) -> (outputs [B, T, D*H], final_state [B, D*H])`
  with D = 2 when bidirectional (forward then backward features). Padding after `lengths[b]`
  never changes outputs at real positions nor the final state; outputs at padding positions are
  zero. The backward direction starts at each sequence's last real token, so its final state is
  its output at position 0. `dropout_rate` applies between layers (on each layer's input but the
  first), with the 'dropout' rng when `train`.

  `initial_carry` / `return_carry=True` expose the full state, a tuple over layers of tuples over
  directions of cell carries; then the call returns `(outputs, final_state, carries)`.

  `impl='fused'` (default; the faster training step, see the module docstring) runs
  `RecurrentLayer`; `impl='flax'` runs `nn.RNN` over the flax cell (`nn.OptimizedLSTMCell`,
  `nn.GRUCell`, `SimpleRNNCell`); `impl='onednn'` and `'auto'` run `RecurrentLayer` with
  oneDNN's LSTM kernels on CPU (see the module docstring). All have the same parameter tree,
  `{'layer{l}_{fwd|bwd}': {'cell': <flax cell params>}}`, and give the same results.

  `time_major=True` takes x [T, B, F] and returns outputs [T, B, D*H]: the layers run time-major,
  and a caller that can produce time-major inputs (an embedding of `ids.T`) skips two transposes.
  """

  cell: str = "lstm"
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  impl: str = "fused"
  time_major: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      lengths: jax.Array | None = None,
      train: bool = False,
      *,
      initial_carry: Any = None,
      return_carry: bool = False,
  ):
    _check_cell(self.cell)
    if self.impl not in IMPLS:
      raise ModelOptionError(f"unknown impl {self.impl!r}: use one of {', '.join(IMPLS)}")
    h = x.astype(self.dtype) if self.time_major else swap_time_batch(x.astype(self.dtype))
    directions = (False, True) if self.bidirectional else (False,)
    carries = []
    for layer in range(self.num_layers):
      if layer > 0 and self.dropout_rate > 0:
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
      outs, layer_carries = [], []
      for d, reverse in enumerate(directions):
        c0 = None if initial_carry is None else initial_carry[layer][d]
        c, out = self._direction(layer, reverse, h, lengths, c0)
        outs.append(out)
        layer_carries.append(c)
      h = jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
      carries.append(tuple(layer_carries))
    if lengths is not None:
      real = jnp.arange(h.shape[0])[:, None] < lengths[None, :]
      h = jnp.where(real[..., None], h, 0)
    outputs = h if self.time_major else swap_time_batch(h)
    final = jnp.concatenate([carry_output(self.cell, c) for c in carries[-1]], axis=-1)
    if return_carry:
      return outputs, final, tuple(carries)
    return outputs, final

  @nn.nowrap
  def _direction(self, layer: int, reverse: bool, x, lengths, carry):
    name = f"layer{layer}_{'bwd' if reverse else 'fwd'}"
    if carry is None:
      carry = zero_carry(self.cell, x.shape[1], self.hidden_size, self.dtype)
    if self.impl != "flax":
      return RecurrentLayer(
          self.cell, self.hidden_size, reverse, self.dtype, self.param_dtype, self.impl, name=name
      )(x, lengths, carry)
    # parent=None leaves the cell unbound so that nn.RNN adopts it as its child 'cell'.
    rnn = nn.RNN(
        flax_cell(self.cell, self.hidden_size, self.dtype, self.param_dtype, parent=None),
        time_major=True,
        name=name,
    )
    new, out = rnn(
        x,
        initial_carry=carry,
        seq_lengths=lengths,
        return_carry=True,
        reverse=reverse,
        keep_order=True,
    )
    if lengths is not None:  # nn.RNN would take the carry at index -1 for an empty sequence
      new = jax.tree.map(lambda a, b: jnp.where((lengths > 0)[:, None], a, b), new, carry)
    return new, out


POOLINGS = ("final", "max", "mean")


def pool_outputs(
    pooling: str, outputs: jax.Array, final: jax.Array, lengths: jax.Array
) -> jax.Array:
  """[B, D] summary of time-major `outputs` [T, B, D] (zero at padding): 'final' the final
  state, 'max' / 'mean' the maximum / mean over each sequence's real positions (zeros for an
  empty one)."""
  if pooling not in POOLINGS:
    raise ModelOptionError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
  if pooling == "final":
    return final
  if pooling == "mean":  # the outputs are already zero at padding
    return jnp.sum(outputs, axis=0) / jnp.maximum(lengths, 1)[:, None].astype(outputs.dtype)
  real = (jnp.arange(outputs.shape[0])[:, None] < lengths[None, :])[..., None]
  pooled = jnp.max(jnp.where(real, outputs, -jnp.inf), axis=0)
  return jnp.where(lengths[:, None] > 0, pooled, 0).astype(outputs.dtype)


class RNNClassifier(nn.Module):
  """Embedding -> Recurrent -> Dense on a summary of the sequence: by default the final state
  (both directions concatenated), or with `pooling='max'` / `'mean'` the maximum / mean of the
  top layer's outputs over the real positions (see pool_outputs).

  `__call__(inputs int [B, T], lengths int [B] | None, train) -> logits [B, num_classes]`. Token 0
  is padding; when `lengths` is None it is the count of non-zero tokens. Dropout (when
  `dropout_rate > 0` and `train`) applies to the embeddings, between layers, and to the final
  state. `impl` picks the layers' implementation, as in `Recurrent`.
  """

  vocab_size: int
  num_classes: int
  embed_dim: int = 128
  hidden_size: int = 128
  cell: str = "lstm"
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  impl: str = "fused"
  pooling: str = "final"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, inputs: jax.Array, lengths: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    if lengths is None:
      lengths = jnp.sum(inputs != 0, axis=-1)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0)
    x = nn.Embed(
        self.vocab_size,
        self.embed_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="embed",
    )(inputs.T)
    outputs, final = Recurrent(
        self.cell,
        self.hidden_size,
        self.num_layers,
        self.bidirectional,
        self.dropout_rate,
        self.impl,
        time_major=True,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="rnn",
    )(drop(x), lengths, train)
    summary = pool_outputs(self.pooling, outputs, final, lengths)
    logits = nn.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
    )(drop(summary))
    return logits.astype(logits_dtype(self.dtype))

  @nn.nowrap
  def flops_per_example(self, input_shape: Sequence[int], *unused: Sequence[int]) -> float:
    """Forward FLOPs of ONE sequence of shape (T,): the recurrent stack, and the head once on
    the final state. Embedding lookups count zero."""
    dirs = 2 if self.bidirectional else 1
    head = 2.0 * dirs * self.hidden_size * self.num_classes
    return (
        recurrent_flops(
            self.cell,
            self.embed_dim,
            self.hidden_size,
            input_shape[0],
            self.num_layers,
            self.bidirectional,
        )
        + head
    )


class RNNLanguageModel(nn.Module):
  """Next-token model: Embedding -> unidirectional Recurrent -> Dense over the vocabulary.

  `__call__(input_ids int [B, T], train) -> logits [B, T, vocab_size]`; with `initial_carry` and
  `return_carry=True` it continues from / returns the recurrent state (see `Recurrent`), which is
  how `sample` decodes one token at a time. Dropout applies to embeddings, between layers and to
  the recurrent outputs. `impl` picks the layers' implementation, as in `Recurrent`.
  """

  vocab_size: int
  embed_dim: int = 128
  hidden_size: int = 256
  cell: str = "lstm"
  num_layers: int = 1
  dropout_rate: float = 0.0
  impl: str = "fused"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      input_ids: jax.Array,
      train: bool = False,
      *,
      initial_carry: Any = None,
      return_carry: bool = False,
  ):
    drop = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0)
    x = nn.Embed(
        self.vocab_size,
        self.embed_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="embed",
    )(input_ids.T)
    out, _, carry = Recurrent(
        self.cell,
        self.hidden_size,
        self.num_layers,
        False,
        self.dropout_rate,
        self.impl,
        time_major=True,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="rnn",
    )(drop(x), None, train, initial_carry=initial_carry, return_carry=True)
    out = swap_time_batch(out)
    logits = nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(
        drop(out)
    )
    logits = logits.astype(logits_dtype(self.dtype))
    return (logits, carry) if return_carry else logits

  @nn.nowrap
  def flops_per_example(self, input_shape: Sequence[int], *unused: Sequence[int]) -> float:
    """Forward FLOPs of ONE sequence of shape (T,): the recurrent stack, and the head at every
    step. Embedding lookups count zero."""
    seq_len = input_shape[0]
    head = 2.0 * seq_len * self.hidden_size * self.vocab_size
    return (
        recurrent_flops(self.cell, self.embed_dim, self.hidden_size, seq_len, self.num_layers)
        + head
    )


def sample(
    model: RNNLanguageModel,
    variables: Any,
    prompt_ids: jax.Array,
    num_steps: int,
    rng: jax.Array,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> jax.Array:
  """Samples `num_steps` tokens after `prompt_ids` [B, P]; returns ids [B, P + num_steps].

  The prompt runs through once; then each new token is fed back alone, carrying the recurrent
  state, inside one `lax.scan` (compiled once per model, shapes, num_steps and top_k).
  `temperature <= 0` or `top_k=1` is greedy (argmax); `top_k` keeps the k most likely tokens.
  """
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  if num_steps <= 0:
    return prompt_ids
  return _sample(model, variables, prompt_ids, num_steps, rng, jnp.float32(temperature), top_k)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "top_k"))
def _sample(model, variables, prompt_ids, num_steps, rng, temperature, top_k):
  logits, carry = model.apply(variables, prompt_ids, return_carry=True)
  keys = jax.random.split(rng, num_steps)
  first = sample_logits(logits[:, -1], keys[0], temperature, top_k)

  def step(state, key):
    carry, token = state
    logits, carry = model.apply(variables, token[:, None], initial_carry=carry, return_carry=True)
    token = sample_logits(logits[:, -1], key, temperature, top_k)
    return (carry, token), token

  _, rest = lax.scan(step, (carry, first), keys[1:])
  return jnp.concatenate([prompt_ids, first[:, None], rest.T], axis=1)


def recurrent_flops(
    cell: str,
    input_size: int,
    hidden_size: int,
    seq_len: int,
    num_layers: int = 1,
    bidirectional: bool = False,
) -> float:
  """Forward FLOPs of a `Recurrent` stack on one sequence: 2 * MACs of its matmuls.

  Per layer, direction and step: input projection `F * G * H` plus recurrent `H * G * H` MACs,
  with G gates (RNN 1, GRU 3, LSTM 4) and F the layer's input width. Elementwise gate maths and
  biases are not counted; padded steps are (they are computed).
  """
  _check_cell(cell)
  dirs = 2 if bidirectional else 1
  gh = GATES[cell] * hidden_size
  total = 0.0
  for layer in range(num_layers):
    fan_in = input_size if layer == 0 else dirs * hidden_size
    total += dirs * seq_len * 2.0 * (fan_in * gh + hidden_size * gh)
  return total
