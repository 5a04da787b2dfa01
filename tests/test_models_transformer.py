"""Transformer models: causality, padding invariance, cached decoding against uncached argmax
loops, single compilation of the decoders, finite-difference gradients and FLOP counts."""

import contextlib
import functools
import math

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import optax
import pytest
import scipy.special

from jaxmodels.models import transformer
from jaxmodels.models.transformer import (
    GPT,
    EncoderDecoder,
    TransformerEncoder,
    beam_search_decode,
    generate,
    greedy_decode,
    mask_after_eos,
)

VOCAB = 13
TINY = dict(model_dim=16, num_layers=2, num_heads=2, mlp_dim=32)


def ids(seed, shape, low=1, high=VOCAB):
  return jnp.asarray(np.random.default_rng(seed).integers(low, high, shape), jnp.int32)


def random_params(model, *args, seed=0, scale=0.3):
  """Random parameters of the model's shapes from NumPy: no compiled init needed, and non-trivial
  biases and LayerNorm parameters exercise every term."""
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def setup_model(model, *args, **kwargs):
  variables = {"params": random_params(model, *args, **kwargs)}
  return variables, jax.jit(model.apply, static_argnames=("train", "method"))


@contextlib.contextmanager
def traces(fun_name):
  """Collects one entry per time jax traces the jitted function `fun_name` inside the block."""
  seen = []

  def listen(event, duration_secs, **kwargs):
    del duration_secs
    if event == "/jax/core/compile/jaxpr_trace_duration" and kwargs.get("fun_name") == fun_name:
      seen.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


@functools.cache
def gpt():
  model = GPT(VOCAB, max_len=12, **TINY)
  variables, apply = setup_model(model, ids(0, (2, 12)))
  return model, variables, apply


@functools.cache
def seq2seq(seed=0, scale=0.3):
  model = EncoderDecoder(src_vocab_size=VOCAB, tgt_vocab_size=6, max_len=10, **TINY)
  variables, apply = setup_model(
      model, ids(0, (2, 5)), ids(1, (2, 4), high=6), seed=seed, scale=scale
  )
  return model, variables, apply


# ---------- GPT (inputs are [2, 12] throughout, so one compiled forward pass serves most tests)


def test_gpt_shapes_dtypes_and_tied_head():
  model, variables, apply = gpt()
  x = ids(1, (2, 12))
  logits = apply(variables, x)
  assert logits.shape == (2, 12, VOCAB) and logits.dtype == jnp.float32
  assert "qkv" in variables["params"]["block0"]["self_attn"]
  assert jax.jit(model.clone(dtype=jnp.bfloat16).apply)(variables, x).dtype == jnp.float32
  tied = model.clone(tie_embeddings=True)
  params = random_params(tied, x)
  assert "head" not in params
  logits, state = jax.jit(functools.partial(tied.apply, capture_intermediates=True))(
      {"params": params}, x
  )
  final = np.asarray(state["intermediates"]["ln_final"]["__call__"][0], np.float64)
  table = np.asarray(params["token_embed"]["embedding"], np.float64)
  np.testing.assert_allclose(logits, final @ table.T, rtol=1e-5, atol=1e-5)


def test_gpt_is_causal():
  _, variables, apply = gpt()
  x = ids(2, (2, 12))
  base = np.asarray(apply(variables, x))
  for t in (0, 4, 9):
    changed = x.at[:, t + 1 :].set((x[:, t + 1 :] + 5) % VOCAB)
    out = np.asarray(apply(variables, changed))
    np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[:, t + 1 :], base[:, t + 1 :])


