"""Attention building blocks: scaled dot-product attention, multi-head attention with a key/value
cache for autoregressive decoding, boolean masks and positional encodings.

Layouts follow `jax.nn.dot_product_attention`: queries, keys and values are [batch, length, heads,
head_dim]; masks are boolean, True where a query may attend to a key, broadcastable to
[batch, heads, q_length, kv_length].
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.models.common import ModelOptionError, constrain

Array = jax.Array
HEADS = ("batch", "length", "heads", "kv")
RESIDUAL = ("batch", "length", "embed")
_IMPLEMENTATIONS = (None, "native", "xla", "cudnn")


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    implementation: str | None = None,
) -> Array:
  """softmax(Q K^T / sqrt(d_k)) V for q [B,Tq,H,D], k and v [B,Tk,H,D]; returns [B,Tq,H,D].

  Scores and softmax are in float32 for float32 and narrower inputs (float64 for float64). A query
  row whose keys are all masked out gives zeros (not NaN, not a uniform average). Dropout on the
  attention weights is applied when `dropout_rng` is given and `dropout_rate > 0`.

  `implementation`: None picks `jax.nn.dot_product_attention` on GPU/TPU (no attention dropout)
  and the batched-matmul path written here otherwise (the faster one on CPU); 'native' forces
  that path; 'xla' or 'cudnn' force `jax.nn.dot_product_attention` with that backend.
  """
  if implementation not in _IMPLEMENTATIONS:
    raise ModelOptionError(
        f"implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}"
    )
  dropout = dropout_rng is not None and dropout_rate > 0.0
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  if implementation in ("xla", "cudnn"):
    if dropout:
      raise ValueError(
          f"implementation={implementation!r} has no attention dropout; "
          "use implementation='native' or None"
      )
    return _jax_nn_attention(q, k, v, mask, implementation)
  if implementation is None and not dropout and jax.default_backend() in ("gpu", "cuda", "tpu"):
    return _jax_nn_attention(q, k, v, mask, None)
  return _native_attention(q, k, v, mask, dropout_rng if dropout else None, dropout_rate)


def attention_weights(q: Array, k: Array, mask: Array | None = None) -> Array:
  """Attention weights [B,H,Tq,Tk] (float32, or float64 for float64 inputs); rows with every key
  masked are all zero."""
  weights = _softmax_weights(_heads_first(q), _heads_first(k), mask)
  return weights if mask is None else weights * _any_key(mask)[..., None]


def _heads_first(x: Array) -> Array:
  return jnp.swapaxes(x, 1, 2)  # [B,T,H,D] -> [B,H,T,D]


def _any_key(mask: Array) -> Array:
  """[b,h,q] (broadcastable): whether each query row may attend to at least one key."""
  return jnp.any(mask, axis=-1)


def _softmax_weights(q: Array, k: Array, mask: Array | None) -> Array:
  """softmax(q k^T / sqrt(d)) in float32 (float64 for float64 inputs) for heads-first
  q [B,H,Tq,D], k [B,H,Tk,D].

  Masked logits are set to the most negative float, so a partly masked row puts exactly zero
  weight on them; a fully masked row comes out uniform and is zeroed by the caller.
  """
  q = q * jnp.asarray(1.0 / np.sqrt(q.shape[-1]), q.dtype)
  logits = jax.lax.dot_general(
      q,
      k,
      (((3,), (3,)), ((0, 1), (0, 1))),
      preferred_element_type=jnp.promote_types(q.dtype, jnp.float32),
  )
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  return jax.nn.softmax(logits, axis=-1)


def _native_attention(
    q: Array, k: Array, v: Array, mask: Array | None, dropout_rng: Array | None, dropout_rate: float
) -> Array:
  # Heads-first layout makes both products plain batched matmuls (weights @ v with the big
  # [Tq,Tk] operand on the left), which XLA's CPU backend runs markedly faster than the
  # transposed forms an einsum on [B,T,H,D] can pick.
  weights = _softmax_weights(_heads_first(q), _heads_first(k), mask)
  if dropout_rng is not None:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  out = jax.lax.dot_general(
      weights.astype(v.dtype), _heads_first(v), (((3,), (2,)), ((0, 1), (0, 1)))
  )
  if mask is not None:
    out = out * _any_key(mask)[..., None].astype(out.dtype)
  return _heads_first(out)


def _jax_nn_attention(
    q: Array, k: Array, v: Array, mask: Array | None, implementation: str | None
) -> Array:
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  if mask is None:
    return out
  return out * _heads_first(_any_key(mask)[..., None]).astype(out.dtype)


# ---------- masks


def padding_mask(query_valid: Array, key_valid: Array) -> Array:
  """[B,1,Tq,Tk] mask: True where both the query and the key are real (non-padding) tokens."""
  q = jnp.asarray(query_valid, bool)
  k = jnp.asarray(key_valid, bool)
  return q[:, None, :, None] & k[:, None, None, :]


def key_padding_mask(key_valid: Array) -> Array:
  """[B,1,1,Tk] mask that only hides padding keys (cheaper than `padding_mask` when padded
  query rows are discarded anyway)."""
  return jnp.asarray(key_valid, bool)[:, None, None, :]


def causal_mask(length: int) -> Array:
  """[1,1,T,T] mask: query i may attend to keys j <= i."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


