"""The oneDNN LSTM kernels (jaxmodels.kernels.lstm) against the fused recurrence they replace.

The layer-level reference is `rnn_fused.run_fused` in float64; oneDNN computes in float32, so the
tolerances are float32's. Outputs are compared at real positions only: at padding they are
unspecified (run_fused freezes the carry there, oneDNN runs on). Model-level checks compare
impl='onednn' with impl='fused'. The kernel tests skip, saying why, where the extension is not
built (`make kernels`).
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import imdb_lstm
from jaxmodels.kernels import lstm, onednn
from jaxmodels.models.common import ModelOptionError
from jaxmodels.models.rnn import Recurrent, RecurrentLayer, RNNLanguageModel
from jaxmodels.models.rnn_fused import run_fused

REASON = onednn.unavailable_reason()
needs_kernels = pytest.mark.skipif(REASON is not None, reason=f"oneDNN kernels: {REASON}")


def randn(shape, seed, scale=0.5):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def layer_args(steps, batch, features, hidden, seed=0):
  params = (
      randn((features, 4 * hidden), seed),
      randn((4 * hidden,), seed + 1),
      randn((hidden, 4 * hidden), seed + 2),
      None,
  )
  carry = (randn((batch, hidden), seed + 3), randn((batch, hidden), seed + 4))
  return randn((steps, batch, features), seed + 5, 1.0), params, carry


def real(lengths, steps, batch):
  """[T, B, 1] 1.0 at real positions, 0.0 at padding."""
  if lengths is None:
    return jnp.ones((steps, batch, 1), jnp.float32)
  return (jnp.arange(steps)[:, None] < lengths[None, :])[..., None].astype(jnp.float32)


def assert_close(got, want):
  got, want = np.asarray(got), np.asarray(want)
  assert got.dtype == np.float32 and got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(want).max())))


def vjp_of(layer, x, params, carry, cotangents):
  """(final carry, outputs) of `layer` and the gradients of <outputs, cotangents> w.r.t. x,
  params and the initial carry."""
  out, pullback = jax.vjp(layer, x, params, carry)
  return out, pullback(cotangents)


# (T, B, F, H, lengths): batch 1, T=1, H not a multiple of 8, lengths 0, full, and past the end.
SHAPES = [
    (5, 3, 7, 6, None),
    (5, 3, 7, 6, [5, 0, 2]),
    (1, 1, 3, 5, None),
    (1, 2, 3, 5, [0, 1]),
    (9, 4, 16, 13, [9, 1, 4, 0]),
    (6, 2, 4, 8, [6, 6]),
    (4, 2, 3, 5, [7, 2]),
]


@needs_kernels
@pytest.mark.parametrize("steps,batch,features,hidden,lengths", SHAPES)
def test_layer_values_and_gradients_equal_run_fused(steps, batch, features, hidden, lengths):
  x, params, carry = layer_args(steps, batch, features, hidden)
  lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
  keep = real(lengths, steps, batch)
  cotangents = (
      (randn((batch, hidden), 7), randn((batch, hidden), 8)),
      randn((steps, batch, hidden), 9) * keep,
  )
  ours = jax.jit(lambda x, p, c, ct: vjp_of(lambda *a: lstm.lstm_layer(*a, lengths), x, p, c, ct))(
      x, params, carry, cotangents
  )
  with jax.enable_x64(True):
    mask = None if lengths is None else keep[..., 0] > 0
    f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    want = vjp_of(
        lambda *a: run_fused("lstm", *a, mask), f64(x), f64(params), f64(carry), f64(cotangents)
    )
    want = jax.tree.map(np.asarray, want)
  (carry_out, ys), grads = ours
  (want_carry, want_ys), want_grads = want
  chex.assert_trees_all_equal_structs(carry_out, want_carry)
  for got, ref in zip(jax.tree.leaves(carry_out), jax.tree.leaves(want_carry)):
    assert_close(got, ref)
  assert_close(ys * keep, want_ys * np.asarray(keep))
  for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    assert_close(got, ref)


@needs_kernels
@pytest.mark.parametrize("steps,batch,features,hidden,lengths", SHAPES[:5])
def test_undifferentiated_layer_equals_run_fused(steps, batch, features, hidden, lengths):
  # Without gradients the layer runs oneDNN's inference primitive, not the training one.
  x, params, carry = layer_args(steps, batch, features, hidden)
  lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
  keep = real(lengths, steps, batch)
  layer = jax.jit(lambda x, p, c: lstm.lstm_layer(x, p, c, lengths))
  assert "jaxmodels_onednn_lstm_inference" in layer.lower(x, params, carry).as_text()
  (c, h), ys = layer(x, params, carry)
  with jax.enable_x64(True):
    mask = None if lengths is None else keep[..., 0] > 0
    f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    (want_c, want_h), want_ys = run_fused("lstm", f64(x), f64(params), f64(carry), mask)
  assert_close(c, want_c)
  assert_close(h, want_h)
  assert_close(ys * keep, np.asarray(want_ys) * np.asarray(keep))


@needs_kernels
@pytest.mark.parametrize("lengths", [None, [4, 0, 2]])
def test_reverse_layer_equals_fused(lengths):
  x, _, carry = layer_args(4, 3, 5, 6)
  lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
  keep = real(lengths, 4, 3)
  layer = RecurrentLayer("lstm", 6, reverse=True)
  variables = layer.init(jax.random.key(0), x, lengths, carry)

  def run(impl):
    def loss(variables, x, carry):
      (c, h), ys = layer.clone(impl=impl).apply(variables, x, lengths, carry)
      return jnp.sum(jnp.sin(ys) * keep) + jnp.sum(c * h)

    return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(variables, x, carry)

  chex.assert_trees_all_close(run("onednn"), run("fused"), rtol=2e-5, atol=2e-5)


@needs_kernels
def test_vmap_over_inputs_and_carries():
  x, params, carry = layer_args(4, 2, 3, 5)
  xs = jnp.stack([x, 2 * x, -x])
  carries = jax.tree.map(lambda c: jnp.stack([c, -c, 0.5 * c]), carry)
  lengths = jnp.array([4, 1], jnp.int32)
  mask = jnp.arange(4)[:, None] < lengths[None, :]

  def loss(layer):
    def f(params, x, carry):
      (c, h), ys = layer(x, params, carry)
      return jnp.sum(c * h) + jnp.sum(jnp.sin(ys) * mask[..., None])

    return jax.vmap(jax.value_and_grad(f, (0, 1, 2)), (None, 0, 0))

  ours = jax.jit(loss(lambda x, p, c: lstm.lstm_layer(x, p, c, lengths)))(params, xs, carries)
  want = jax.jit(loss(lambda x, p, c: run_fused("lstm", x, p, c, mask)))(params, xs, carries)
  chex.assert_trees_all_close(ours, want, rtol=2e-5, atol=2e-5)


@needs_kernels
def test_pmap_over_two_host_devices():
  devices = jax.devices()[:2]
  assert len(devices) == 2, "conftest.py gives the tests 8 host devices"
  x, params, carry = layer_args(5, 3, 4, 6)
  xs = jnp.stack([x, -x])
  lengths = jnp.array([5, 2, 0], jnp.int32)
  mask = jnp.arange(5)[:, None] < lengths[None, :]

  def grads(layer):
    def loss(params, x):
      (c, _), ys = layer(x, params, carry)
      return jnp.sum(c) + jnp.sum((ys * mask[..., None]) ** 2)  # padding outputs unspecified

    step = lambda x, params: jax.lax.pmean(jax.grad(loss)(params, x), "d")
    return jax.pmap(step, "d", in_axes=(0, None), devices=devices)(xs, params)

  ours = grads(lambda x, p, c: lstm.lstm_layer(x, p, c, lengths))
  want = grads(lambda x, p, c: run_fused("lstm", x, p, c, mask))
  chex.assert_trees_all_close(ours, want, rtol=2e-5, atol=2e-5)


def _loss_and_grads(model, variables, args, impl, **kw):
  def loss(params):
    out = model.clone(impl=impl).apply({"params": params}, *args, **kw)
    return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(out))

  return jax.jit(jax.value_and_grad(loss))(variables["params"])


@needs_kernels
@pytest.mark.parametrize("lengths", [None, [6, 0, 3, 1]])
def test_bidirectional_two_layer_recurrent_equals_fused(lengths):
  x = randn((4, 6, 5), 0, 1.0)
  lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
  model = Recurrent("lstm", 7, num_layers=2, bidirectional=True)
  variables = model.init(jax.random.key(0), x, lengths)
  ours, want = (
      _loss_and_grads(model, variables, (x, lengths), impl, return_carry=True)
      for impl in ("onednn", "fused")
  )
  chex.assert_trees_all_close(ours, want, rtol=2e-5, atol=2e-5)


@needs_kernels
def test_imdb_model_trains_as_with_fused():
  config = imdb_lstm.get_config()
  config.model.update(embed_dim=8, hidden_size=6)
  model = imdb_lstm.get_model(config, {"vocab_size": 30, "num_classes": 2})
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 30, (3, 9)), jnp.int32)
  lengths = jnp.array([9, 4, 1], jnp.int32)
  ids = jnp.where(jnp.arange(9)[None] < lengths[:, None], ids, 0)
  variables = model.init(jax.random.key(0), ids, lengths)
  rngs = {"dropout": jax.random.key(1)}
  ours, want = (
      _loss_and_grads(model, variables, (ids, lengths), impl, train=True, rngs=rngs)
      for impl in ("onednn", "fused")
  )
  chex.assert_trees_all_close(ours, want, rtol=2e-5, atol=2e-5)


@needs_kernels
def test_language_model_equals_fused():
  model = RNNLanguageModel(vocab_size=11, embed_dim=4, hidden_size=5, num_layers=2)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 7)), jnp.int32)
  variables = model.init(jax.random.key(0), ids)
  ours, want = (
      _loss_and_grads(model, variables, (ids,), impl, return_carry=True)
      for impl in ("onednn", "fused")
  )
  chex.assert_trees_all_close(ours, want, rtol=2e-5, atol=2e-5)


def _compiled(return_carry):
  x, lengths = randn((3, 5, 4), 0, 1.0), jnp.array([5, 2, 0], jnp.int32)
  model = Recurrent("lstm", 6, bidirectional=True, impl="onednn")
  variables = model.init(jax.random.key(0), x, lengths)

  def loss(params):
    out = model.apply({"params": params}, x, lengths, return_carry=return_carry)
    return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(out[1:]))

  return jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()


@needs_kernels
def test_unused_final_cell_state_is_not_computed():
  # With lengths the final c is recomputed in JAX (gate matmuls); XLA drops it when only the
  # final h is used, leaving every matmul to oneDNN.
  dots = lambda text: len(re.findall(r" dot\(", text))
  assert dots(_compiled(return_carry=False)) == 0
  assert dots(_compiled(return_carry=True)) > 0


@needs_kernels
def test_other_platforms_lower_the_fused_layer():
  x, params, carry = layer_args(3, 2, 4, 5)
  layer = RecurrentLayer("lstm", 5, impl="onednn")
  variables = layer.init(jax.random.key(0), x, None, carry)
  grad = jax.jit(jax.grad(lambda v, x: jnp.sum(layer.apply(v, x, None, carry)[1]), (0, 1)))
  assert "jaxmodels_onednn_lstm" in grad.lower(variables, x).as_text()  # cpu here
  for platform in ("cuda", "tpu"):
    text = grad.trace(variables, x).lower(lowering_platforms=(platform,)).as_text()
    assert "jaxmodels_onednn" not in text and "while" in text


# ---------- the impl choice (no kernels needed)


def _lowered(model, x):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  return jax.jit(model.apply).lower(variables, x).as_text()


def test_unknown_impl_names_the_valid_ones():
  x = randn((2, 3, 4), 0)
  with pytest.raises(ModelOptionError, match="'cudnn'.*fused, flax, onednn, auto"):
    Recurrent("lstm", 5, impl="cudnn").init(jax.random.key(0), x)
  with pytest.raises(lstm.LSTMImplError, match="'flax'.*fused, onednn, auto"):
    RecurrentLayer("lstm", 5, impl="flax").init(jax.random.key(0), x.swapaxes(0, 1), None)


def test_unavailable_kernels_fall_back_under_auto_and_raise_under_onednn(monkeypatch):
  monkeypatch.setattr(onednn, "_load", lambda: (None, "libjaxmodels_onednn.so not built"))
  monkeypatch.setattr(onednn, "warn_unavailable", lambda fallback: None)
  x = randn((2, 3, 4), 0)
  assert "jaxmodels_onednn" not in _lowered(Recurrent("lstm", 5, impl="auto"), x)
  with pytest.raises(onednn.KernelUnavailableError, match="not built"):
    Recurrent("lstm", 5, impl="onednn").init(jax.random.key(0), x)


@needs_kernels
def test_auto_uses_onednn_for_float32_lstm_and_fused_where_it_cannot():
  x = randn((2, 3, 4), 0)
  assert "jaxmodels_onednn_lstm" in _lowered(Recurrent("lstm", 5, impl="auto"), x)
  gru, bf16 = Recurrent("gru", 5, impl="auto"), Recurrent("lstm", 5, impl="auto", dtype="bfloat16")
  for model in (gru, bf16):
    assert "jaxmodels_onednn" not in _lowered(model, x)
  with pytest.raises(lstm.LSTMImplError, match="cell 'gru'"):
    Recurrent("gru", 5, impl="onednn").init(jax.random.key(0), x)
  with pytest.raises(lstm.LSTMImplError, match="bfloat16"):
    Recurrent("lstm", 5, impl="onednn", dtype=jnp.bfloat16).init(jax.random.key(0), x)


@needs_kernels
def test_layer_benchmark_pairs_both_impls():
  from benchmarks import lstm_impl  # noqa: PLC0415  (benchmarks/ runs from the repository root)

  result = lstm_impl.measure_layer("3,2,4,5", rounds=2, chunk_s=0.01, lengths=True)
  assert result["fused_step_s"] > 0 and result["onednn_step_s"] > 0
  low, high = result["ratio_range"]
  assert low <= result["ratio_fused_over_onednn"] <= high
