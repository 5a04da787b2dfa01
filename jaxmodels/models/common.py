"""What the model families share: the logits dtype, token sampling for generation, logical-axis
sharding constraints, and the protocol of a model that counts its own FLOPs."""

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
