"""ResNets with BatchNorm (torchvision layout, v1.5: the stride sits on the 3x3 convolution).

With `num_classes=1000` the parameter counts equal torchvision's resnet18/34/50, layer for layer
(`jaxmodels.models.convert` maps their weights). BatchNorm statistics are averaged over the pmap
axis named by `ResNet.axis_name`.
"""

from collections.abc import Callable, Sequence
import functools
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.models.cnn import conv_flops, conv_general_dilated, conv_output_size
from jaxmodels.models.common import ModelOptionError, dense_flops, logits_dtype

ModuleDef = Callable[..., nn.Module]
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding kernel // 2 on both spatial axes, as torchvision's convolutions use."""
  return ((kernel // 2, kernel // 2),) * 2


def _shortcut(
    x: jax.Array, out_features: int, strides: int, conv: ModuleDef, norm: ModuleDef
) -> jax.Array:
  """Identity, or a 1x1 strided conv + BN projection when channels or resolution change."""
  if strides == 1 and x.shape[-1] == out_features:
    return x
  x = conv(out_features, (1, 1), strides=strides, padding=_pad(1), name="proj_conv")(x)
  return norm(name="proj_bn")(x)


def _flops_hw(hw: tuple[int, int], kernel: int, strides: int) -> tuple[int, int]:
  """Spatial output size of a convolution padded by kernel // 2 on each side."""
  pad = (kernel // 2, kernel // 2)
  return tuple(conv_output_size(s, kernel, strides, pad) for s in hw)


RUNNING_VARIANCES = ("biased", "unbiased")


class BatchNorm(nn.BatchNorm):
  """flax's BatchNorm with a choice of the batch variance its running average tracks.

  Both choices normalise a training batch with its biased variance (the mean of squared
  deviations over its n values per channel). `running_variance='biased'` (flax's convention)
  averages that into 'var'; 'unbiased' (torch's) averages n / (n - 1) times it, where n counts the
  values over `axis_name` too. The class keeps flax's name, so parameter paths are the same.
  """

  running_variance: str = "biased"

  @nn.compact
  def __call__(
      self, x: jax.Array, use_running_average: bool | None = None, *, mask: jax.Array | None = None
  ) -> jax.Array:
    if self.running_variance not in RUNNING_VARIANCES:
      raise ModelOptionError(
          f"unknown running_variance {self.running_variance!r}: use 'biased' or 'unbiased'"
      )
    running = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    correct = self.running_variance == "unbiased" and not running
    if not correct or self.is_initializing():
      return super().__call__(x, use_running_average, mask=mask)
    if mask is not None:
      raise ValueError("running_variance='unbiased' does not support a mask")
    old = self.get_variable("batch_stats", "var")
    var, n = self._batch_variance(x)
    y = super().__call__(x, use_running_average, mask=mask)
    unbiased = var * (n / max(n - 1, 1))
    self.put_variable("batch_stats", "var", self.momentum * old + (1 - self.momentum) * unbiased)
    return y

  def _batch_variance(self, x: jax.Array) -> tuple[jax.Array, int]:
    """Biased variance per feature as flax computes it, and the number of values behind it."""
    if not isinstance(self.axis, int):
      raise ValueError("running_variance='unbiased' supports one feature axis")
    axes = tuple(i for i in range(x.ndim) if i != self.axis % x.ndim)
    x = x.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
    mean, mean_sq = x.mean(axes), jnp.square(x).mean(axes)
    n = math.prod(x.shape[a] for a in axes)
    if self.axis_name is not None:
      mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
      n *= jax.lax.axis_size(self.axis_name)
    return jnp.maximum(0.0, mean_sq - jnp.square(mean)), n


def _last_scale_init(zero: bool) -> Callable[..., jax.Array]:
  """Scale init of a block's last BN: zeros makes each block start as the identity."""
  return nn.initializers.zeros if zero else nn.initializers.ones


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with BN; output has `features` channels (ResNet-18/34)."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_last: bool = False
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = _shortcut(x, self.features, self.strides, self.conv, self.norm)
    y = self.conv(self.features, (3, 3), strides=self.strides, padding=_pad(3))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features, (3, 3), padding=_pad(3))(y)
    y = self.norm(scale_init=_last_scale_init(self.zero_init_last))(y)
    return nn.relu(y + residual)

  @staticmethod
  def flops(
      in_features: int, features: int, strides: int, hw: tuple[int, int]
  ) -> tuple[float, tuple[int, int]]:
    """FLOPs of one block on one example and its output spatial size."""
    out = _flops_hw(hw, 3, strides)
    total = conv_flops(out, 3, in_features, features) + conv_flops(out, 3, features, features)
    if strides != 1 or in_features != features:
      total += conv_flops(out, 1, in_features, features)
    return total, out


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand to 4 * `features` channels, with BN (ResNet-50)."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_last: bool = False
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_features = self.features * self.expansion
    residual = _shortcut(x, out_features, self.strides, self.conv, self.norm)
    y = self.conv(self.features, (1, 1), padding=_pad(1))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features, (3, 3), strides=self.strides, padding=_pad(3))(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(out_features, (1, 1), padding=_pad(1))(y)
    y = self.norm(scale_init=_last_scale_init(self.zero_init_last))(y)
    return nn.relu(y + residual)

  @staticmethod
  def flops(
      in_features: int, features: int, strides: int, hw: tuple[int, int]
  ) -> tuple[float, tuple[int, int]]:
    """FLOPs of one block on one example and its output spatial size."""
    out_features = features * BottleneckBlock.expansion
    out = _flops_hw(hw, 3, strides)
    total = (
        conv_flops(hw, 1, in_features, features)
        + conv_flops(out, 3, features, features)
        + conv_flops(out, 1, features, out_features)
    )
    if strides != 1 or in_features != out_features:
      total += conv_flops(out, 1, in_features, out_features)
    return total, out


class ResNet(nn.Module):
  """ResNet classifier returning float32 logits [B, num_classes].

  `stage_sizes[i]` blocks of `block_cls` with `num_filters * 2**i` base channels; every stage
  after the first halves the resolution in its first block. `stem='imagenet'` is a 7x7/2 conv,
  BN, ReLU and 3x3/2 max-pool; `stem='cifar'` is a 3x3/1 conv, BN and ReLU for small images.
  `train=True` normalises with batch statistics (averaged over `axis_name` when set, e.g. under
  `jax.pmap(axis_name='batch')`) and updates 'batch_stats'; `train=False` uses the running
  averages. `bn_momentum=0.9` and `bn_epsilon=1e-5` match torchvision's momentum of 0.1 and eps;
  `bn_running_variance='unbiased'` tracks the unbiased batch variance as torch does, 'biased'
  (the default) flax's biased one (`BatchNorm`). `freeze_batch_stats=True` normalises with the
  running averages in training too and never updates them (torch's `model.eval()` applied to
  the BatchNorm layers), for fine-tuning. `conv_impl` chooses who computes the convolutions on
  CPU: 'xla', 'onednn' or 'auto' (`jaxmodels.models.cnn.conv_general_dilated`).
  """

  stage_sizes: Sequence[int]
  block_cls: type[nn.Module]
  num_classes: int = 10
  num_filters: int = 64
  stem: str = "imagenet"
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_running_variance: str = "biased"
  axis_name: str | None = None
  freeze_batch_stats: bool = False
  conv_impl: str = "xla"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(
        nn.Conv,
        use_bias=False,
        kernel_init=conv_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        conv_general_dilated=functools.partial(conv_general_dilated, impl=self.conv_impl),
    )
    norm = functools.partial(
        BatchNorm,
        use_running_average=not train or self.freeze_batch_stats,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        running_variance=self.bn_running_variance,
        axis_name=self.axis_name,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    x = self._stem(x.astype(self.dtype), conv, norm)
    for i, size in enumerate(self.stage_sizes):
      for j in range(size):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(
            self.num_filters * 2**i,
            conv=conv,
            norm=norm,
            strides=strides,
            zero_init_last=self.zero_init_residual,
        )(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return x.astype(logits_dtype(self.dtype))

  def _stem(self, x: jax.Array, conv: ModuleDef, norm: ModuleDef) -> jax.Array:
    if self.stem == "imagenet":
      x = conv(self.num_filters, (7, 7), strides=2, padding=_pad(7), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
    if self.stem == "cifar":
      x = conv(self.num_filters, (3, 3), padding=_pad(3), name="stem_conv")(x)
      return nn.relu(norm(name="stem_bn")(x))
    raise ModelOptionError(f"unknown stem {self.stem!r}: use 'imagenet' or 'cifar'")

  @nn.nowrap
  def flops_per_example(self, input_shape: Sequence[int], *unused: Sequence[int]) -> float:
    """Forward FLOPs of ONE example of shape (H, W, C) (no batch axis).

    Counts 2 * MACs of every convolution (projection shortcuts included) and the final Dense
    layer, with output sizes from the real padding; BN, ReLU, pooling and additions are not
    counted.
    """
    h, w, c = input_shape
    if self.stem == "imagenet":
      hw = _flops_hw((h, w), 7, 2)
      total = conv_flops(hw, 7, c, self.num_filters)
      hw = _flops_hw(hw, 3, 2)
    else:
      hw = _flops_hw((h, w), 3, 1)
      total = conv_flops(hw, 3, c, self.num_filters)
    c = self.num_filters
    for i, size in enumerate(self.stage_sizes):
      features = self.num_filters * 2**i
      for j in range(size):
        block_flops, hw = self.block_cls.flops(c, features, 2 if i > 0 and j == 0 else 1, hw)
        total += block_flops
        c = features * self.block_cls.expansion
    return total + dense_flops(c, self.num_classes)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
