"""Multi-layer perceptron classifier: flatten, then Dense layers."""

from collections.abc import Callable, Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.models.common import ModelOptionError, dense_flops, logits_dtype

Activation = str | Callable[[jax.Array], jax.Array]


def get_activation(activation: Activation) -> Callable[[jax.Array], jax.Array]:
  """Resolves an activation given by name ('relu', 'gelu', 'tanh', ...) or as a callable."""
  if callable(activation):
    return activation
  fn = getattr(nn, activation, None)
  if not callable(fn):
    raise ModelOptionError(
        f"unknown activation {activation!r}: give a flax.linen function name "
        "such as 'relu', 'gelu', 'tanh', 'silu', or a callable"
    )
  return fn


class MLP(nn.Module):
  """Flattens each example (any trailing shape) and applies Dense + activation layers.

  Hidden layer i has `hidden_sizes[i]` units, followed by the activation and, when
  `dropout_rate > 0` and `train=True`, dropout drawn from the 'dropout' rng. The last Dense layer
  maps to `num_classes` logits, returned as float32 for any compute dtype up to float32
  (float64 under float64 compute, for gradient checks).
  """

  hidden_sizes: Sequence[int] = (128, 64)
  num_classes: int = 10
  activation: Activation = "relu"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = get_activation(self.activation)
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for size in self.hidden_sizes:
      x = nn.Dense(size, dtype=self.dtype, param_dtype=self.param_dtype)(x)
      x = act(x)
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return x.astype(logits_dtype(self.dtype))

  @nn.nowrap
  def flops_per_example(self, input_shape: Sequence[int], *unused: Sequence[int]) -> float:
    """Forward FLOPs of ONE example of shape `input_shape` (no batch axis): 2 * MACs of every
    Dense layer; activations, biases and dropout are not counted."""
    sizes = [math.prod(input_shape), *self.hidden_sizes, self.num_classes]
    return sum(dense_flops(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
