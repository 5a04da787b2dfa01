"""DP-SGD's clipped gradient sum without a per-example backward pass ("book-keeping" ghost
clipping, Bu et al. 2022), for models whose every parameter is a Dense or 2-D Conv kernel or bias.

One forward and one backward pass over the batch record, for each such layer, its input `a` and
the gradient `g` of the summed per-example losses with respect to its output (flax's
`intercept_methods` captures the inputs; `perturb` adds a zero to each output, whose gradient is
`g`). Example i's gradient of a layer is then a function of (a_i, g_i) alone:

  Dense, a_i [d_in], g_i [d_out]:   kernel a_i g_i^T, norm |a_i| |g_i|; bias g_i
  Dense over positions [T, d]:      kernel sum_t a_it g_it^T (its norm from the T x T Gram
                                    matrices when that is cheaper than forming it); bias sum_t g_it
  Conv, patches p_i [P, k*k*c_in]:  kernel p_i^T g_i, formed per example (small: k*k*c_in*c_out);
                                    bias sum over positions of g_i

From these the per-example norms give the clip factors s_i = min(1, C / norm_i), and the clipped
sum is the same contraction over the batch with g_i scaled by s_i: no per-example gradient of a
Dense kernel is ever formed. `clipped_sum` returns None for a model with any other parameter
(embeddings, LayerNorm, a layer called twice); the engine then uses jax.vmap of jax.grad.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxmodels.kernels import conv as conv_kernels
from jaxmodels.train import privacy

INPUTS = "dp_layer_inputs"  # the collection the captured inputs are sown into


@dataclasses.dataclass(frozen=True)
class Result:
  """The clipped per-example gradients summed over the batch, the norms before clipping [B],
  and the task's metric sums of the forward pass."""

  grads: Any
  norms: jax.Array
  sums: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _Conv:
  """What the patches of a 2-D nn.Conv call need."""

  strides: tuple[int, int]
  padding: Any
  dilation: tuple[int, int]


class _Capture:
  """The `nn.intercept_methods` interceptor: sows each Dense/Conv input, perturbs its output,
  and notes (at trace time) what kind of layer each module path is, once per call."""

  def __init__(self):
    self.layers: dict[tuple[str, ...], list[Any]] = {}

  def __call__(self, next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, (nn.Dense, nn.Conv)):
      return next_fun(*args, **kwargs)
    self.layers.setdefault(tuple(module.scope.path), []).append(_describe(module, args[0]))
    module.sow(INPUTS, "x", args[0])
    return module.perturb("y", next_fun(*args, **kwargs))


def _describe(module: nn.Module, x: jax.Array) -> Any:
  """ "dense", a _Conv, or None for a convolution the patches do not cover."""
  if isinstance(module, nn.Dense):
    return "dense"
  pair = lambda v: (1, 1) if v is None else ((v, v) if isinstance(v, int) else tuple(v))
  plain = pair(module.input_dilation) == (1, 1) and module.feature_group_count == 1
  if x.ndim != 4 or len(module.kernel_size) != 2 or not plain or module.padding == "CIRCULAR":
    return None
  padding = module.padding
  if isinstance(padding, int):
    padding = ((padding, padding),) * 2
  elif not isinstance(padding, str):
    padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
  return _Conv(pair(module.strides), padding, pair(module.kernel_dilation))


def clipped_sum(
    model: nn.Module,
    variables: dict[str, Any],
    task: Any,
    batch: Any,
    rng: jax.Array,
    l2_clip: float,
) -> Result | None:
  """DP-SGD's sum of clipped per-example gradients of `task`'s loss (each example's own weighted
  mean), or None when the model has parameters this method does not cover."""
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}
  capture = _Capture()
  with nn.intercept_methods(capture):
    shapes = jax.eval_shape(
        lambda: model.init({"params": rng, "dropout": rng}, *task.model_args(batch), train=True)
    )
  flat_params = traverse_util.flatten_dict(nn.meta.unbox(params))
  layers = _covered(capture.layers, flat_params)
  if layers is None:
    return None

  def total_loss(perturbations):
    with nn.intercept_methods(_Capture()):
      outputs, captured = model.apply(
          {"params": params, "perturbations": perturbations, **rest},
          *task.model_args(batch),
          train=True,
          rngs={"dropout": rng},
          mutable=[INPUTS],
      )
    losses, sums = task.losses(outputs, batch)
    per_example = privacy.example_means(losses, task.weights(batch))
    return jnp.sum(per_example), (captured[INPUTS], sums)

  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["perturbations"])
  g_out, (inputs, sums) = jax.grad(total_loss, has_aux=True)(zeros)
  inputs, g_out = traverse_util.flatten_dict(inputs), traverse_util.flatten_dict(g_out)
  pieces = {}
  for path, kind in layers.items():
    a, g = inputs[path + ("x",)][0], g_out[path + ("y",)]
    shape, bias = flat_params[path + ("kernel",)].shape, path + ("bias",) in flat_params
    pieces[path] = (
        _DenseLayer(a, g, bias) if kind == "dense" else _ConvLayer(a, g, bias, shape, kind)
    )
  norms = jnp.sqrt(sum(piece.square_norms() for piece in pieces.values()))
  scale = privacy.clip_factors(norms, l2_clip)
  grads = {}
  for path, piece in pieces.items():
    for name, value in piece.weighted_sum(scale).items():
      grads[path + (name,)] = value.astype(flat_params[path + (name,)].dtype)
  return Result(traverse_util.unflatten_dict(grads), norms, sums)