def test_gpt_padding_never_changes_real_positions():
  _, variables, apply = gpt()
  x = ids(3, (2, 12))
  mask = jnp.array([[1] * 12, [1] * 7 + [0] * 5])
  base = np.asarray(apply(variables, x, mask))
  other = np.asarray(apply(variables, x.at[1, 7:].set(jnp.array([7, 0, 2, 2, 9])), mask))
  np.testing.assert_allclose(other[1, :7], base[1, :7], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(other[0], base[0], rtol=1e-5, atol=1e-6)
  # Left padding: the padded tokens are ignored only because of the mask.
  left = jnp.array([[0, 0] + [1] * 10] * 2)
  a = np.asarray(apply(variables, x, left))
  b = np.asarray(apply(variables, x.at[:, :2].set(4), left))
  np.testing.assert_allclose(a[:, 2:], b[:, 2:], rtol=1e-5, atol=1e-6)
  unmasked = np.asarray(apply(variables, x.at[:, :2].set(4)))
  assert not np.allclose(unmasked[:, 2:], a[:, 2:])


def gpt_argmax_loop(apply, variables, prompt, total):
  """Reference decoding without a cache: a full forward pass over the whole prefix per token.

  The prefix sits in a fixed [B, total] buffer (later slots hold filler) so that one compiled
  forward pass serves every step; causality (tested above) makes the filler irrelevant.
  """
  x = np.zeros((prompt.shape[0], total), np.int32)
  x[:, : prompt.shape[1]] = prompt
  for t in range(prompt.shape[1], total):
    x[:, t] = np.argmax(np.asarray(apply(variables, jnp.asarray(x)))[:, t - 1], axis=-1)
  return x


def test_gpt_cached_greedy_generation_equals_uncached_argmax():
  model, variables, apply = gpt()
  prompt = ids(4, (2, 4))
  want = gpt_argmax_loop(apply, variables, prompt, 12)
  got = generate(model, variables, prompt, 8, jax.random.key(0), temperature=0.0)
  assert got.shape == (2, 12)
  np.testing.assert_array_equal(got, want)
  top1 = generate(model, variables, prompt, 8, jax.random.key(1), temperature=1.0, top_k=1)
  np.testing.assert_array_equal(top1, want)


def test_gpt_top_k_samples_stay_in_the_top_k_of_uncached_logits():
  model, variables, apply = gpt()
  prompt = ids(5, (2, 4))
  for seed in range(3):
    got = np.asarray(
        generate(model, variables, prompt, 8, jax.random.key(seed), temperature=2.0, top_k=3)
    )
    np.testing.assert_array_equal(got[:, :4], prompt)
    logits = np.asarray(apply(variables, jnp.asarray(got)))
    for t in range(4, 12):
      top3 = np.argsort(logits[:, t - 1], axis=-1)[:, -3:]
      assert all(got[b, t] in top3[b] for b in range(2))
  again = generate(model, variables, prompt, 8, jax.random.key(2), temperature=2.0, top_k=3)
  np.testing.assert_array_equal(again, got)
  samples = [
      np.asarray(generate(model, variables, prompt, 8, jax.random.key(s), temperature=5.0))
      for s in range(3)
  ]
  assert any(not np.array_equal(samples[0], s) for s in samples[1:])


def test_generate_compiles_once_per_batch_size():
  """Prompt length, token count (windows past max_len=12 included), seed, temperature and top_k
  are all traced: only a new batch size compiles again."""
  model, variables, _ = gpt()
  generate(model, variables, ids(6, (2, 4)), 8, jax.random.key(0), temperature=0.7, top_k=2)
  with traces("_generate") as seen:
    for seed in range(3):
      generate(
          model,
          variables,
          ids(7 + seed, (2, 2 + seed)),
          5 + 7 * seed,
          jax.random.key(seed),
          temperature=0.5 * seed,
          top_k=2 + seed,
      )
    assert len(seen) == 0
    generate(model, variables, ids(6, (3, 4)), 8, jax.random.key(0), top_k=2)
    assert len(seen) == 1
  with pytest.raises(ValueError, match="max_len"):
    generate(model, variables, ids(6, (2, 12)), 1, jax.random.key(0))


def test_generate_past_max_len_slides_the_window():
  """Past max_len=12 the newest 6 tokens start a fresh window; a cache-free loop that feeds the
  model exactly those windows must pick the same argmax tokens."""
  model, variables, apply = gpt()
  prompt = ids(9, (2, 5))
  got = np.asarray(generate(model, variables, prompt, 20, jax.random.key(0), temperature=0.0))
  assert got.shape == (2, 25)
  seq, start = np.asarray(prompt), 0
  while seq.shape[1] < 25:
    if seq.shape[1] - start == 12:
      start = seq.shape[1] - 6
    logits = np.asarray(apply(variables, jnp.asarray(seq[:, start:])))
    seq = np.concatenate([seq, logits[:, -1].argmax(-1)[:, None].astype(np.int32)], axis=1)
  np.testing.assert_array_equal(got, seq)


def stack_layers(params, num_layers):
  """Unrolled GPT parameters (block0, block1, ...) in scan_layers=True form."""
  params = dict(params)
  layers = [params.pop(f"block{i}") for i in range(num_layers)]
  return {**params, "blocks": {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}}


def lm_loss_and_grads(model, params, x):
  def loss(p):
    logits = model.apply({"params": p}, x[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean()

  return jax.jit(jax.value_and_grad(loss))(params)


@functools.cache
def float32_reference():
  """The plain float32 GPT's loss and gradients on one batch."""
  model, variables, _ = gpt()
  return lm_loss_and_grads(model, variables["params"], ids(8, (2, 12)))


# remat=True means "full"; ("none", unrolled) is the reference itself.
REMAT_SCAN = [
    ("full", False),
    ("dots_saveable", False),
    ("dots_with_no_batch_dims_saveable", False),
    (True, False),
    ("none", True),
    ("full", True),
    ("dots_saveable", True),
]


@pytest.mark.parametrize("remat,scan", REMAT_SCAN)
def test_remat_and_scan_give_the_float32_loss_and_gradients(remat, scan):
  model, variables, _ = gpt()
  x = ids(8, (2, 12))
  want_loss, want = float32_reference()
  params = stack_layers(variables["params"], 2) if scan else variables["params"]
  variant = model.clone(remat=remat, scan_layers=scan)
  jaxpr = str(jax.make_jaxpr(variant.apply)({"params": params}, x))
  assert ("remat" in jaxpr) == (remat != "none")
  loss, grads = lm_loss_and_grads(variant, params, x)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  want = stack_layers(want, 2) if scan else want
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), grads, want)


def test_bfloat16_compute_on_float32_weights_is_close_to_float32():
  model, variables, _ = gpt()
  x = ids(8, (2, 12))
  want_loss, want = float32_reference()
  params = variables["params"]
  bf16 = model.clone(dtype=jnp.bfloat16, param_dtype=jnp.float32)
  assert jax.eval_shape(bf16.apply, {"params": params}, x).dtype == jnp.float32
  loss, grads = lm_loss_and_grads(bf16, params, x)
  np.testing.assert_allclose(loss, want_loss, rtol=2e-2)
  for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
    assert got.dtype == jnp.float32
    assert np.linalg.norm(got - ref) <= 2e-2 * np.linalg.norm(ref) + 1e-6


def test_a_bad_remat_names_the_valid_ones():
  model, variables, _ = gpt()
  with pytest.raises(ValueError, match="dots_saveable") as error:
    model.clone(remat="some").apply(variables, ids(1, (2, 12)))
  assert "'some'" in str(error.value) and "'full'" in str(error.value)


def np_layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * p["scale"] + p.get("bias", 0.0)


def np_gelu(x, approximate):
  if approximate:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def np_dense(p, x, axes=1):
  return np.tensordot(x, p["kernel"], axes) + p.get("bias", 0.0)


def np_gpt(model, params, x):
  """A NumPy GPT-2 forward pass (float64) from the parameter tree."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  eps, length = model.layer_norm_epsilon, x.shape[1]
  h = params["token_embed"]["embedding"][x] + params["token_pos"]["embedding"][:length]
  causal = np.tril(np.ones((length, length), bool))
  for i in range(model.num_layers):
    block = params[f"block{i}"]
    qkv = np_dense(block["self_attn"]["qkv"], np_layer_norm(h, block["ln1"], eps))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(np.where(causal, scores, -np.inf) - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(h.shape[:2] + (-1,))
    h = h + np_dense(block["self_attn"]["out"], heads)
    hidden = np_gelu(
        np_dense(block["mlp"]["fc1"], np_layer_norm(h, block["ln2"], eps)), model.gelu_approximate
    )
    h = h + np_dense(block["mlp"]["fc2"], hidden)
  h = np_layer_norm(h, params["ln_final"], eps)
  if model.tie_embeddings:
    return h @ params["token_embed"]["embedding"].T
  return np_dense(params["head"], h)


GPT2_LIKE = dict(tie_embeddings=True, use_bias=True, layer_norm_epsilon=1e-5, gelu_approximate=True)
NO_BIAS_EXACT_GELU = dict(
    tie_embeddings=False, use_bias=False, layer_norm_epsilon=0.5, gelu_approximate=False
)


@pytest.mark.parametrize("options", [GPT2_LIKE, NO_BIAS_EXACT_GELU], ids=["gpt2", "other"])
def test_gpt2_architecture_options_match_numpy(options):
  model = GPT(VOCAB, max_len=12, **TINY, **options)
  x = ids(3, (2, 12))
  params = random_params(model, x, seed=4)
  kernels = [k for k in traverse_util.flatten_dict(params) if k[-1] == "bias" and "ln" not in k[-2]]
  assert bool(kernels) == options["use_bias"]
  got = jax.jit(model.apply)({"params": params}, x)
  np.testing.assert_allclose(got, np_gpt(model, params, np.asarray(x)), rtol=1e-4, atol=1e-4)
  default = model.clone(layer_norm_epsilon=1e-6, gelu_approximate=True)
  differs = np.abs(jax.jit(default.apply)({"params": params}, x) - got).max()
  assert differs > (1e-2 if options is NO_BIAS_EXACT_GELU else 0.0)


def test_dropout_only_in_training():
  model, variables, apply = gpt()
  x = ids(9, (2, 12))
  dropping = model.clone(dropout_rate=0.3)
  train = jax.jit(functools.partial(dropping.apply, train=True))
  a = train(variables, x, rngs={"dropout": jax.random.key(1)})
  b = train(variables, x, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, b) and not np.allclose(a, apply(variables, x))
  np.testing.assert_array_equal(jax.jit(dropping.apply)(variables, x), apply(variables, x))


# ---------- encoder classifier


def test_encoder_padding_never_changes_logits():
  model = TransformerEncoder(VOCAB, num_classes=3, max_len=10, **TINY)
  x = jnp.array([[3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 1, 0]])
  variables, apply = setup_model(model, x)
  base = np.asarray(apply(variables, x))
  assert base.shape == (2, 3) and base.dtype == np.float32
  longer = jnp.pad(x, ((0, 0), (0, 4)))  # more padding at the end
  np.testing.assert_allclose(apply(variables, longer), base, rtol=1e-5, atol=1e-6)
  mask = (x != 0).astype(jnp.int32)  # explicit mask: pad positions may hold any token
  junk = jnp.where(mask == 1, x, 11)
  np.testing.assert_allclose(apply(variables, junk, mask), base, rtol=1e-5, atol=1e-6)
  assert not np.allclose(apply(variables, junk), base)
  changed = np.asarray(apply(variables, x.at[:, 0].set(2)))  # real tokens matter in every row
  assert np.all(np.abs(changed - base).max(-1) > 1e-4)


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_encoder_pooling_by_hand(pooling):
  """Logits = head(pooled final states): mean over real positions, or the first position."""
  model = TransformerEncoder(VOCAB, num_classes=3, max_len=10, pooling=pooling, **TINY)
  x = jnp.array([[3, 4, 5, 0], [6, 7, 8, 9]])
  variables, _ = setup_model(model, x)
  logits, state = jax.jit(functools.partial(model.apply, capture_intermediates=True))(variables, x)
  final = np.asarray(state["intermediates"]["ln_final"]["__call__"][0], np.float64)
  head = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"]["head"])
  if pooling == "mean":
    pooled = np.stack([final[0, :3].mean(0), final[1].mean(0)])
  else:
    pooled = final[:, 0]
  np.testing.assert_allclose(logits, pooled @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-6)


# ---------- encoder-decoder


def test_seq2seq_shapes_methods_and_padding():
  _, variables, apply = seq2seq()
  src = jnp.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]])
  tgt = jnp.array([[1, 3, 4, 0], [1, 5, 5, 2]])
  logits = np.asarray(apply(variables, src, tgt))
  assert logits.shape == (2, 4, 6) and logits.dtype == np.float32
  encoded = apply(variables, src, method="encode")
  assert encoded.shape == (2, 5, 16)
  np.testing.assert_allclose(
      apply(variables, encoded, src, tgt, method="decode"), logits, rtol=1e-5, atol=1e-6
  )
  more_src = jnp.pad(src, ((0, 0), (0, 3)))
  np.testing.assert_allclose(apply(variables, more_src, tgt), logits, rtol=1e-5, atol=1e-6)
  changed = np.asarray(apply(variables, src, tgt.at[:, 2:].set(3)))  # the decoder is causal
  np.testing.assert_allclose(changed[:, :2], logits[:, :2], rtol=1e-5, atol=1e-6)
  assert not np.allclose(changed[:, 2:], logits[:, 2:])
  assert not np.allclose(apply(variables, src.at[0, 0].set(9), tgt)[0], logits[0])


def seq2seq_argmax_loop(apply, variables, src, steps, bos=1, eos=2):
  """Reference without a cache: a full decoder pass over the prefix per token (in a fixed
  buffer, as for GPT), argmax excluding padding 0, tokens after the first EOS zeroed."""
  y = np.zeros((src.shape[0], steps), np.int32)
  y[:, 0] = bos
  out = np.zeros_like(y)
  for t in range(steps):
    logits = np.array(apply(variables, src, jnp.asarray(y))[:, t])
    logits[:, 0] = -np.inf
    out[:, t] = logits.argmax(-1)
    if t + 1 < steps:
      y[:, t + 1] = out[:, t]
  for row in out:
    hits = np.nonzero(row == eos)[0]
    if hits.size:
      row[hits[0] + 1 :] = 0
  return out


def test_greedy_decode_equals_uncached_argmax_and_compiles_once():
  model, variables, apply = seq2seq(seed=1, scale=1.0)  # weights under which EOS comes early
  src = ids(11, (2, 5)).at[1, 3:].set(0)
  want = seq2seq_argmax_loop(apply, variables, src, 9)
  got = greedy_decode(model, variables, src, 9)
  assert got.shape == (2, 9)
  np.testing.assert_array_equal(got, want)
  assert np.any(want[:, :-1] == 2)  # an EOS occurs early, so the zero-tail rule is exercised
  with traces("_greedy_decode") as seen:
    again = greedy_decode(model, variables, ids(12, (2, 5)), 9)
  assert len(seen) == 0
  np.testing.assert_array_equal(again, seq2seq_argmax_loop(apply, variables, ids(12, (2, 5)), 9))
  with pytest.raises(ValueError, match="max_len"):
    greedy_decode(model, variables, src, 11)


def best_hypothesis(apply, variables, src, steps, alpha, bos=1, eos=2):
  """Reference: the best of every hypothesis of at most `steps` tokens (ending at its first EOS,
  or `steps` tokens without one) by log p / ((5 + n) / 6) ** alpha, scored by full uncached
  decoder passes, laid out as greedy decoding's output."""
  vocab = apply(variables, src[:1], jnp.full((1, 1), bos, jnp.int32)).shape[-1]
  out = np.zeros((src.shape[0], steps), np.int32)
  for b in range(src.shape[0]):
    best, frontier = (-np.inf, None), [((), 0.0)]
    for _ in range(steps):
      prefixes = jnp.asarray([[bos, *p] for p, _ in frontier], jnp.int32)
      logits = apply(variables, jnp.repeat(src[b : b + 1], len(frontier), 0), prefixes)[:, -1]
      logp = scipy.special.log_softmax(np.asarray(logits, np.float64), axis=-1)
      grown = []
      for (prefix, score), row in zip(frontier, logp):
        for token in range(1, vocab):
          seq, total = prefix + (token,), score + row[token]
          if token == eos or len(seq) == steps:
            rank = total / ((5 + len(seq)) / 6) ** alpha
            best = max(best, (rank, seq))
          else:
            grown.append((seq, total))
      frontier = grown
    out[b, : len(best[1])] = best[1]
  return out


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_beam_search_finds_the_best_hypothesis_and_beam_one_is_greedy(alpha):
  model, variables, apply = seq2seq(seed=1, scale=1.0)
  src = ids(11, (2, 5)).at[1, 3:].set(0)
  # 5 tokens (all but padding) and 3 steps: 25 beams keep every prefix, so the search is exact.
  want = best_hypothesis(apply, variables, src, 3, alpha)
  got = beam_search_decode(model, variables, src, 3, beam_size=25, length_penalty=alpha)
  np.testing.assert_array_equal(got, want)
  greedy = greedy_decode(model, variables, src, 9)
  np.testing.assert_array_equal(beam_search_decode(model, variables, src, 9, beam_size=1), greedy)
  with pytest.raises(ValueError, match="beam_size"):
    beam_search_decode(model, variables, src, 9, beam_size=0)
  with pytest.raises(ValueError, match="max_len"):
    beam_search_decode(model, variables, src, 11)


def test_beam_search_beats_greedy_on_log_probability():
  model, variables, apply = seq2seq(seed=2, scale=1.0)
  src = ids(21, (6, 5))

  def log_prob(out):
    tgt = np.concatenate([np.ones((len(out), 1), np.int32), np.asarray(out)], 1)
    logp = jax.nn.log_softmax(apply(variables, src, jnp.asarray(tgt[:, :-1])))
    picked = np.take_along_axis(np.asarray(logp), tgt[:, 1:, None], 2)[..., 0]
    return np.sum(np.where(tgt[:, 1:] != 0, picked, 0.0), axis=1)

  greedy = log_prob(greedy_decode(model, variables, src, 6))
  beam = log_prob(beam_search_decode(model, variables, src, 6, beam_size=4))
  assert np.all(beam >= greedy - 1e-5) and np.any(beam > greedy + 1e-3)


def test_mask_after_eos_by_hand():
  got = mask_after_eos(jnp.array([[5, 2, 4, 2], [3, 3, 3, 3], [2, 6, 7, 8]]), 2)
  np.testing.assert_array_equal(got, [[5, 2, 0, 0], [3, 3, 3, 3], [2, 0, 0, 0]])


# ---------- gradients against finite differences (float64)


@pytest.mark.parametrize("kind", ["gpt", "seq2seq"])
def test_gradients_match_finite_differences(kind):
  with jax.enable_x64(True):
    kw = dict(
        model_dim=8,
        num_layers=1,
        num_heads=2,
        mlp_dim=8,
        dtype=jnp.float64,
        param_dtype=jnp.float64,
    )
    x = jnp.array([[3, 4, 5, 0], [6, 7, 1, 2]])
    if kind == "gpt":
      model, args = GPT(VOCAB, max_len=4, **kw), (x, (x != 0).astype(jnp.int32))
    else:
      model = EncoderDecoder(VOCAB, 6, max_len=4, **kw)
      args = (x, jnp.array([[1, 3, 0], [1, 4, 5]]))
    params = random_params(model, *args)
    assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(params))
    loss = jax.jit(lambda p: jnp.sum(jnp.tanh(model.apply({"params": p}, *args))))
    grads = jax.grad(loss)(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert all(np.any(g != 0) for g in jax.tree.leaves(grads))
    check_grads(loss, (params,), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


# ---------- FLOPs


def test_forward_flops_by_hand():
  c, h, m, t, v = 16, 16, 32, 8, 13  # model dim, heads * head_dim, mlp dim, length, vocab
  attn = 2 * t * c * 3 * h + 2 * t * t * h * 2 + 2 * t * h * c  # qkv, scores + values, out
  mlp = 2 * t * c * m * 2
  assert GPT(v, max_len=8, **TINY).flops_per_example((t,)) == 2 * (attn + mlp) + 2 * t * c * v
  enc = TransformerEncoder(v, num_classes=3, max_len=8, **TINY)
  assert enc.flops_per_example((t,)) == 2 * (attn + mlp) + 2 * c * 3
  s = 5
  cross = 2 * t * c * h + 2 * s * c * 2 * h + 2 * t * s * h * 2 + 2 * t * h * c
  enc_s = 2 * s * c * 3 * h + 2 * s * s * h * 2 + 2 * s * h * c + 2 * s * c * m * 2
  dec = attn + cross + mlp
  seq = EncoderDecoder(v, 7, max_len=8, **TINY)
  assert seq.flops_per_example((s,), (t,)) == 2 * (enc_s + dec) + 2 * t * c * 7
  assert seq.flops_per_example((t,)) == seq.flops_per_example((t,), (t,))
  wide = GPT(v, max_len=8, head_dim=4, **TINY)  # 2 heads x 4 = 8 inner features
  assert wide.flops_per_example((1,)) == 2 * (2 * c * 8 * 4 + 4 * 8 + 4 * c * m) + 2 * c * v


def test_scan_over_layers_equals_the_unrolled_gpt():
  kw = dict(vocab_size=VOCAB, model_dim=16, num_layers=3, num_heads=2, mlp_dim=32, max_len=16)
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, VOCAB)
  unrolled, scanned = GPT(**kw), GPT(**kw, scan_layers=True)
  variables = nn.meta.unbox(unrolled.init(jax.random.PRNGKey(0), ids))
  params = dict(variables["params"])
  layers = [params.pop(f"block{i}") for i in range(3)]
  params["blocks"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  shapes = nn.meta.unbox(jax.eval_shape(scanned.init, jax.random.PRNGKey(0), ids))["params"]
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)
  want = unrolled.apply(variables, ids)
  np.testing.assert_allclose(scanned.apply({"params": params}, ids), want, atol=1e-5)
  remat = GPT(**kw, scan_layers=True, remat=True)
  np.testing.assert_allclose(remat.apply({"params": params}, ids), want, atol=1e-5)
  grads = jax.grad(lambda p: remat.apply({"params": p}, ids).sum())(params)
  assert grads["blocks"]["block"]["ln1"]["scale"].shape == (3, 16)
  prompt = ids[:, :3]
  np.testing.assert_array_equal(
      transformer.generate(scanned, {"params": params}, prompt, 5, jax.random.PRNGKey(0), 0.0),
      transformer.generate(unrolled, variables, prompt, 5, jax.random.PRNGKey(0), 0.0),
  )


# ---------- logical axis annotations

PARAM_AXES = {"vocab", "embed", "heads", "kv", "mlp", "pos", "layers", "norm", None}
# The contract's rule table; "embed" is taken by "batch" first in activations ([batch, ..., embed]).
RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
)


