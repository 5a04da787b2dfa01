"""Recurrent models against plain NumPy loops over the textbook equations, padding invariance,
shapes, sampling against step-by-step decoding, gradients against finite differences, FLOPs."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from jaxmodels.models.rnn import (
    CELLS,
    Recurrent,
    RNNClassifier,
    RNNLanguageModel,
    SimpleRNNCell,
    recurrent_flops,
    reverse_time,
    sample,
)

B, T, F, H = 3, 5, 4, 6


def np_variables(model, *args, seed=0, dtype=None, **kw):
  """Random variables with the model's real structure, drawn by NumPy (non-zero biases too)."""
  rng = np.random.default_rng(seed)

  def draw(leaf):
    fan_in = leaf.shape[0] if leaf.ndim > 1 else 4
    value = rng.normal(size=leaf.shape) / math.sqrt(fan_in)
    return jnp.asarray(value, dtype or leaf.dtype)

  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kw))
  return jax.tree.map(draw, abstract)


@functools.cache
def _jitted(model):
  return jax.jit(model.apply, static_argnames=("train", "return_carry"))


def apply(model, variables, *args, **kw):
  """model.apply compiled as one program: much faster here than op-by-op dispatch."""
  return _jitted(model)(variables, *args, **kw)


def inputs(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ---------- NumPy references: the textbook equations, one step at a time


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def np_step(cell, p, x, carry):
  """One step of `cell` with flax-layout parameters `p` (the 'cell' dict), in float64."""
  k = lambda n: np.asarray(p[n]["kernel"], np.float64)
  b = lambda n: np.asarray(p[n]["bias"], np.float64)
  if cell == "rnn":  # h' = tanh(W_hh h + W_xh x + b_h)
    h = np.tanh(x @ k("i") + b("i") + carry @ k("h"))
    return h, h
  if cell == "lstm":
    c, h = carry
    i = sigmoid(x @ k("ii") + h @ k("hi") + b("hi"))
    f = sigmoid(x @ k("if") + h @ k("hf") + b("hf"))
    g = np.tanh(x @ k("ig") + h @ k("hg") + b("hg"))
    o = sigmoid(x @ k("io") + h @ k("ho") + b("ho"))
    c = f * c + i * g
    h = o * np.tanh(c)
    return (c, h), h
  h = carry  # GRU
  r = sigmoid(x @ k("ir") + b("ir") + h @ k("hr"))
  z = sigmoid(x @ k("iz") + b("iz") + h @ k("hz"))
  n = np.tanh(x @ k("in") + b("in") + r * (h @ k("hn") + b("hn")))
  h = (1 - z) * n + z * h
  return h, h


def np_direction(cell, p, xs, hidden):
  """Runs one direction over xs [T, F] from a zero state; returns (outputs [T, H], final h)."""
  h = np.zeros(hidden)
  carry = (h, h) if cell == "lstm" else h
  outs = []
  for x in xs:
    carry, y = np_step(cell, p, x, carry)
    outs.append(y)
  final = carry[1] if cell == "lstm" else carry
  return np.array(outs).reshape(len(xs), hidden), final


def np_recurrent(cell, params, x, lengths, num_layers=1, bidirectional=False):
  """Per example: truncate to its length, run every layer and direction, pad outputs with 0."""
  x = np.asarray(x, np.float64)
  dirs = ("fwd", "bwd") if bidirectional else ("fwd",)
  outputs, finals = np.zeros(x.shape[:2] + (len(dirs) * H,)), []
  for b in range(x.shape[0]):
    seq = x[b, : lengths[b]]
    for layer in range(num_layers):
      outs, last = [], []
      for d in dirs:
        p = params[f"layer{layer}_{d}"]["cell"]
        o, f = np_direction(cell, p, seq if d == "fwd" else seq[::-1], H)
        outs.append(o if d == "fwd" else o[::-1])
        last.append(f)
      seq = np.concatenate(outs, axis=-1)
    outputs[b, : lengths[b]] = seq
    finals.append(np.concatenate(last))
  return outputs, np.array(finals)


# ---------- the Elman cell


def test_simple_rnn_cell_with_output_projection_matches_numpy():
  cell = SimpleRNNCell(H, output_features=2)
  x = inputs((B, T, F))
  rnn = nn.RNN(cell, return_carry=True)
  variables = np_variables(rnn, x)
  final, ys = apply(rnn, variables, x)
  p = variables["params"]["cell"]
  w_hy, b_y = np.asarray(p["o"]["kernel"]), np.asarray(p["o"]["bias"])
  for b in range(B):
    hs, last = np_direction("rnn", p, np.asarray(x[b], np.float64), H)
    np.testing.assert_allclose(ys[b], hs @ w_hy + b_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(final[b], last, rtol=1e-5, atol=1e-5)
  assert ys.shape == (B, T, 2) and final.shape == (B, H)


def test_simple_rnn_cell_interface():
  cell = SimpleRNNCell(H)
  carry = cell.initialize_carry(jax.random.key(0), (B, F))
  assert carry.shape == (B, H) and not np.any(np.asarray(carry))
  assert cell.num_feature_axes == 1
  variables = np_variables(cell, carry, inputs((B, F)))
  assert set(variables["params"]) == {"i", "h"}
  new, y = apply(cell, variables, carry, inputs((B, F)))
  np.testing.assert_array_equal(new, y)


# ---------- layers against the textbook equations


@pytest.mark.parametrize("impl", ["fused", "flax"])
@pytest.mark.parametrize("cell", CELLS)
def test_stacked_bidirectional_with_lengths_matches_numpy(cell, impl):
  model = Recurrent(cell, H, num_layers=2, bidirectional=True, impl=impl)
  x = inputs((4, T, F))
  lengths = jnp.array([T, 3, 1, 0])
  variables = np_variables(model, x, lengths)
  outputs, final = apply(model, variables, x, lengths)
  ref_out, ref_final = np_recurrent(cell, variables["params"], x, np.asarray(lengths), 2, True)
  assert outputs.shape == (4, T, 2 * H) and final.shape == (4, 2 * H)
  np.testing.assert_allclose(outputs, ref_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(final, ref_final, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_fused_and_flax_impls_share_parameters(cell):
  x, lengths = inputs((B, T, F)), jnp.array([T, 2, 4])
  fused = Recurrent(cell, H, num_layers=2, bidirectional=True, impl="fused")
  v_fused = jax.eval_shape(fused.init, jax.random.key(3), x, lengths)
  v_flax = jax.eval_shape(fused.clone(impl="flax").init, jax.random.key(3), x, lengths)
  assert jax.tree.structure(v_fused) == jax.tree.structure(v_flax)
  assert jax.tree.map(lambda a: a.shape, v_fused) == jax.tree.map(lambda a: a.shape, v_flax)


def test_lstm_parameters_run_in_flax_lstm_cells():
  """The fused layer's 'cell' parameters are valid nn.LSTMCell / nn.OptimizedLSTMCell ones."""
  x = inputs((B, T, F))
  model = Recurrent("lstm", H)
  variables = np_variables(model, x)
  outputs, _ = apply(model, variables, x)
  for cell in (nn.LSTMCell(H), nn.OptimizedLSTMCell(H)):
    ref = apply(nn.RNN(cell), {"params": variables["params"]["layer0_fwd"]}, x)
    np.testing.assert_allclose(outputs, ref, rtol=1e-5, atol=1e-5)


def test_reverse_time_keeps_padding_at_the_end():
  x = jnp.arange(8).reshape(4, 2)  # [T=4, B=2]
  out = reverse_time(x, jnp.array([2, 4]))
  np.testing.assert_array_equal(out[:, 0], [2, 0, 6, 4])  # real part [0, 2] reversed first
  np.testing.assert_array_equal(out[:, 1], [7, 5, 3, 1])
  np.testing.assert_array_equal(reverse_time(out, jnp.array([2, 4])), x)


# ---------- padding never leaks into real positions or the final state


@pytest.mark.parametrize(
    "cell,bidirectional,impl",
    [(c, True, "flax") for c in CELLS] + [("lstm", False, "flax"), ("gru", True, "fused")],
)
def test_padding_does_not_change_outputs_or_final_state(cell, bidirectional, impl):
  model = Recurrent(cell, H, num_layers=2, bidirectional=bidirectional, impl=impl)
  x = inputs((4, T, F))
  lengths = jnp.array([T, 3, 1, 0])
  pad = jnp.arange(T)[None, :, None] >= lengths[:, None, None]
  x2 = jnp.where(pad, 100 * inputs((4, T, F), seed=9), x)
  variables = np_variables(model, x, lengths)
  out1, final1 = apply(model, variables, x, lengths)
  out2, final2 = apply(model, variables, x2, lengths)
  np.testing.assert_allclose(out1, out2, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(final1, final2, rtol=1e-6, atol=1e-6)
  assert not np.any(np.asarray(out1)[np.asarray(pad[..., 0])])  # zeros at padding
  assert not np.any(np.asarray(final1)[3])  # an empty sequence keeps the zero state
  # Without lengths the padding does matter, so the comparison above can fail.
  assert not np.allclose(apply(model, variables, x)[1], apply(model, variables, x2)[1])


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_classifier_ignores_tokens_after_length(cell):
  model = RNNClassifier(
      vocab_size=13, num_classes=3, embed_dim=5, hidden_size=H, cell=cell, bidirectional=True
  )
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, 13, size=(4, T)), jnp.int32)
  lengths = jnp.array([T, 3, 1, 2], jnp.int32)
  pad = jnp.arange(T)[None, :] >= lengths[:, None]
  padded = jnp.where(pad, 0, tokens)
  garbage = jnp.where(pad, jnp.asarray(rng.integers(1, 13, size=(4, T)), jnp.int32), tokens)
  variables = np_variables(model, padded, lengths)
  logits = apply(model, variables, padded, lengths)
  assert logits.shape == (4, 3) and logits.dtype == jnp.float32
  np.testing.assert_allclose(apply(model, variables, garbage, lengths), logits, atol=1e-6)
  # lengths=None counts the non-zero tokens.
  np.testing.assert_allclose(apply(model, variables, padded), logits, atol=1e-6)


# ---------- classifier and language model: shapes, dtypes, dropout, carried state


def test_classifier_uses_final_state_of_both_directions():
  model = RNNClassifier(
      vocab_size=11, num_classes=4, embed_dim=5, hidden_size=H, cell="gru", bidirectional=True
  )
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, 11, size=(B, T)), jnp.int32)
  lengths = jnp.array([T, 2, 4], jnp.int32)
  variables = np_variables(model, tokens, lengths)
  p = variables["params"]
  x = np.asarray(p["embed"]["embedding"])[np.asarray(tokens)]
  _, final = np_recurrent("gru", p["rnn"], x, np.asarray(lengths), 1, True)
  expected = final @ np.asarray(p["head"]["kernel"]) + np.asarray(p["head"]["bias"])
  np.testing.assert_allclose(
      apply(model, variables, tokens, lengths), expected, rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_classifier_pools_the_outputs_over_real_positions(pooling):
  model = RNNClassifier(
      vocab_size=11, num_classes=4, embed_dim=5, hidden_size=H, bidirectional=True, pooling=pooling
  )
  tokens = jnp.asarray(np.random.default_rng(3).integers(1, 11, size=(B, T)), jnp.int32)
  lengths = jnp.array([T, 2, 0], jnp.int32)
  variables = np_variables(model, tokens, lengths)
  p = variables["params"]
  x = np.asarray(p["embed"]["embedding"])[np.asarray(tokens)]
  outputs, _ = np_recurrent("lstm", p["rnn"], x, np.asarray(lengths), 1, True)
  pooled = np.zeros((B, 2 * H))
  for b, n in enumerate(np.asarray(lengths)):
    if n:
      pooled[b] = outputs[b, :n].max(0) if pooling == "max" else outputs[b, :n].mean(0)
  expected = pooled @ np.asarray(p["head"]["kernel"]) + np.asarray(p["head"]["bias"])
  np.testing.assert_allclose(
      apply(model, variables, tokens, lengths), expected, rtol=1e-5, atol=1e-5
  )
  with pytest.raises(ValueError, match="unknown pooling 'last'"):
    RNNClassifier(vocab_size=11, num_classes=4, pooling="last").init(jax.random.key(0), tokens)


def test_language_model_shapes_and_dtypes():
  model = RNNLanguageModel(
      vocab_size=17, embed_dim=5, hidden_size=H, num_layers=2, dtype=jnp.bfloat16
  )
  ids = jnp.ones((B, T), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), ids)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract))
  variables = np_variables(model, ids)
  logits = apply(model, variables, ids)
  assert logits.shape == (B, T, 17) and logits.dtype == jnp.float32


