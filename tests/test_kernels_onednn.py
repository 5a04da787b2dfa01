"""The oneDNN convolution kernels (jaxmodels.kernels) against lax.conv_general_dilated.

Reference values come from lax in float64; oneDNN computes in float32, so the tolerances are
float32's. The kernel tests skip, saying why, where the extension is not built (`make kernels`).
"""

import functools

import chex
import flax
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.kernels import conv, onednn
from jaxmodels.models import cnn
from jaxmodels.models.cnn import CNN
from jaxmodels.models.resnet import BasicBlock, ResNet

REASON = onednn.unavailable_reason()
needs_kernels = pytest.mark.skipif(REASON is not None, reason=f"oneDNN kernels: {REASON}")

# (input NHWC, kernel HWIO, strides, padding, dilation): the convolutions of cnn.py and
# resnet.py (3x3 s1/s2, 1x1 s1/s2, the 7x7 s2 stem), uneven padding, batch 1, dilation.
SHAPES = [
    ((2, 9, 9, 5), (3, 3, 5, 6), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((3, 10, 11, 4), (3, 3, 4, 8), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    ((2, 8, 8, 6), (1, 1, 6, 7), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ((2, 8, 8, 6), (1, 1, 6, 7), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    ((1, 16, 16, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3)), (1, 1)),
    ((2, 7, 9, 3), (3, 2, 3, 4), (2, 1), ((0, 1), (2, 0)), (1, 1)),
    ((2, 11, 10, 3), (3, 3, 3, 5), (1, 2), ((2, 2), (1, 0)), (2, 2)),
]


def randn(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def reference(x, w, strides, padding, dilation):
  """Output and (dx, dw) of sum(conv * r) from lax in float64, r the third random array."""
  with jax.enable_x64(True):
    x64, w64 = jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)
    f = lambda x, w: lax.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=conv.NHWC
    )
    y = f(x64, w64)
    r = jnp.asarray(randn(y.shape, 2), jnp.float64)
    grads = jax.grad(lambda x, w: jnp.sum(f(x, w) * r), (0, 1))(x64, w64)
    return np.asarray(y), [np.asarray(g) for g in grads], np.asarray(r, np.float32)


def assert_close(got, want):
  assert got.dtype == jnp.float32 and got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@needs_kernels
@pytest.mark.parametrize("x_shape,w_shape,strides,padding,dilation", SHAPES)
def test_conv2d_values_and_gradients_equal_lax(x_shape, w_shape, strides, padding, dilation):
  x, w = randn(x_shape, 0), randn(w_shape, 1)
  want, want_grads, r = reference(x, w, strides, padding, dilation)

  @jax.jit
  def run(x, w):
    y, pullback = jax.vjp(lambda x, w: conv.conv2d(x, w, strides, padding, dilation), x, w)
    return y, pullback(r)

  y, grads = run(x, w)
  assert_close(y, want)
  for got, ref in zip(grads, want_grads):
    assert_close(got, ref)


@needs_kernels
def test_conv_general_dilated_resolves_same_and_valid_padding_as_lax():
  x, w = randn((2, 9, 8, 3), 0), randn((3, 3, 3, 4), 1)
  for padding, strides in [("SAME", (2, 2)), ("VALID", (1, 2)), ("SAME", (1, 1))]:
    kw = dict(window_strides=strides, padding=padding, dimension_numbers=conv.NHWC)
    ours = cnn.conv_general_dilated(x, w, impl="onednn", **kw)
    want = lax.conv_general_dilated(x, w, precision="highest", **kw)
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_vmap_over_inputs_and_over_kernels():
  x, w = randn((3, 2, 6, 6, 4), 0), randn((3, 3, 3, 4, 5), 1)
  pad = ((1, 1), (1, 1))
  f = lambda x, w: conv.conv2d(x, w, (1, 1), pad)
  ref = lambda x, w: lax.conv_general_dilated(
      x, w, (1, 1), pad, dimension_numbers=conv.NHWC, precision="highest"
  )
  for axes in [(0, None), (0, 0)]:
    ww = w if axes[1] == 0 else w[0]
    np.testing.assert_allclose(
        jax.vmap(f, axes)(x, ww), jax.vmap(ref, axes)(x, ww), rtol=1e-5, atol=1e-5
    )
  grad = lambda g: jax.vmap(jax.grad(lambda x, w: jnp.sum(g(x, w) ** 2), 1), (0, None))(x, w[0])
  np.testing.assert_allclose(grad(f), grad(ref), rtol=1e-4, atol=1e-4)


@needs_kernels
def test_pmap_over_host_devices():
  n = jax.local_device_count()
  x, w = randn((n, 2, 8, 8, 3), 0), randn((3, 3, 3, 4), 1)
  pad = ((1, 1), (1, 1))

  def grads(f):
    step = lambda x, w: jax.lax.pmean(jax.grad(lambda w: jnp.sum(f(x, w) ** 2))(w), "d")
    return jax.pmap(step, "d", in_axes=(0, None))(x, w)

  ours = grads(lambda x, w: conv.conv2d(x, w, (2, 2), pad))
  want = grads(
      lambda x, w: lax.conv_general_dilated(
          x, w, (2, 2), pad, dimension_numbers=conv.NHWC, precision="highest"
      )
  )
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_a_shape_first_run_by_concurrent_calls_is_right_when_run_alone():
  # Under pmap the calls share the cores (fewer threads each); alone, one call takes them all.
  # The weight gradient of a 1x1 stride-2 convolution, first under pmap, then alone.
  n = jax.local_device_count()
  x, w = randn((n, 2, 8, 8, 6), 3), randn((1, 1, 6, 7), 4)
  args = ((2, 2), ((0, 0), (0, 0)))
  grad = lambda f: jax.grad(lambda w, x: jnp.sum(f(x, w) ** 2))
  ours = grad(lambda x, w: conv.conv2d(x, w, *args))
  ref = grad(lambda x, w: lax.conv_general_dilated(x, w, *args, dimension_numbers=conv.NHWC))
  jax.block_until_ready(jax.pmap(ours, in_axes=(None, 0))(w, x))
  for i in range(n):
    np.testing.assert_allclose(jax.jit(ours)(w, x[i]), jax.jit(ref)(w, x[i]), rtol=1e-4, atol=1e-4)


def _model_grads(model, x, train):
  variables = model.clone(conv_impl="xla").init(jax.random.key(0), x, train=False)

  def run(impl):
    m = model.clone(conv_impl=impl)

    def loss(params):
      out, _ = m.apply({**variables, "params": params}, x, train=train, mutable=["batch_stats"])
      return jnp.sum(out**2), out

    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

  return run("onednn"), run("xla")


@needs_kernels
@pytest.mark.parametrize(
    "model,shape",
    [
        (CNN(features=(4, 6), dense_features=8), (3, 12, 12, 1)),
        (
            ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, num_filters=4, stem="imagenet"),
            (4, 16, 16, 3),
        ),
    ],
)
def test_models_with_onednn_convs_equal_xla(model, shape):
  (grads, out), (want_grads, want_out) = _model_grads(model, randn(shape, 0), train=True)
  np.testing.assert_allclose(out, want_out, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(grads, want_grads, rtol=1e-4, atol=1e-5)


@needs_kernels
def test_pmap_resnet_with_onednn_equals_xla():
  n = jax.local_device_count()
  model = ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, num_filters=4, stem="cifar")
  x = randn((n, 2, 8, 8, 3), 0)
  variables = model.init(jax.random.key(0), x[0])

  def run(impl):
    m = model.clone(conv_impl=impl, axis_name="batch")
    apply = lambda v, xb: m.apply(v, xb, train=True, mutable=["batch_stats"])[0]
    return jax.pmap(apply, axis_name="batch")(flax.jax_utils.replicate(variables), x)

  np.testing.assert_allclose(run("onednn"), run("xla"), rtol=1e-4, atol=1e-5)


@needs_kernels
def test_other_platforms_lower_the_xla_convolution():
  x, w = randn((2, 6, 6, 3), 0), randn((3, 3, 3, 4), 1)
  f = functools.partial(
      cnn.conv_general_dilated,
      window_strides=(1, 1),
      padding="SAME",
      dimension_numbers=conv.NHWC,
      impl="onednn",
  )
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w)), (0, 1)))
  assert "jaxmodels_onednn" in grad.lower(x, w).as_text()  # cpu here
  for platform in ("cuda", "tpu"):
    text = grad.trace(x, w).lower(lowering_platforms=(platform,)).as_text()
    assert "jaxmodels_onednn" not in text and "convolution" in text


