"""Vision models: shapes, exact parameter counts, BatchNorm semantics, pmap, gradients, FLOPs."""

import math

import chex
import flax
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from jaxmodels.models import cnn, resnet
from jaxmodels.models.cnn import CNN
from jaxmodels.models.mlp import MLP
from jaxmodels.models.resnet import (
    BasicBlock,
    BottleneckBlock,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
)


def count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def tiny_resnet(**kw) -> ResNet:
  kw = {"stage_sizes": (1, 1), "block_cls": BasicBlock, "num_filters": 4, "stem": "cifar", **kw}
  return ResNet(**kw)


def images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def forward(model, variables, x, train=False, seed=0):
  """Jitted apply returning (logits, new batch_stats); one compile beats many eager ops."""
  fn = lambda v, xx, key: model.apply(
      v, xx, train=train, mutable=["batch_stats"], rngs={"dropout": key}
  )
  out, state = jax.jit(fn)(variables, x, jax.random.key(seed))
  return out, state.get("batch_stats", {})


def abstract_variables(model, x):
  return jax.eval_shape(model.init, jax.random.key(0), x)


def np_variables(model, x, seed=0):
  """Random variables with the model's real structure, drawn by NumPy.

  Tests of forward semantics do not need flax's initialisers, and skipping them avoids compiling
  one small XLA program per parameter shape (seconds on this CPU).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = rng.normal(size=leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))
    elif name == "var":
      value = np.ones(leaf.shape)
    elif name == "mean":
      value = np.zeros(leaf.shape)
    else:
      value = 0.1 * rng.normal(size=leaf.shape) + (name == "scale")
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract_variables(model, x))


# ---------- shapes and dtypes


@pytest.mark.parametrize(
    "model,shape",
    [
        (MLP(), (3, 28, 28, 1)),
        (MLP(hidden_sizes=(64,)), (3, 64)),
        (MLP(hidden_sizes=()), (3, 2, 5)),
        (CNN(features=(4, 8), dense_features=16), (3, 28, 28, 1)),
        (CNN(features=(4,), convs_per_block=2, dense_features=0, use_batchnorm=True), (3, 9, 7, 3)),
        (tiny_resnet(), (3, 8, 8, 3)),
        (tiny_resnet(stem="imagenet", block_cls=BottleneckBlock), (3, 33, 31, 1)),
    ],
)
def test_output_shape_and_dtype(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = abstract_variables(model, x)
  y = jax.eval_shape(model.apply, variables, x)
  assert y.shape == (3, model.num_classes) and y.dtype == jnp.float32
  y, _ = jax.eval_shape(
      lambda v, xx: model.apply(
          v, xx, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
      ),
      variables,
      x,
  )
  assert y.shape == (3, model.num_classes) and y.dtype == jnp.float32


@pytest.mark.parametrize(
    "model,shape",
    [
        (MLP(dtype=jnp.bfloat16), (2, 12)),
        (
            CNN(features=(4,), dense_features=8, use_batchnorm=True, dtype=jnp.bfloat16),
            (2, 8, 8, 1),
        ),
        (tiny_resnet(dtype=jnp.bfloat16), (2, 8, 8, 3)),
    ],
)
def test_low_precision_compute_keeps_float32_params_and_logits(model, shape):
  x = images(shape)
  variables = np_variables(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  y, _ = forward(model, variables, x, train=True)
  assert y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))


def test_unknown_stem_and_activation_raise():
  with pytest.raises(ValueError, match="stem"):
    abstract_variables(tiny_resnet(stem="tiny"), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="activation"):
    abstract_variables(MLP(activation="nope"), jnp.zeros((1, 4)))


# ---------- parameter counts


@pytest.mark.parametrize(
    "factory,expected", [(ResNet18, 11_689_512), (ResNet34, 21_797_672), (ResNet50, 25_557_032)]
)
def test_resnet_param_counts_equal_torchvision(factory, expected):
  model = factory(num_classes=1000)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  assert count(shapes["params"]) == expected


def test_mlp_and_cnn_param_counts_by_formula():
  mlp = MLP(hidden_sizes=(128, 64), num_classes=10)
  shapes = jax.eval_shape(mlp.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  assert count(shapes["params"]) == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
  cnn = CNN(features=(32, 64), kernel_size=3, dense_features=128, num_classes=10)
  shapes = jax.eval_shape(cnn.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  convs = (9 * 1 * 32 + 32) + (9 * 32 * 64 + 64)
  assert count(shapes["params"]) == convs + 7 * 7 * 64 * 128 + 128 + 128 * 10 + 10


# ---------- MLP against NumPy


@pytest.mark.parametrize(
    "activation,np_act", [("relu", lambda z: np.maximum(z, 0)), ("tanh", np.tanh)]
)
def test_mlp_matches_numpy(activation, np_act):
  model = MLP(hidden_sizes=(16, 8), num_classes=5, activation=activation)
  x = np.asarray(images((4, 3, 4)))
  params = np_variables(model, x)["params"]
  h = x.reshape(4, -1).astype(np.float64)
  for i in range(3):
    layer = params[f"Dense_{i}"]
    h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
    if i < 2:
      h = np_act(h)
  np.testing.assert_allclose(forward(model, {"params": params}, x)[0], h, rtol=1e-5, atol=1e-5)


def test_dropout_uses_dropout_rng_only_in_train_mode():
  model = MLP(hidden_sizes=(64,), dropout_rate=0.5)
  x = images((4, 10))
  variables = np_variables(model, x)
  plain = forward(MLP(hidden_sizes=(64,)), variables, x)[0]
  np.testing.assert_allclose(forward(model, variables, x)[0], plain, rtol=1e-6)
  a = forward(model, variables, x, train=True, seed=1)[0]
  b = forward(model, variables, x, train=True, seed=2)[0]
  assert not np.allclose(a, b) and not np.allclose(a, plain)


# ---------- BatchNorm semantics


def test_batchnorm_train_updates_stats_as_moving_average():
  model = tiny_resnet()
  x = images((6, 8, 8, 3)) * 3.0 + 1.0
  variables = np_variables(model, x)
  old = variables["batch_stats"]
  _, new = forward(model, variables, x, train=True)
  # Momentum 0 stores this batch's statistics; the stem conv output is captured to check them.
  _, exact = jax.jit(
      lambda v, xx: model.clone(bn_momentum=0.0).apply(
          v,
          xx,
          train=True,
          mutable=["batch_stats", "intermediates"],
          capture_intermediates=lambda mdl, _: mdl.name == "stem_conv",
      )
  )(variables, x)
  stem_out = np.asarray(exact["intermediates"]["stem_conv"]["__call__"][0], np.float64)
  np.testing.assert_allclose(
      exact["batch_stats"]["stem_bn"]["mean"], stem_out.mean((0, 1, 2)), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
      exact["batch_stats"]["stem_bn"]["var"], stem_out.var((0, 1, 2)), rtol=1e-4, atol=1e-5
  )
  assert jax.tree.structure(new) == jax.tree.structure(old)
  expected = jax.tree.map(lambda o, b: 0.9 * o + 0.1 * b, old, exact["batch_stats"])
  for got, want, before in zip(
      jax.tree.leaves(new), jax.tree.leaves(expected), jax.tree.leaves(old)
  ):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, before)


def test_batchnorm_eval_uses_running_stats_deterministically():
  model = tiny_resnet(bn_momentum=0.0)
  x = images((6, 8, 8, 3)) * 2.0 - 0.5
  variables = np_variables(model, x)
  train_out, new = forward(model, variables, x, train=True)
  variables = {"params": variables["params"], "batch_stats": new}
  # With momentum 0 the running stats are this batch's statistics, so eval == train output.
  evaluate = jax.jit(lambda v, xx: model.apply(v, xx, mutable=["batch_stats"]))
  eval_out, unchanged = evaluate(variables, x)
  np.testing.assert_allclose(eval_out, train_out, rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(unchanged), jax.tree.leaves(new)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(evaluate(variables, x)[0], eval_out)
  # Eval output of an example does not depend on the rest of the batch.
  np.testing.assert_allclose(evaluate(variables, x[:2])[0], eval_out[:2], rtol=1e-5, atol=1e-5)
  shifted = jax.tree.map(lambda s: s + 1.0, new)
  moved, _ = evaluate({"params": variables["params"], "batch_stats": shifted}, x)
  assert not np.allclose(moved, eval_out, atol=1e-3)


@pytest.mark.parametrize("block_cls,last", [(BasicBlock, 1), (BottleneckBlock, 2)])
def test_zero_init_residual_zeroes_last_bn_scale(block_cls, last):
  # One channel count everywhere keeps the number of distinct initialiser programs small.
  model = tiny_resnet(
      zero_init_residual=True,
      block_cls=block_cls,
      stage_sizes=(1,),
      num_filters=2 if block_cls is BasicBlock else 1,
  )
  x = jnp.zeros((1, 4, 4, 2 if block_cls is BasicBlock else 4))
  block = jax.jit(model.init)(jax.random.key(0), x)["params"][f"{block_cls.__name__}_0"]
  np.testing.assert_array_equal(block[f"BatchNorm_{last}"]["scale"], 0.0)
  np.testing.assert_array_equal(block["BatchNorm_0"]["scale"], 1.0)
  plain = jax.eval_shape(
      tiny_resnet(block_cls=block_cls, stage_sizes=(1,)).init, jax.random.key(0), x
  )
  assert jax.tree.structure(plain) == jax.tree.structure(
      jax.eval_shape(model.init, jax.random.key(0), x)
  )


# ---------- pmap with cross-device BatchNorm


def test_pmap_batchnorm_equals_single_device_on_whole_batch():
  n = jax.local_device_count()
  assert n == 8, "tests/conftest.py should give 8 fake CPU devices"
  model = tiny_resnet()
  x = images((2 * n, 8, 8, 3)) * 2.0 + 0.3
  variables = np_variables(model, x)
  want_out, want = forward(model, variables, x, train=True)

  def run(m):
    step = jax.pmap(
        lambda v, xb: m.apply(v, xb, train=True, mutable=["batch_stats"]), axis_name="batch"
    )
    return step(flax.jax_utils.replicate(variables), x.reshape((n, 2) + x.shape[1:]))

  out, stats = run(model.clone(axis_name="batch"))
  stats = stats["batch_stats"]
  np.testing.assert_allclose(out.reshape(want_out.shape), want_out, atol=1e-5)
  assert jax.tree.structure(stats) == jax.tree.structure(want)
  for got, ref in zip(jax.tree.leaves(stats), jax.tree.leaves(want)):
    for d in range(n):
      np.testing.assert_allclose(got[d], ref, atol=1e-5)
  _, local = run(model)  # without axis_name each device sees only its 2 images
  assert not np.allclose(jax.tree.leaves(local)[0][0], jax.tree.leaves(want)[0], atol=1e-5)


# ---------- gradients against finite differences (float64)


def _xent(model, variables, x, labels):
  logits = model.apply(variables, x)
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


@pytest.mark.parametrize(
    "model,shape",
    [
        (MLP(hidden_sizes=(6, 5), num_classes=3, activation="tanh"), (4, 2, 3)),
        (CNN(features=(2, 3), dense_features=5, num_classes=3), (3, 6, 6, 1)),
    ],
)
def test_gradients_match_finite_differences(model, shape):
  with jax.enable_x64(True):
    model = model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape))
    labels = jnp.arange(shape[0]) % model.num_classes
    params = np_variables(model, x, seed=1)["params"]
    assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(params))
    loss = jax.jit(lambda p, xx: _xent(model, {"params": p}, xx, labels))
    assert bool(jnp.isfinite(loss(params, x)))
    # Finite differences of a finite loss are finite, so this also rules out NaN gradients.
    check_grads(loss, (params, x), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def test_resnet_gradients_finite_in_train_mode():
  model = tiny_resnet()
  x = images((4, 8, 8, 3))
  variables = np_variables(model, x)

  def loss(params):
    logits, _ = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        x,
        train=True,
        mutable=["batch_stats"],
    )
    return jnp.mean(logits**2)

  grads = jax.jit(jax.grad(loss))(variables["params"])
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


# ---------- FLOPs: hand computations and an independent shape-based count


def test_mlp_flops_by_hand():
  assert MLP().flops_per_example((28, 28, 1)) == 2 * (784 * 128 + 128 * 64 + 64 * 10)
  assert MLP(hidden_sizes=(64,)).flops_per_example((64,)) == 2 * (64 * 64 + 64 * 10)


def test_cnn_flops_by_hand():
  model = CNN(features=(2, 3), kernel_size=3, dense_features=5, num_classes=4)
  # conv 6x6x1->2 (SAME): 2*36*9*1*2 = 1296; pool -> 3x3; conv 3x3x2->3: 2*9*9*2*3 = 972;
  # pool -> 1x1x3; dense 3->5: 30; dense 5->4: 40.
  assert model.flops_per_example((6, 6, 1)) == 1296 + 972 + 30 + 40
  model = CNN(features=(2,), kernel_size=3, convs_per_block=2, dense_features=0, num_classes=4)
  # 7x7: conv 1->2: 2*49*9*2 = 1764; conv 2->2: 2*49*9*4 = 3528; pool -> 3x3x2; dense 18->4: 144.
  assert model.flops_per_example((7, 7, 1)) == 1764 + 3528 + 144


def test_resnet_flops_by_hand():
  # cifar stem 8x8x3->4: 2*64*9*3*4 = 13824; block 4->4 at 8x8: 2 * 2*64*9*16 = 36864;
  # block 4->8 stride 2 at 4x4: 2*16*9*32 + 2*16*9*64 + proj 2*16*32 = 28672; dense 8->10: 160.
  assert tiny_resnet(num_classes=10).flops_per_example((8, 8, 3)) == 13824 + 36864 + 28672 + 160
  model = ResNet(stage_sizes=(1, 1), block_cls=BottleneckBlock, num_filters=2, num_classes=3)
  # stem 7x7/2 pad 3 on 32 -> 16: 2*256*49*3*2 = 150528; max-pool 3/2 pad 1 -> 8x8.
  # bottleneck 2->(2)->8 at 8x8: 512 + 4608 + 2048 + proj 2048 = 9216.
  # bottleneck 8->(4)->16 stride 2: 1x1 at 8x8 4096, 3x3 at 4x4 4608, 1x1 2048, proj 4096.
  assert model.flops_per_example((32, 32, 3)) == 150528 + 9216 + 14848 + 96


@pytest.mark.parametrize("factory,gflops", [(ResNet18, 1.81), (ResNet34, 3.66), (ResNet50, 4.09)])
def test_resnet_flops_match_published_macs(factory, gflops):
  # torchvision's model card lists these GFLOPS, which are multiply-accumulates.
  macs = factory(num_classes=1000).flops_per_example((224, 224, 3)) / 2
  assert macs == pytest.approx(gflops * 1e9, rel=5e-3)


def traced_flops(model, shape) -> float:
  """2 * MACs of every Conv/Dense call, read from real shapes during an abstract forward pass."""
  total = []

  def spy(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(context.module, (nn.Conv, nn.Dense)):
      kernel = context.module.variables["params"]["kernel"]
      total.append(2 * math.prod(out.shape[1:]) * math.prod(kernel.shape[:-1]))
    return out

  def forward():
    with nn.intercept_methods(spy):
      return model.init(jax.random.key(0), jnp.zeros((1,) + tuple(shape)))

  jax.eval_shape(forward)
  return float(sum(total))


@pytest.mark.parametrize(
    "model,shape",
    [
        (MLP(hidden_sizes=(9, 4)), (5, 3)),
        (CNN(features=(3, 5, 2), kernel_size=5, convs_per_block=2, dense_features=7), (13, 11, 2)),
        (CNN(features=(4,), dense_features=0), (9, 10, 1)),
        (tiny_resnet(), (9, 7, 3)),
        (tiny_resnet(stem="imagenet", stage_sizes=(2, 1, 1)), (37, 30, 3)),
        (tiny_resnet(stem="imagenet", block_cls=BottleneckBlock, stage_sizes=(2, 2)), (29, 35, 1)),
    ],
)
def test_flops_equal_shape_traced_count(model, shape):
  assert model.flops_per_example(shape) == traced_flops(model, shape)


def test_reshape_max_pool_equals_flax_max_pool():
  from jaxmodels.models.cnn import max_pool_2x2

  x = jax.random.normal(jax.random.PRNGKey(3), (2, 7, 9, 3))
  np.testing.assert_array_equal(
      np.asarray(max_pool_2x2(x)),
      np.asarray(nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")),
  )


def test_every_family_counts_its_flops_from_the_shapes_of_all_its_inputs():
  """The engine passes one shape per model input (batch axis dropped) to every HasFlops model."""
  from jaxmodels import models

  m = models.MLP(hidden_sizes=(8,), num_classes=3)
  assert m.flops_per_example((32, 32, 3)) == 2 * (32 * 32 * 3 * 8 + 8 * 3)
  clf = models.RNNClassifier(vocab_size=20, num_classes=2)
  gpt = models.GPT(vocab_size=20, model_dim=16, num_layers=2, num_heads=2, mlp_dim=32, max_len=16)
  ed = models.EncoderDecoder(
      src_vocab_size=20,
      tgt_vocab_size=20,
      model_dim=16,
      num_layers=1,
      num_heads=2,
      mlp_dim=32,
      max_len=16,
  )
  assert clf.flops_per_example((16,), ()) == clf.flops_per_example((16,))  # (ids, lengths)
  assert gpt.flops_per_example((16,), (16,)) == gpt.flops_per_example((16,))  # (ids, mask)
  assert ed.flops_per_example((10,), (16,)) != ed.flops_per_example((10,))
  families = [
      m,
      models.CNN(num_classes=10),
      models.ResNet18(num_classes=10, stem="cifar"),
      clf,
      models.RNNLanguageModel(vocab_size=20, embed_dim=8, hidden_size=16),
      gpt,
      ed,
      models.TransformerEncoder(
          20, 2, model_dim=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=16
      ),
  ]
  assert all(isinstance(f, models.HasFlops) for f in families)
  assert not isinstance(models.SimpleRNNCell(features=4), models.HasFlops)


CONVS = [  # (input shape, kernel shape, keyword arguments of conv_general_dilated)
    ((3, 9, 9, 16), (3, 3, 16, 24), dict(window_strides=(1, 1), padding="SAME")),
    ((3, 9, 9, 5), (3, 3, 5, 6), dict(window_strides=(2, 2), padding="VALID")),  # 5: no 8-block
    (
        (2, 11, 16),
        (5, 16, 8),
        dict(
            window_strides=(1,),
            padding=((1, 2),),
            rhs_dilation=(2,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        ),
    ),
    (
        (2, 16, 7, 7),
        (12, 4, 3, 3),
        dict(
            window_strides=(1, 1),
            padding=((1, 1), (0, 2)),
            lhs_dilation=(2, 1),
            feature_group_count=4,
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        ),
    ),
]


def _nhwc(kw):
  return {"dimension_numbers": ("NHWC", "HWIO", "NHWC"), **kw}


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 0.0), (jnp.float32, 1e-6)])
@pytest.mark.parametrize("x_shape,w_shape,kw", CONVS)
def test_conv_values_and_gradients_equal_lax(x_shape, w_shape, kw, dtype, tol):
  kw = _nhwc(kw)
  with jax.enable_x64(dtype == jnp.float64):
    x, w = images(x_shape).astype(dtype), images(w_shape, seed=1).astype(dtype)
    r = images(jax.eval_shape(lambda: lax.conv_general_dilated(x, w, **kw)).shape, seed=2)

    def loss(conv):
      return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(conv(x, w, **kw) * r), (0, 1)))

    (ours, ours_grads), (ref, ref_grads) = loss(cnn.conv_general_dilated)(x, w), loss(
        lax.conv_general_dilated
    )(x, w)
    np.testing.assert_allclose(ours, ref, rtol=tol)
    for a, b in zip(ours_grads, ref_grads):
      assert a.dtype == dtype
      np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(jnp.max(jnp.abs(b))))


def test_conv_kernel_gradient_reads_its_input_through_a_matmul_on_cpu_only():
  x, w = images((2, 5, 5, 8)), images((3, 3, 8, 4), seed=1)
  conv = lambda x, w: jnp.sum(cnn.conv_general_dilated(x, w, (1, 1), "SAME", **_nhwc({})))
  grad = jax.jit(jax.grad(conv, argnums=1))
  assert "dot_general" in grad.lower(x, w).as_text()  # the platform here is cpu
  assert "dot_general" not in grad.trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
  assert "dot_general" not in jax.jit(conv).lower(x, w).as_text()


def test_resnet_train_gradients_equal_those_through_lax_conv(monkeypatch):
  model, x = tiny_resnet(), images((4, 8, 8, 3))
  variables = model.init(jax.random.key(0), x)

  def grads():
    def loss(params):
      out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(out**2)

    return jax.jit(jax.grad(loss))(variables["params"])

  ours = grads()
  plain = lambda *args, impl, **kwargs: lax.conv_general_dilated(*args, **kwargs)
  monkeypatch.setattr(resnet, "conv_general_dilated", plain)
  chex.assert_trees_all_close(ours, grads(), rtol=1e-5, atol=1e-6)
