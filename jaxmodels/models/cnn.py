"""Small convolutional classifier: [conv -> (BN) -> ReLU]*k -> 2x2 max-pool blocks, dense head.

Also `conv_general_dilated`, the convolution every conv net here runs (through nn.Conv), by XLA or
by oneDNN (`impl`, jaxmodels.kernels.conv).
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxmodels.kernels import conv as conv_kernels
from jaxmodels.models.common import dense_flops, logits_dtype
from jaxmodels.models.mlp import get_activation


class CNN(nn.Module):
  """A cheap image classifier, sized for 28x28 greyscale data such as Fashion-MNIST.

  Each entry of `features` is one block: `convs_per_block` SAME-padded `kernel_size` convolutions
  with that many channels, each followed by BatchNorm (if `use_batchnorm`) and the activation
  (ReLU; `activation` names another, such as 'tanh', which DP-SGD trains better with), then a
  2x2 max-pool of stride 2. The head flattens, applies Dense(`dense_features`), the activation
  and dropout (skipped when `dense_features` is 0) and a final Dense to `num_classes` float32
  logits.
  `axis_name` is given to BatchNorm so that statistics are averaged across pmap devices;
  `freeze_batch_stats` normalises with the running averages in training too, never updating them.
  `fast_conv_grad` convolves with `conv_general_dilated` below (its faster gradient on CPU) and
  `conv_impl` chooses who computes it there: 'xla', 'onednn' or 'auto'; False calls
  lax.conv_general_dilated itself, which int8 quantization (qwix) intercepts.
  """

  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  convs_per_block: int = 1
  dense_features: int = 128
  num_classes: int = 10
  dropout_rate: float = 0.0
  use_batchnorm: bool = False
  activation: str = "relu"
  bn_momentum: float = 0.9
  axis_name: str | None = None
  freeze_batch_stats: bool = False
  fast_conv_grad: bool = True
  conv_impl: str = "xla"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.astype(self.dtype)
    act = get_activation(self.activation)
    k = (self.kernel_size, self.kernel_size)
    for features in self.features:
      for _ in range(self.convs_per_block):
        x = nn.Conv(
            features,
            k,
            padding="SAME",
            use_bias=not self.use_batchnorm,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            conv_general_dilated=(
                functools.partial(conv_general_dilated, impl=self.conv_impl)
                if self.fast_conv_grad
                else None
            ),
        )(x)
        if self.use_batchnorm:
          x = nn.BatchNorm(
              use_running_average=not train or self.freeze_batch_stats,
              momentum=self.bn_momentum,
              axis_name=self.axis_name,
              dtype=self.dtype,
              param_dtype=self.param_dtype,
          )(x)
        x = act(x)
      x = max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    if self.dense_features:
      x = nn.Dense(self.dense_features, dtype=self.dtype, param_dtype=self.param_dtype)(x)
      x = act(x)
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return x.astype(logits_dtype(self.dtype))

  @nn.nowrap
  def flops_per_example(self, input_shape: Sequence[int], *unused: Sequence[int]) -> float:
    """Forward FLOPs of ONE example of shape (H, W, C) (no batch axis): 2 * MACs of every
    convolution and Dense layer; BatchNorm, ReLU and pooling are not counted."""
    h, w, c = input_shape
    total = 0.0
    for features in self.features:
      for _ in range(self.convs_per_block):
        total += conv_flops((h, w), self.kernel_size, c, features)
        c = features
      h, w = conv_output_size(h, 2, 2, "VALID"), conv_output_size(w, 2, 2, "VALID")
    flat = h * w * c
    if self.dense_features:
      total += dense_flops(flat, self.dense_features)
      flat = self.dense_features
    return total + dense_flops(flat, self.num_classes)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    impl: str = "xla",
    **kwargs,
) -> jax.Array:
  """`lax.conv_general_dilated`, same arguments and values, with a gradient that runs faster on CPU.

  `impl` ('xla', 'onednn', 'auto'; jaxmodels.kernels.conv) may hand a float32 NHWC convolution to
  oneDNN's kernels on CPU; other platforms always take the XLA path below.

  XLA:CPU computes a kernel gradient from the input transposed to a batch-last layout, and it
  fuses that transpose with the elementwise ops that produced the input (a BatchNorm and ReLU,
  a residual sum), recomputing them in a strided loop (18x slower than the plain transpose in
  isolation; the largest items of ResNet-18's train step in a jax.profiler trace, Nov 2026).
  Here the kernel gradient reads the input through a matmul with a block identity, which XLA
  does not fuse into, so the transpose copies one stored array: ResNet-18 (batch 128) trained
  12-22% faster on one device and 11-14% faster over 2 (alternating rounds in one process).
  Other platforms get the plain gradient. The identity matmul is exact for finite inputs.
  """
  conv = functools.partial(
      lax.conv_general_dilated,
      window_strides=window_strides,
      padding=padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      **kwargs,
  )
  feature_axis = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers).lhs_spec[1]
  xla = functools.partial(_xla_conv, conv, feature_axis)
  reason = conv_kernels.unsupported(
      lhs, rhs, lhs_dilation, dimension_numbers, feature_group_count, kwargs
  )
  if conv_kernels.choose(impl, reason):
    dilation = rhs_dilation or (1, 1)
    pads = conv_kernels.explicit_padding(lhs.shape, rhs.shape, window_strides, padding, dilation)
    onednn = functools.partial(
        conv_kernels.conv2d, strides=window_strides, padding=pads, dilation=dilation
    )
    return lax.platform_dependent(lhs, rhs, cpu=onednn, default=xla)
  return xla(lhs, rhs)


def _xla_conv(
    conv: Callable[..., jax.Array], feature_axis: int, lhs: jax.Array, rhs: jax.Array
) -> jax.Array:
  """`conv(lhs, rhs)` with the CPU kernel gradient that `conv_general_dilated` describes."""

  @jax.custom_vjp
  def convolve(x, w):
    return conv(x, w)

  def forward(x, w):
    return conv(x, w), (x, w)

  def backward(residuals, g):
    x, w = residuals
    dx = jax.vjp(lambda x: conv(x, w), x)[1](g)[0]
    stored = lax.platform_dependent(
        x, cpu=functools.partial(_stored, axis=feature_axis), default=lambda x: x
    )
    dw = jax.vjp(lambda w: conv(stored, w), w)[1](g)[0]
    return dx, dw

  convolve.defvjp(forward, backward)
  return convolve(lhs, rhs)


def _stored(x: jax.Array, axis: int, block: int = 8) -> jax.Array:
  """`x`, as the output of a matmul with an identity over blocks of `block` features."""
  size = x.shape[axis]
  if size % block:
    block = size
  x = jnp.moveaxis(x, axis, -1)
  blocks = x.reshape(x.shape[:-1] + (size // block, block))
  x = (blocks @ jnp.eye(block, dtype=x.dtype)).reshape(x.shape)
  return jnp.moveaxis(x, -1, axis)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool of stride 2, VALID padding, as a reshape and a max.

  Equal to nn.max_pool(x, (2, 2), (2, 2)); on CPU its gradient runs 2-3x faster than the
  select-and-scatter that XLA emits for reduce_window (measured here, batch 128, 28x28).
  """
  b, h, w, c = x.shape
  x = x[:, : h - h % 2, : w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def conv_output_size(size: int, kernel: int, stride: int, padding: str | tuple[int, int]) -> int:
  """Output length of one spatial axis of a convolution or pooling window.

  `padding` is 'SAME' (output ceil(size / stride)), 'VALID' or explicit (low, high) padding.
  """
  if padding == "SAME":
    return -(-size // stride)
  low, high = (0, 0) if padding == "VALID" else padding
  return (size + low + high - kernel) // stride + 1


def conv_flops(out_hw: tuple[int, int], kernel: int, in_features: int, out_features: int) -> float:
  """FLOPs of a square-kernel 2D convolution for one example: 2 * MACs (bias not counted)."""
  return 2.0 * out_hw[0] * out_hw[1] * kernel * kernel * in_features * out_features