def logical_specs(model, *args):
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))
  specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed)["params"], sep="/")
  return {path: tuple(spec) for path, spec in specs.items()}


def annotated_models(vocab=VOCAB, tgt_vocab=11):
  kw = dict(max_len=16, **TINY)
  src = ids(0, (2, 8))
  return [
      (GPT(vocab, **kw), (src,)),
      (GPT(vocab, **kw, tie_embeddings=True), (src,)),
      (GPT(vocab, **kw, scan_layers=True, remat=True), (src,)),
      (TransformerEncoder(vocab, 3, **kw), (src,)),
      (EncoderDecoder(vocab, tgt_vocab, **kw), (src, ids(1, (2, 6)))),
  ]


@pytest.mark.parametrize("index", range(5))
def test_every_parameter_has_one_logical_name_per_dimension(index):
  model, args = annotated_models()[index]
  shapes = traverse_util.flatten_dict(
      nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))["params"], sep="/"
  )
  specs = logical_specs(model, *args)
  assert specs.keys() == shapes.keys()
  for path, spec in specs.items():
    assert len(spec) == len(shapes[path].shape), path
    assert set(spec) <= PARAM_AXES, (path, spec)
    assert any(name is not None for name in spec) or path == "head/bias", path  # classes


def test_gpt_logical_names():
  specs = logical_specs(GPT(VOCAB, max_len=16, **TINY), ids(0, (2, 8)))
  assert specs["token_embed/embedding"] == ("vocab", "embed")
  assert specs["token_pos/embedding"] == ("pos", "embed")
  assert specs["block0/self_attn/qkv/kernel"] == ("embed", None, "heads", "kv")
  assert specs["block0/self_attn/out/kernel"] == ("heads", "embed")
  assert specs["block0/mlp/fc1/kernel"] == ("embed", "mlp")
  assert specs["block0/mlp/fc2/kernel"] == ("mlp", "embed")
  assert specs["block1/ln2/scale"] == ("norm",)
  assert specs["head/kernel"] == ("embed", "vocab")
  scanned = logical_specs(GPT(VOCAB, max_len=16, scan_layers=True, **TINY), ids(0, (2, 8)))
  assert scanned["blocks/block/self_attn/qkv/kernel"] == ("layers", "embed", None, "heads", "kv")
  assert scanned["blocks/block/ln1/bias"] == ("layers", "norm")
  assert scanned["token_embed/embedding"] == ("vocab", "embed")


def test_boxed_and_unboxed_variables_give_the_same_logits():
  model, (src,) = annotated_models()[0]
  boxed = model.init(jax.random.key(0), src)
  assert isinstance(boxed["params"]["head"]["kernel"], nn.Partitioned)
  np.testing.assert_array_equal(model.apply(boxed, src), model.apply(nn.meta.unbox(boxed), src))


@pytest.mark.parametrize("index", [0, 2, 3, 4])
def test_logical_constraints_under_a_mesh_and_rules_keep_the_numbers(index):
  # Vocabularies that the tensor axis divides: jit outputs (the initialised parameters) must
  # split evenly.
  model, args = annotated_models(vocab=16, tgt_vocab=12)[index]
  variables = nn.meta.unbox(model.init(jax.random.key(0), *args))
  want = model.apply(variables, *args)
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    assert "sharding_constraint" in jax.jit(model.apply).lower(variables, *args).as_text()
    got = jax.jit(model.apply)(variables, *args)
    initialised = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), *args))
  np.testing.assert_allclose(got, want, atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), initialised, variables)