def combine_masks(*masks: Array | None) -> Array | None:
  """Logical AND of the masks that are not None (they broadcast); None if all are None."""
  present = [jnp.asarray(m, bool) for m in masks if m is not None]
  if not present:
    return None
  out = present[0]
  for m in present[1:]:
    out = out & m
  return out


# ---------- multi-head attention


class MultiHeadAttention(nn.Module):
  """Multi-head attention: Q/K/V projections to [heads, head_dim], scaled dot-product attention,
  heads concatenated and projected to `model_dim` by an output Dense.

  `fused_qkv=True` computes Q, K and V of self-attention with one matmul (parameter 'qkv',
  kernel [in, 3, heads, head_dim]); otherwise 'query', 'key' and 'value' are separate.

  With `decode=True` (self-attention only) the keys and values of every call are written into the
  'cache' collection (cached_key, cached_value [B, L, H, D], cache_index) and queries attend to
  all cached positions up to their own: call once with the full-length input to create the cache
  (as `init` does), then feed one or more new tokens per call with `mutable=['cache']`. A `mask`
  given in decode mode must broadcast to [B, H, Tq, L] and is combined with that causal mask.

  With the 'intermediates' collection mutable, the attention weights [B, H, Tq, Tk] (before
  dropout) are sown there as 'attention_weights'.
  """

  num_heads: int
  model_dim: int
  head_dim: int | None = None
  dropout_rate: float = 0.0
  use_bias: bool = True
  decode: bool = False
  fused_qkv: bool = False
  implementation: str | None = None
  kernel_init: Callable[..., Array] = nn.initializers.xavier_uniform()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      inputs_q: Array,
      inputs_kv: Array | None = None,
      mask: Array | None = None,
      train: bool = False,
  ) -> Array:
    head_dim = self.head_dim or self.model_dim // self.num_heads
    q, k, v = (constrain(t, HEADS) for t in self._project(inputs_q, inputs_kv, head_dim))
    if self.decode:
      if inputs_kv is not None:
        raise ValueError("decode=True caches self-attention only; give inputs_kv=None")
      k, v, mask = self._update_cache(k, v, mask)
    if self.is_mutable_collection("intermediates"):
      # Only when a caller asks (apply(..., mutable=["intermediates"]), as jaxmodels.explain
      # does): the default outputs and numerics are untouched and nothing extra is computed.
      self.sow("intermediates", "attention_weights", attention_weights(q, k, mask))
    rng = self.make_rng("dropout") if train and self.dropout_rate > 0.0 else None
    out = dot_product_attention(q, k, v, mask, rng, self.dropout_rate, self.implementation)
    out = constrain(out, HEADS)
    out = out.reshape(out.shape[:-2] + (self.num_heads * head_dim,))
    # The kernel's rows are the flattened (heads, kv) features, heads major: sharding them like
    # "heads" keeps each device's rows on its own heads.
    out = nn.Dense(
        self.model_dim,
        use_bias=self.use_bias,
        kernel_init=nn.with_logical_partitioning(self.kernel_init, ("heads", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="out",
    )(out)
    return constrain(out, RESIDUAL)

  def _dense(
      self, features: tuple[int, ...], name: str, names: tuple[str | None, ...]
  ) -> "Projection":
    return Projection(
        features,
        names,
        use_bias=self.use_bias,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
    )

  def _project(
      self, inputs_q: Array, inputs_kv: Array | None, head_dim: int
  ) -> tuple[Array, Array, Array]:
    shape = (self.num_heads, head_dim)
    if self.fused_qkv:
      if inputs_kv is not None:
        raise ValueError("fused_qkv=True is for self-attention: give inputs_kv=None")
      qkv = self._dense((3,) + shape, "qkv", ("embed", None, "heads", "kv"))(inputs_q)
      return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    names = ("embed", "heads", "kv")
    return (
        self._dense(shape, "query", names)(inputs_q),
        self._dense(shape, "key", names)(inputs_kv),
        self._dense(shape, "value", names)(inputs_kv),
    )

  def _update_cache(
      self, k: Array, v: Array, mask: Array | None
  ) -> tuple[Array, Array, Array | None]:
    ready = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not ready:  # creating the cache: plain causal attention over the given tokens
      return k, v, combine_masks(mask, causal_mask(k.shape[1]))
    length, steps = cached_k.value.shape[1], k.shape[1]
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice_in_dim(cached_k.value, k, i, axis=1)
    cached_v.value = jax.lax.dynamic_update_slice_in_dim(cached_v.value, v, i, axis=1)
    index.value = i + steps
    visible = jnp.arange(length)[None, :] <= i + jnp.arange(steps)[:, None]
    return cached_k.value, cached_v.value, combine_masks(mask, visible[None, None])


class Projection(nn.Module):
  """nn.DenseGeneral from the last input axis to `features` (same parameters, same initial
  values) with logical axis `names` on the kernel [in, *features] and names[1:] on the bias.

  flax's DenseGeneral reshapes a boxed kernel from its flattened init and applies the box's
  sharding constraint to the flat array, which fails once axis rules and a mesh are in context;
  here the initialiser sees the flat shape and the box holds the real one.
  """

  features: tuple[int, ...]
  names: tuple[str | None, ...]
  use_bias: bool = True
  kernel_init: Callable[..., Array] = nn.initializers.xavier_uniform()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    shape = (x.shape[-1],) + tuple(self.features)

    def flat_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
      return self.kernel_init(key, (shape[0], int(np.prod(shape[1:]))), dtype).reshape(shape)

    kernel = self.param(
        "kernel", nn.with_logical_partitioning(flat_init, self.names), shape, self.param_dtype
    )
    bias = None
    if self.use_bias:
      zeros = nn.with_logical_partitioning(nn.initializers.zeros_init(), self.names[1:])
      bias = self.param("bias", zeros, shape[1:], self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    out = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return out if bias is None else out + bias


# ---------- positional encodings


def sinusoidal_encoding(length: int, dim: int) -> Array:
  """[length, dim] table of "Attention is all you need": PE[p, 2i] = sin(p / 10000^(2i/dim)),
  PE[p, 2i+1] = cos(p / 10000^(2i/dim))."""
  return sinusoidal_at(jnp.arange(length), dim)


def sinusoidal_at(positions: Array, dim: int) -> Array:
  """Sinusoidal encodings of integer positions of any shape: [..., dim] float32."""
  pairs = (dim + 1) // 2
  inv_freq = 1.0 / (10000.0 ** (2.0 * jnp.arange(pairs, dtype=jnp.float32) / dim))
  angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
  table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # interleave sin, cos
  return table.reshape(table.shape[:-2] + (2 * pairs,))[..., :dim]


def _positions(length: int, positions: Array | None, offset: Array | int) -> Array:
  if positions is not None:
    return jnp.asarray(positions)
  return offset + jnp.arange(length)


class SinusoidalPositionalEncoding(nn.Module):
  """Adds fixed sinusoidal encodings to inputs [B,T,C].

  Positions are `offset + arange(T)` (offset: an int or a traced scalar, for decoding) unless
  `positions` ([T] or [B,T] integers) is given. No parameters.
  """

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      inputs: Array,
      positions: Array | None = None,
      offset: Array | int = 0,
      train: bool = False,
  ) -> Array:
    del train
    pos = _positions(inputs.shape[-2], positions, offset)
    return (inputs + sinusoidal_at(pos, inputs.shape[-1])).astype(self.dtype)


class LearnedPositionalEmbedding(nn.Module):
  """Adds a learned [max_len, dim] position embedding to inputs [B,T,dim].

  Positions are `offset + arange(T)` unless `positions` ([T] or [B,T] integers) is given; they
  must be < max_len (a traced offset is clamped by dynamic_slice, so keep it in range).
  """

  max_len: int
  dim: int
  embedding_init: Callable[..., Array] = nn.initializers.normal(stddev=0.02)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      inputs: Array,
      positions: Array | None = None,
      offset: Array | int = 0,
      train: bool = False,
  ) -> Array:
    del train
    length = inputs.shape[-2]
    if inputs.shape[-1] != self.dim:
      raise ValueError(f"inputs have {inputs.shape[-1]} features, embedding dim is {self.dim}")
    init = nn.with_logical_partitioning(self.embedding_init, ("pos", "embed"))
    table = self.param("embedding", init, (self.max_len, self.dim), self.param_dtype)
    if positions is not None:
      emb = jnp.take(table, jnp.asarray(positions), axis=0)
    elif isinstance(offset, int):
      if offset + length > self.max_len:
        raise ValueError(f"positions up to {offset + length - 1} exceed max_len={self.max_len}")
      emb = table[offset : offset + length]
    else:
      emb = jax.lax.dynamic_slice_in_dim(table, offset, length, axis=0)
    return inputs.astype(self.dtype) + emb.astype(self.dtype)
