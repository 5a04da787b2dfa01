"""What the model families share: the logits dtype, dropout, token sampling for generation,
logical-axis sharding constraints, and the protocol of a model that counts its own FLOPs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp


class ModelOptionError(ValueError):
  """A model field set to a value the model does not have (an unknown cell, stem, activation...);
  the message names the field and the valid values."""


def logits_dtype(dtype: Any) -> Any:
  """float32 for float32 and narrower compute dtypes, float64 when computing in float64."""
  return jnp.promote_types(dtype, jnp.float32)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """Asks for activation `x` to be laid out by the logical axis `names` (one per dimension).

  A no-op unless logical axis rules (`nn.logical_axis_rules`) and a mesh are in context, so the
  models run unchanged on one device, under pmap and under a mesh without rules.
  """
  return nn.with_logical_constraint(x, names)


def keep_mask(rng: jax.Array, keep_prob: float, shape: Sequence[int]) -> jax.Array:
  """Boolean [shape], True with probability keep_prob rounded to a multiple of 2**-16.

  Each element reads 16 random bits, two from each 32-bit word, where jax.random.bernoulli draws
  a word per element: threefry is most of dropout's cost on a CPU (a 3+3-layer Transformer step
  took 1.8x as long with dropout as without), and this halves it.
  """
  threshold = round(keep_prob * 2**16)
  if threshold >= 2**16:
    return jnp.ones(shape, bool)
  if not shape:
    return keep_mask(rng, keep_prob, (1,))[0]
  *lead, last = shape
  words = jax.random.bits(rng, (*lead, (last + 1) // 2), jnp.uint32)
  halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(*lead, -1)[..., :last]
  return halves < jnp.uint16(threshold)


class Dropout(nn.Module):
  """Inverted dropout, as flax's nn.Dropout (rate, deterministic at construction or call, the
  'dropout' rng stream), drawing its mask with `keep_mask`. The kept values are divided by the
  mask's own keep probability, so the expectation is exactly the input's."""

  rate: float
  deterministic: bool | None = None
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    return dropout(x, self.rate, self.make_rng(self.rng_collection))


def dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """x with each element zeroed with probability `rate` (to 2**-16) and the rest scaled up."""
  keep = round((1.0 - rate) * 2**16) / 2**16
  if keep >= 1.0:
    return x
  if keep == 0.0:
    return jnp.zeros_like(x)
  return jnp.where(keep_mask(rng, keep, x.shape), x / jnp.asarray(keep, x.dtype), 0).astype(x.dtype)


def sample_logits(
    logits: jax.Array,
    rng: jax.Array,
    temperature: jax.Array | float = 1.0,
    top_k: jax.Array | int | None = None,
) -> jax.Array:
  """Samples ids [B] from logits [B,V] at a temperature, optionally among the top_k only (ties
  with the k-th logit stay in); temperature 0 (or top_k=1) is argmax. top_k may be traced."""
  logits = logits.astype(jnp.float32)
  if top_k is not None:
    vocab = logits.shape[-1]
    k = jnp.clip(jnp.asarray(top_k, jnp.int32), 1, vocab)
    kth = jax.lax.dynamic_index_in_dim(jnp.sort(logits, axis=-1), vocab - k, axis=-1)
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  greedy = jnp.argmax(logits, axis=-1)
  sampled = jax.random.categorical(rng, logits / jnp.maximum(temperature, 1e-6), axis=-1)
  return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


@runtime_checkable
class HasFlops(Protocol):
  """A model with an analytic forward FLOP count, which MFU uses instead of XLA's cost analysis
  (that counts a scan body once and skips convolution padding)."""

  def flops_per_example(self, *input_shapes: Sequence[int]) -> float:
    """Forward FLOPs (2 * multiply-accumulates) of ONE example, given the shape of each input the
    model is called with, without the batch axis."""
    ...


def dense_flops(in_features: int, out_features: int) -> float:
  """FLOPs of one Dense layer on one example: 2 * MACs (bias not counted)."""
  return 2.0 * in_features * out_features
