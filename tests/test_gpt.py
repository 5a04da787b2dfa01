"""GPT: causality, padding, and cached generation against plain argmax decoding."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.models.transformer import GPT, generate

MODEL = GPT(vocab_size=17, model_dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=24)


def _variables(length=12):
  return MODEL.init(jax.random.PRNGKey(0), jnp.zeros((2, length), jnp.int32))


def test_changing_later_tokens_never_changes_earlier_logits():
  variables = _variables()
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 17)
  base = MODEL.apply(variables, ids)
  for t in (0, 5, 10):
    changed = ids.at[:, t + 1:].set((ids[:, t + 1:] + 3) % 17)
    out = MODEL.apply(variables, changed)
    np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-6)
    assert not np.allclose(out[:, t + 1:], base[:, t + 1:])


def test_padding_never_changes_real_positions():
  variables = _variables()
  ids = jax.random.randint(jax.random.PRNGKey(2), (2, 12), 1, 17)
  mask = jnp.array([[1] * 8 + [0] * 4, [1] * 12])
  base = MODEL.apply(variables, ids, attention_mask=mask)
  noisy = ids.at[0, 8:].set(5)
  out = MODEL.apply(variables, noisy, attention_mask=mask)
  np.testing.assert_allclose(out[0, :8], base[0, :8], atol=1e-6)


def test_cached_greedy_generation_equals_uncached_argmax_decoding():
  variables = _variables()
  prompt = jax.random.randint(jax.random.PRNGKey(3), (2, 5), 0, 17)
  cached = np.asarray(generate(MODEL, variables, prompt, 10, jax.random.PRNGKey(4),
                               temperature=0.0))
  ids = np.asarray(prompt)
  for _ in range(10):
    logits = MODEL.apply(variables, jnp.asarray(ids))
    ids = np.concatenate([ids, np.argmax(logits[:, -1], -1)[:, None]], axis=1)
  np.testing.assert_array_equal(cached, ids)