# ---------- the impl choice (no kernels needed)


def _call(impl, x, w):
  return cnn.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=conv.NHWC, impl=impl)


def test_unknown_impl_names_the_valid_ones():
  x, w = randn((1, 4, 4, 2), 0), randn((3, 3, 2, 2), 1)
  with pytest.raises(conv.ConvImplError, match="'cudnn'.*xla, onednn, auto"):
    _call("cudnn", x, w)


def test_unavailable_kernels_fall_back_under_auto_and_raise_under_onednn(monkeypatch):
  monkeypatch.setattr(onednn, "_load", lambda: (None, "libjaxmodels_onednn.so not built"))
  monkeypatch.setattr(onednn, "warn_unavailable", lambda fallback: None)
  x, w = randn((1, 4, 4, 2), 0), randn((3, 3, 2, 2), 1)
  want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=conv.NHWC)
  text = jax.jit(lambda x, w: _call("auto", x, w)).lower(x, w).as_text()
  assert "jaxmodels_onednn" not in text
  np.testing.assert_allclose(_call("auto", x, w), want, rtol=1e-6)
  with pytest.raises(onednn.KernelUnavailableError, match="not built"):
    _call("onednn", x, w)


@needs_kernels
def test_auto_uses_onednn_for_float32_and_xla_where_it_cannot():
  x, w = randn((1, 4, 4, 2), 0), randn((3, 3, 2, 2), 1)
  lower = lambda impl, x, w: jax.jit(lambda x, w: _call(impl, x, w)).lower(x, w).as_text()
  assert "jaxmodels_onednn" in lower("auto", x, w)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  assert "jaxmodels_onednn" not in lower("auto", xb, wb)
  with pytest.raises(conv.ConvImplError, match="bfloat16"):
    _call("onednn", xb, wb)


@needs_kernels
def test_layer_benchmark_pairs_both_impls():
  from benchmarks import conv_impl  # noqa: PLC0415  (benchmarks/ runs from the repository root)

  result = conv_impl.measure_layer("2,6,3,3,2", rounds=2, chunk_s=0.01)
  assert result["xla_step_s"] > 0 and result["onednn_step_s"] > 0
  low, high = result["ratio_range"]
  assert low <= result["ratio_xla_over_onednn"] <= high