def test_language_model_continues_from_carried_state():
  model = RNNLanguageModel(vocab_size=17, embed_dim=5, hidden_size=H, num_layers=2)
  ids = jnp.asarray(np.random.default_rng(2).integers(0, 17, size=(B, 7)), jnp.int32)
  variables = np_variables(model, ids)
  full = apply(model, variables, ids)
  first, carry = apply(model, variables, ids[:, :4], return_carry=True)
  second = apply(model, variables, ids[:, 4:], initial_carry=carry)
  np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), full, rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
  model = RNNClassifier(
      vocab_size=11, num_classes=3, embed_dim=5, hidden_size=H, num_layers=2, dropout_rate=0.5
  )
  tokens = jnp.ones((B, T), jnp.int32)
  variables = np_variables(model, tokens)
  evals = [apply(model, variables, tokens) for _ in range(2)]
  np.testing.assert_array_equal(evals[0], evals[1])
  train = [
      apply(model, variables, tokens, train=True, rngs={"dropout": jax.random.key(i)})
      for i in range(2)
  ]
  assert not np.allclose(train[0], train[1]) and not np.allclose(train[0], evals[0])


# ---------- sampling


def _greedy_reference(model, variables, prompt, num_steps):
  """Argmax decoding that reruns the full model on the whole prefix each step (no state).

  The prefix is right-padded to the final length so that one compiled program serves every
  step; the model is causal, so the logits at position t - 1 see only ids[:, :t].
  """
  start = prompt.shape[1]
  ids = jnp.pad(prompt, ((0, 0), (0, num_steps)), constant_values=7)
  for t in range(start, start + num_steps):
    nxt = jnp.argmax(apply(model, variables, ids)[:, t - 1], axis=-1).astype(jnp.int32)
    ids = ids.at[:, t].set(nxt)
  return ids


