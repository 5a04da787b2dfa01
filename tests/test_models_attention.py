"""Attention, masks and positional encodings against float64 NumPy evaluations of the formulas."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.models.attention import (
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    SinusoidalPositionalEncoding,
    attention_weights,
    causal_mask,
    combine_masks,
    dot_product_attention,
    key_padding_mask,
    padding_mask,
    sinusoidal_encoding,
)

B, TQ, TK, H, D = 2, 5, 7, 3, 4

# One compilation per call instead of one per primitive: keeps the file fast.
attend = jax.jit(dot_product_attention, static_argnames=("dropout_rate", "implementation"))


def jit_init(model, *args, **kwargs):
  return nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), *args, **kwargs))


def jit_apply(model, **static):
  return jax.jit(functools.partial(model.apply, **static), static_argnames=("train",))


def np_attention(q, k, v, mask=None):
  """float64 softmax(QK^T/sqrt(d))V per batch and head with plain loops; masked rows -> 0."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, tq, h, d = q.shape
  tk = k.shape[1]
  m = np.ones((b, h, tq, tk), bool) if mask is None else np.broadcast_to(mask, (b, h, tq, tk))
  out = np.zeros((b, tq, h, v.shape[-1]))
  for bi in range(b):
    for hi in range(h):
      for i in range(tq):
        keys = np.nonzero(m[bi, hi, i])[0]
        if keys.size == 0:
          continue
        s = np.array([q[bi, i, hi] @ k[bi, j, hi] / math.sqrt(d) for j in keys])
        w = np.exp(s - s.max())
        w /= w.sum()
        out[bi, i, hi] = sum(wj * v[bi, j, hi] for wj, j in zip(w, keys))
  return out


def rel_error(got, want):
  return np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)


def normal(seed, *shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def qkv(seed=0, tq=TQ, tk=TK):
  return normal(seed, B, tq, H, D), normal(seed + 100, B, tk, H, D), normal(seed + 200, B, tk, H, D)


def random_masks(rng):
  """A padding mask, a causal mask, both, a per-head random mask and one with a dead row."""
  q_valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  k_valid = np.array([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]], bool)
  pad = np.asarray(padding_mask(q_valid, k_valid))
  causal = np.tril(np.ones((TQ, TK), bool), k=TK - TQ)[None, None]
  per_head = rng.random((B, H, TQ, TK)) < 0.6
  per_head[0, 1, 2] = False
  return {
      "none": None,
      "padding": pad,
      "causal": causal,
      "padding+causal": pad & causal,
      "random": per_head,
      "2d": per_head[1, 0],
  }


@pytest.mark.parametrize("name", ["none", "padding", "causal", "padding+causal", "random", "2d"])
@pytest.mark.parametrize("implementation", ["native", "xla"])
def test_attention_matches_numpy(name, implementation):
  q, k, v = qkv()
  mask = random_masks(np.random.default_rng(0))[name]
  got = attend(q, k, v, None if mask is None else jnp.asarray(mask), implementation=implementation)
  want = np_attention(q, k, v, mask)
  assert got.shape == (B, TQ, H, D) and got.dtype == jnp.float32
  assert rel_error(got, want) < 1e-5
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fully_masked_rows_are_zero_not_nan():
  q, k, v = qkv(1)
  mask = np.ones((B, 1, TQ, TK), bool)
  mask[0, :, 3] = False
  mask[1] = False
  for impl in ("native", "xla", None):
    out = np.asarray(attend(q, k, v, jnp.asarray(mask), implementation=impl))
    assert np.all(np.isfinite(out))
    assert np.all(out[0, 3] == 0) and np.all(out[1] == 0)
    assert np.all(np.abs(out[0, :3]).sum(-1) > 0)
  grads = jax.grad(lambda q: attend(q, k, v, jnp.asarray(mask)).sum())(q)
  assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[1] == 0)


