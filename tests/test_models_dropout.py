"""Dropout (jaxmodels.models.common): the mask's keep rate and independence, the scaling that keeps
the expectation, gradients, the deterministic switch, and the models' dropout streams."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.models.common import Dropout, dropout, keep_mask


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.13])
def test_keep_mask_keeps_at_the_rate_and_neighbours_are_independent(keep):
  mask = np.asarray(keep_mask(jax.random.key(0), keep, (400, 251)))  # an odd last axis
  assert mask.shape == (400, 251) and mask.dtype == bool
  sigma = np.sqrt(keep * (1 - keep) / mask.size)
  assert abs(mask.mean() - keep) < 5 * sigma
  # The two 16-bit halves of a word land side by side: they must not move together.
  pairs = mask[:, :250].reshape(400, 125, 2).astype(np.float64)
  assert abs(np.corrcoef(pairs[..., 0].ravel(), pairs[..., 1].ravel())[0, 1]) < 0.02
  rows = mask.astype(np.float64)  # nor rows (the leading axes are drawn apart)
  assert abs(np.corrcoef(rows[:-1].ravel(), rows[1:].ravel())[0, 1]) < 0.02
  assert not np.array_equal(mask, np.asarray(keep_mask(jax.random.key(1), keep, (400, 251))))


def test_dropout_keeps_the_expectation_and_its_gradient_is_the_scaled_mask():
  x = jnp.full((64, 513), 3.0)
  rng = jax.random.key(2)
  y, grad = np.asarray(dropout(x, 0.3, rng)), jax.grad(lambda v: dropout(v, 0.3, rng).sum())(x)
  keep = round(0.7 * 2**16) / 2**16
  kept = y != 0
  np.testing.assert_allclose(y[kept], 3.0 / keep, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), kept / keep, rtol=1e-6)
  assert abs(y.mean() - 3.0) < 5 * 3.0 * np.sqrt(0.3 / 0.7 / y.size)
  assert dropout(jnp.float32(2.0), 0.5, rng).shape == ()
  assert dropout(x.astype(jnp.bfloat16), 0.5, rng).dtype == jnp.bfloat16


def test_dropout_module_is_a_drop_in_for_flax():
  x = jnp.ones((8, 16))
  rngs = {"dropout": jax.random.key(0)}
  assert Dropout(0.5, deterministic=True).apply({}, x) is x
  assert Dropout(0.0).apply({}, x, deterministic=False, rngs=rngs) is x
  np.testing.assert_array_equal(Dropout(1.0).apply({}, x, deterministic=False, rngs=rngs), 0)
  dropped = Dropout(0.5).apply({}, x, deterministic=False, rngs=rngs)
  assert 0 < np.mean(np.asarray(dropped) == 0) < 1
  with pytest.raises(Exception, match="deterministic"):
    Dropout(0.5).apply({}, x, rngs=rngs)

  class Twice(nn.Module):
    @nn.compact
    def __call__(self, x):
      return Dropout(0.5)(x, False), Dropout(0.5)(x, False)

  a, b = Twice().apply({}, x, rngs=rngs)
  assert not np.array_equal(a, b)  # each layer draws its own mask