def test_greedy_sampling_equals_stepwise_argmax():
  model = RNNLanguageModel(vocab_size=11, embed_dim=5, hidden_size=H, num_layers=2)
  prompt = jnp.asarray(np.random.default_rng(3).integers(0, 11, size=(B, 3)), jnp.int32)
  variables = np_variables(model, prompt, dtype=jnp.float32)
  variables = jax.tree.map(lambda p: 3 * p, variables)  # peaked logits: argmax is unambiguous
  expected = _greedy_reference(model, variables, prompt, 5)
  greedy = sample(model, variables, prompt, 5, jax.random.key(0), temperature=0.0)
  top1 = sample(model, variables, prompt, 5, jax.random.key(1), temperature=1.0, top_k=1)
  np.testing.assert_array_equal(greedy, expected)
  np.testing.assert_array_equal(top1, expected)
  assert greedy.shape == (B, 8) and greedy.dtype == jnp.int32


def test_top_k_sampling_stays_in_top_k_and_varies():
  model = RNNLanguageModel(vocab_size=11, embed_dim=5, hidden_size=H, num_layers=1)
  prompt = jnp.asarray(np.random.default_rng(4).integers(0, 11, size=(8, 2)), jnp.int32)
  variables = np_variables(model, prompt)
  draws = [sample(model, variables, prompt, 4, jax.random.key(s), top_k=3) for s in range(2)]
  for ids in draws:
    np.testing.assert_array_equal(ids[:, :2], prompt)
    all_logits = np.asarray(apply(model, variables, ids))  # causal: t - 1 sees ids[:, :t]
    for t in range(2, 6):
      logits = all_logits[:, t - 1]
      top3 = np.argsort(-logits, axis=-1)[:, :3]
      assert all(int(ids[b, t]) in top3[b] for b in range(8))
  assert not np.array_equal(draws[0], draws[1])