def test_jax_nn_path_agrees_with_native_path_and_gradients():
  q, k, v = qkv(2)
  mask = jnp.asarray(random_masks(np.random.default_rng(1))["random"])
  f = lambda impl: lambda q, k, v: attend(q, k, v, mask, implementation=impl)
  np.testing.assert_allclose(f("xla")(q, k, v), f("native")(q, k, v), rtol=1e-5, atol=1e-6)
  g_xla = jax.grad(lambda *a: jnp.sum(f("xla")(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
  g_nat = jax.grad(lambda *a: jnp.sum(f("native")(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_xla, g_nat):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_attention_weights_are_float32_softmax_for_bfloat16_inputs():
  q, k, v = qkv(3, tq=TK)
  bf16 = [a.astype(jnp.bfloat16) for a in (q, k, v)]
  w = np.asarray(attention_weights(bf16[0], bf16[1], causal_mask(TK)))
  assert w.dtype == np.float32 and w.shape == (B, H, TK, TK)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  assert np.all(w[..., np.triu(np.ones((TK, TK), bool), k=1)] == 0)
  out = attend(*bf16, None)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), np_attention(*bf16), atol=0.05)


def test_attention_dropout_zeroes_and_rescales_weights():
  """With one-hot values the output row is the weight row: each entry is 0 or w / (1 - rate)."""
  q, k, _ = qkv(4, tq=3, tk=D)
  v = jnp.broadcast_to(jnp.eye(D)[None, :, None, :], (B, D, H, D))
  rate = 0.5
  full = np.asarray(attend(q, k, v))
  dropped = np.asarray(attend(q, k, v, dropout_rng=jax.random.key(7), dropout_rate=rate))
  zero = dropped == 0
  np.testing.assert_allclose(dropped[~zero], full[~zero] / (1 - rate), rtol=1e-6)
  assert 0.3 < zero.mean() < 0.7
  again = attend(q, k, v, dropout_rng=jax.random.key(7), dropout_rate=rate)
  np.testing.assert_array_equal(again, dropped)
  with pytest.raises(ValueError, match="dropout"):
    attend(q, k, v, dropout_rng=jax.random.key(7), dropout_rate=rate, implementation="xla")
  with pytest.raises(ValueError, match="implementation"):
    attend(q, k, v, implementation="flash")


# ---------- masks


def test_masks_against_loops():
  qv = np.array([[1, 1, 0], [1, 0, 0]], bool)
  kv = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], bool)
  pad = np.asarray(padding_mask(qv, kv))
  assert pad.shape == (2, 1, 3, 4)
  for b in range(2):
    for i in range(3):
      for j in range(4):
        assert pad[b, 0, i, j] == (qv[b, i] and kv[b, j])
  key = np.asarray(key_padding_mask(kv))
  assert key.shape == (2, 1, 1, 4) and np.array_equal(key[:, 0, 0], kv)
  causal = np.asarray(causal_mask(4))
  assert causal.shape == (1, 1, 4, 4)
  assert all(causal[0, 0, i, j] == (j <= i) for i in range(4) for j in range(4))
  both = np.asarray(combine_masks(pad[..., :3], causal_mask(3), None))
  assert both.shape == (2, 1, 3, 3)
  assert np.array_equal(both, pad[..., :3] & np.tril(np.ones((3, 3), bool)))
  assert combine_masks(None, None) is None


# ---------- multi-head attention


def np_mha(params, xq, xkv, num_heads, mask=None, fused=False):
  """Projections, per-head attention and output Dense in float64 from the module's weights."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  xq, xkv = np.asarray(xq, np.float64), np.asarray(xkv, np.float64)

  def proj(x, kernel, bias):
    return np.einsum("btc,chd->bthd", x, kernel) + bias

  if fused:
    w, b = p["qkv"]["kernel"], p["qkv"]["bias"]
    q, k, v = (proj(xq, w[:, i], b[i]) for i in range(3))
  else:
    q = proj(xq, p["query"]["kernel"], p["query"]["bias"])
    k = proj(xkv, p["key"]["kernel"], p["key"]["bias"])
    v = proj(xkv, p["value"]["kernel"], p["value"]["bias"])
  heads = np_attention(q, k, v, mask)
  concat = heads.reshape(heads.shape[0], heads.shape[1], -1)
  return concat @ p["out"]["kernel"] + p["out"]["bias"]


@pytest.mark.parametrize("fused", [False, True])
def test_multi_head_self_attention_matches_numpy(fused):
  x = normal(0, B, 6, 10)
  mask = combine_masks(
      padding_mask(jnp.ones((B, 6)), jnp.array([[1] * 6, [1] * 4 + [0] * 2])), causal_mask(6)
  )
  model = MultiHeadAttention(num_heads=2, model_dim=8, head_dim=5, fused_qkv=fused)
  params = jit_init(model, x, mask=mask)["params"]
  assert set(params) == ({"qkv", "out"} if fused else {"query", "key", "value", "out"})
  assert params["out"]["kernel"].shape == (10, 8)
  got = jit_apply(model)({"params": params}, x, mask=mask)
  assert got.shape == (B, 6, 8)
  want = np_mha(params, x, x, 2, np.asarray(mask), fused)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_multi_head_cross_attention_matches_numpy():
  xq = normal(0, B, 3, 8)
  xkv = normal(1, B, 5, 6)
  mask = key_padding_mask(jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
  model = MultiHeadAttention(num_heads=4, model_dim=8)
  params = jit_init(model, xq, xkv, mask)["params"]
  assert params["key"]["kernel"].shape == (6, 4, 2)
  got = jit_apply(model)({"params": params}, xq, xkv, mask)
  want = np_mha(params, xq, xkv, 4, np.asarray(mask))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="fused_qkv"):
    model.clone(fused_qkv=True).init(jax.random.key(2), xq, xkv)


@pytest.mark.parametrize("fused", [False, True])
def test_multi_head_attention_parameters_carry_logical_axes(fused):
  x = normal(0, B, 3, 8)
  model = MultiHeadAttention(num_heads=4, model_dim=8, fused_qkv=fused)
  specs = nn.get_partition_spec(jax.eval_shape(model.init, jax.random.key(0), x))["params"]
  if fused:
    assert tuple(specs["qkv"]["kernel"]) == ("embed", None, "heads", "kv")
    assert tuple(specs["qkv"]["bias"]) == (None, "heads", "kv")
  else:
    for name in ("query", "key", "value"):
      assert tuple(specs[name]["kernel"]) == ("embed", "heads", "kv")
      assert tuple(specs[name]["bias"]) == ("heads", "kv")
  assert tuple(specs["out"]["kernel"]) == ("heads", "embed")
  assert tuple(specs["out"]["bias"]) == ("embed",)


@pytest.mark.parametrize("chunks", [(1,) * 6, (3, 1, 2)])
def test_decode_cache_equals_full_causal_attention(chunks):
  x = normal(0, B, 6, 8)
  full = MultiHeadAttention(num_heads=2, model_dim=8, fused_qkv=True)
  params = jit_init(full, x)["params"]
  want = jit_apply(full)({"params": params}, x, mask=causal_mask(6))

  step = full.clone(decode=True)
  cache = jit_init(step, jnp.zeros_like(x))["cache"]
  step_fn = jit_apply(step, mutable=["cache"])
  assert cache["cached_key"].shape == (B, 6, 2, 4) and int(cache["cache_index"]) == 0
  outs, start = [], 0
  for n in chunks:
    out, state = step_fn({"params": params, "cache": cache}, x[:, start : start + n])
    cache, start = state["cache"], start + n
    outs.append(out)
    assert int(cache["cache_index"]) == start
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, rtol=1e-5, atol=1e-6)


def test_multi_head_dropout_uses_the_dropout_rng_in_training_only():
  x = normal(0, B, 4, 8)
  model = MultiHeadAttention(num_heads=2, model_dim=8, dropout_rate=0.5)
  variables = jit_init(model, x)
  apply = jit_apply(model)
  plain = jit_apply(model.clone(dropout_rate=0.0))(variables, x)
  np.testing.assert_array_equal(apply(variables, x), plain)
  a = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  b = apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
  assert not np.allclose(a, plain) and not np.allclose(a, b)


def test_multi_head_dtypes():
  x = normal(0, B, 4, 8)
  model = MultiHeadAttention(num_heads=2, model_dim=8, dtype=jnp.bfloat16, param_dtype=jnp.float32)
  variables = jit_init(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert jit_apply(model)(variables, x).dtype == jnp.bfloat16


# ---------- positional encodings


@pytest.mark.parametrize("dim", [6, 7])
def test_sinusoidal_encoding_against_formula(dim):
  table = np.asarray(sinusoidal_encoding(50, dim))
  assert table.shape == (50, dim)
  for pos in range(50):
    for j in range(dim):
      angle = pos / 10000 ** (2 * (j // 2) / dim)
      want = math.sin(angle) if j % 2 == 0 else math.cos(angle)
      assert abs(table[pos, j] - want) < 2e-5, (pos, j)


def test_sinusoidal_module_offsets_and_positions():
  x = normal(0, 2, 3, 8)
  table = sinusoidal_encoding(10, 8)
  module = SinusoidalPositionalEncoding()
  assert module.init(jax.random.key(0), x) == {}
  np.testing.assert_allclose(module.apply({}, x), x + table[:3], atol=1e-6)
  shifted = jax.jit(lambda x, o: module.apply({}, x, offset=o))(x, 4)
  np.testing.assert_allclose(shifted, x + table[4:7], atol=1e-6)
  pos = jnp.array([[0, 5, 9], [2, 2, 1]])
  np.testing.assert_allclose(module.apply({}, x, positions=pos), x + table[pos], atol=1e-6)


def test_learned_positional_embedding_offsets_and_positions():
  x = normal(0, 2, 3, 4)
  module = LearnedPositionalEmbedding(max_len=8, dim=4)
  variables = nn.meta.unbox(module.init(jax.random.key(1), x))
  table = np.asarray(variables["params"]["embedding"])
  assert table.shape == (8, 4)
  np.testing.assert_allclose(module.apply(variables, x), x + table[:3], rtol=1e-6)
  np.testing.assert_allclose(module.apply(variables, x, offset=5), x + table[5:8], rtol=1e-6)
  traced = jax.jit(lambda o: module.apply(variables, x, offset=o))(jnp.int32(2))
  np.testing.assert_allclose(traced, x + table[2:5], rtol=1e-6)
  pos = jnp.array([[7, 0, 3], [1, 1, 6]])
  np.testing.assert_allclose(module.apply(variables, x, positions=pos), x + table[pos], rtol=1e-6)
  with pytest.raises(ValueError, match="max_len"):
    module.apply(variables, x, offset=6)
  with pytest.raises(ValueError, match="dim"):
    module.init(jax.random.key(1), jnp.zeros((2, 3, 5)))