def _covered(layers: dict[tuple[str, ...], list[Any]], flat: dict[tuple, Any]) -> dict | None:
  """{module path: "dense" or _Conv} when every parameter (`flat`, by path) is the kernel or
  bias of a Dense or covered 2-D Conv called once; None otherwise."""
  if any(len(calls) != 1 or calls[0] is None for calls in layers.values()):
    return None
  names = {path + (name,) for path in layers for name in ("kernel", "bias")}
  if not flat or set(flat) - names:
    return None
  return {path: calls[0] for path, calls in layers.items() if path + ("kernel",) in flat}


class _DenseLayer:
  """a [B, ..., d_in], g [B, ..., d_out] of one Dense call."""

  def __init__(self, a: jax.Array, g: jax.Array, bias: bool):
    b = a.shape[0]
    self.a = a.reshape(b, -1, a.shape[-1]).astype(jnp.float32)
    self.g = g.reshape(b, -1, g.shape[-1]).astype(jnp.float32)
    self.has_bias = bias

  def square_norms(self) -> jax.Array:
    a, g = self.a, self.g
    t, d_in, d_out = a.shape[1], a.shape[2], g.shape[2]
    if t == 1:
      kernel = jnp.sum(a[:, 0] ** 2, -1) * jnp.sum(g[:, 0] ** 2, -1)
    elif t * t * (d_in + d_out) < t * d_in * d_out:  # the Gram matrices are cheaper
      kernel = jnp.einsum("bst,bst->b", a @ a.transpose(0, 2, 1), g @ g.transpose(0, 2, 1))
    else:
      kernel = jnp.sum(jnp.einsum("bti,bto->bio", a, g) ** 2, (1, 2))
    return kernel + jnp.sum(jnp.sum(g, 1) ** 2, -1) if self.has_bias else kernel

  def weighted_sum(self, scale: jax.Array) -> dict[str, jax.Array]:
    g = self.g * scale[:, None, None]
    out = {"kernel": jnp.einsum("bti,bto->io", self.a, g)}
    if self.has_bias:
      out["bias"] = jnp.sum(g, (0, 1))
    return out


class _ConvLayer:
  """a [B, H, W, c_in], g [B, H', W', c_out] of one 2-D nn.Conv call: per-example kernel
  gradients from the input patches (kh*kw*c_in x c_out each, small for these models)."""

  def __init__(self, a: jax.Array, g: jax.Array, bias: bool, kernel_shape: tuple, conv: _Conv):
    b = a.shape[0]
    patches = _patches(a.astype(jnp.float32), kernel_shape, conv, g.shape[1:3])
    g = g.reshape(b, -1, g.shape[-1]).astype(jnp.float32)
    self.per_example = jnp.einsum("bpk,bpo->bko", patches, g)
    self.bias = jnp.sum(g, 1) if bias else None
    self.kernel_shape = kernel_shape

  def square_norms(self) -> jax.Array:
    kernel = jnp.sum(self.per_example**2, (1, 2))
    return kernel if self.bias is None else kernel + jnp.sum(self.bias**2, -1)

  def weighted_sum(self, scale: jax.Array) -> dict[str, jax.Array]:
    kernel = jnp.einsum("b,bko->ko", scale, self.per_example).reshape(self.kernel_shape)
    out = {"kernel": kernel}
    if self.bias is not None:
      out["bias"] = jnp.einsum("b,bo->o", scale, self.bias)
    return out


def _patches(x: jax.Array, kernel_shape, conv: _Conv, out_hw) -> jax.Array:
  """[B, H'*W', kh*kw*c_in]: the input window of every output position, in the kernel's
  (kh, kw, c_in) order (strided slices of the padded input; lax's patches op is a convolution
  with an identity kernel, far slower on CPU)."""
  kh, kw = kernel_shape[:2]
  (sh, sw), (dh, dw) = conv.strides, conv.dilation
  pads = conv_kernels.explicit_padding(
      x.shape, kernel_shape, conv.strides, conv.padding, conv.dilation
  )
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  ho, wo = out_hw
  windows = [
      lax.slice(
          x,
          (0, i * dh, j * dw, 0),
          (x.shape[0], i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, x.shape[3]),
          (1, sh, sw, 1),
      )
      for i in range(kh)
      for j in range(kw)
  ]
  return jnp.stack(windows, 3).reshape(x.shape[0], ho * wo, -1)