def test_sampling_follows_the_tempered_softmax():
  model = RNNLanguageModel(vocab_size=5, embed_dim=4, hidden_size=H, num_layers=1)
  prompt = jnp.full((4000, 2), 3, jnp.int32)
  variables = np_variables(model, prompt[:1])
  variables = jax.tree.map(lambda p: 2 * p, variables)
  temperature = 0.7
  logits = np.asarray(apply(model, variables, prompt[:1])[0, -1], np.float64) / temperature
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  ids = sample(model, variables, prompt, 1, jax.random.key(5), temperature=temperature)
  freq = np.bincount(np.asarray(ids[:, 2]), minlength=5) / len(ids)
  np.testing.assert_allclose(freq, probs, atol=0.03)


# ---------- gradients against finite differences (float64)


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_finite_differences(cell):
  with jax.enable_x64(True):
    # impl='fused' has the hand-written VJP; the flax path is compared with it below.
    model = Recurrent(
        cell, 3, bidirectional=True, impl="fused", dtype=jnp.float64, param_dtype=jnp.float64
    )
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 2)))
    lengths = jnp.array([4, 2])
    params = np_variables(model, x, lengths, seed=1)["params"]
    assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(params))
    weights = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 6)))

    def loss(p, xx):
      out, final = apply(model, {"params": p}, xx, lengths)
      return jnp.sum(out * weights) + jnp.sum(jnp.sin(final))

    loss = jax.jit(loss)
    assert bool(jnp.isfinite(loss(params, x)))
    check_grads(loss, (params, x), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_fused_gradients_equal_flax_autodiff(cell):
  """The hand-written VJP of the fused scan against JAX's autodiff of nn.RNN, same parameters."""
  fused = Recurrent(cell, H, bidirectional=True, impl="fused")
  flax_impl = fused.clone(impl="flax")
  x, lengths = inputs((4, T, F)), jnp.array([T, 3, 1, 0])
  variables = np_variables(fused, x, lengths)
  weights = inputs((4, T, 2 * H), seed=5)

  def grads(model):
    def loss(v, xx):
      out, final = model.apply(v, xx, lengths)
      return jnp.sum(out * weights) + jnp.sum(jnp.tanh(final))

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)

  expected = grads(flax_impl)
  assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(expected))
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads(fused), expected
  )


@pytest.mark.parametrize("cell", CELLS)
def test_fused_gradient_of_the_initial_carry_equals_flax_autodiff(cell):
  fused = Recurrent(cell, H, num_layers=2, impl="fused")
  x = inputs((B, T, F))
  variables = np_variables(fused, x)
  _, _, carries = fused.apply(variables, x, return_carry=True)
  start = jax.tree.map(lambda c: c + 0.5, carries)

  def grads(model):
    def loss(c):
      out, final, _ = model.apply(variables, x, initial_carry=c, return_carry=True)
      return jnp.sum(out**2) + jnp.sum(final)

    return jax.jit(jax.grad(loss))(start)

  expected = grads(fused.clone(impl="flax"))
  assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(expected))
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads(fused), expected
  )


# ---------- FLOPs


def _matmul_flops(jaxpr) -> float:
  """2 * MACs of every dot_general in a jaxpr, loop bodies counted once per iteration."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      k = math.prod(eqn.invars[0].aval.shape[d] for d in contract)
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
    times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          total += times * _matmul_flops(sub)
  return total


@pytest.mark.parametrize("impl", ["fused", "flax"])
@pytest.mark.parametrize(
    "cell,layers,bidirectional", [("lstm", 2, True), ("gru", 1, False), ("rnn", 2, False)]
)
def test_forward_flops_match_counted_matmuls(cell, layers, bidirectional, impl):
  clf = RNNClassifier(
      vocab_size=13,
      num_classes=3,
      embed_dim=5,
      hidden_size=H,
      cell=cell,
      num_layers=layers,
      bidirectional=bidirectional,
      impl=impl,
  )
  lm = RNNLanguageModel(
      vocab_size=13, embed_dim=5, hidden_size=H, cell=cell, num_layers=layers, impl=impl
  )
  tokens = jnp.ones((B, T), jnp.int32)
  for model, args in ((clf, (tokens, jnp.full((B,), T))), (lm, (tokens,))):
    variables = jax.eval_shape(lambda m=model, a=args: m.init(jax.random.key(0), *a))
    jaxpr = jax.make_jaxpr(lambda v, m=model, a=args: m.apply(v, *a))(variables).jaxpr
    assert _matmul_flops(jaxpr) == pytest.approx(B * model.flops_per_example((T,)))


def test_recurrent_flops_by_hand():
  # LSTM, one layer: T * 2 * (F*4H + H*4H); the second of two bidirectional layers reads 2H.
  assert recurrent_flops("lstm", 10, 20, seq_len=7) == 7 * 2 * (10 * 80 + 20 * 80)
  two = recurrent_flops("gru", 10, 20, seq_len=7, num_layers=2, bidirectional=True)
  assert two == 2 * 7 * 2 * (10 * 60 + 20 * 60) + 2 * 7 * 2 * (40 * 60 + 20 * 60)
  clf = RNNClassifier(vocab_size=100, num_classes=2, embed_dim=10, hidden_size=20, cell="rnn")
  assert clf.flops_per_example((7,)) == 7 * 2 * (10 * 20 + 20 * 20) + 2 * 20 * 2
