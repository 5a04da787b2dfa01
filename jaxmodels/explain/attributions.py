"""Attribution maths: integrated gradients, saliency and a rank correlation to compare maps.

Pure functions of a scalar function `f` and its input; nothing here knows about models or figures.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
RULES = ("trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def path_points(steps: int, rule: str = "trapezoid") -> tuple[np.ndarray, np.ndarray]:
  """(alphas, weights) of a quadrature of an integral over [0, 1] with `steps` intervals.

  The weights sum to 1, so the weighted sum of gradients along the path is their average.
  """
  if steps < 1:
    raise ValueError(f"steps={steps}: integrated gradients needs at least 1 interval.")
  if rule == "trapezoid":
    alphas = np.linspace(0.0, 1.0, steps + 1)
    weights = np.full(steps + 1, 1.0 / steps)
    weights[[0, -1]] /= 2.0
  elif rule == "riemann_left":
    alphas, weights = np.arange(steps) / steps, np.full(steps, 1.0 / steps)
  elif rule == "riemann_right":
    alphas, weights = np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
  elif rule == "riemann_middle":
    alphas, weights = (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
  else:
    raise ValueError(f"rule={rule!r} is unknown; valid rules: {', '.join(RULES)}")
  return alphas.astype(np.float32), weights.astype(np.float32)


def integrated_gradients(
    f: Callable[[Array], Array],
    x: Array,
    baseline: Array,
    steps: int = 64,
    rule: str = "trapezoid",
) -> Array:
  """Integrated gradients of the scalar function `f` at `x` from `baseline` (Sundararajan et al.
  2017): (x - baseline) * integral over a in [0, 1] of grad f(baseline + a (x - baseline)).

  The integral is a quadrature with `steps` intervals (`path_points`); the attributions sum to
  f(x) - f(baseline) up to its error (completeness). `f` may sum a batch of independent examples'
  outputs: each example's attributions are then its own.
  """
  x = jnp.asarray(x)
  baseline = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
  alphas, weights = path_points(steps, rule)
  grad = jax.grad(f)
  delta = x - baseline

  def accumulate(total: Array, point: tuple[Array, Array]) -> tuple[Array, None]:
    alpha, weight = point
    return total + weight * grad(baseline + alpha * delta), None

  # One gradient at a time (a scan, not a vmap): memory stays that of one backward pass.
  total, _ = jax.lax.scan(
      accumulate, jnp.zeros_like(x), (jnp.asarray(alphas), jnp.asarray(weights))
  )
  return delta * total


def saliency(f: Callable[[Array], Array], x: Array) -> Array:
  """Plain gradient saliency (Simonyan et al. 2014): d f / d x at `x`, signed."""
  return jax.grad(f)(jnp.asarray(x))


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman rank correlation of two maps of the same size (flattened; ties get their mean
  rank), as Adebayo et al. 2018 compare attributions before and after re-randomising weights."""
  a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
  if a.shape != b.shape:
    raise ValueError(f"maps of {a.size} and {b.size} values cannot be compared.")
  ra, rb = _ranks(a), _ranks(b)
  ra, rb = ra - ra.mean(), rb - rb.mean()
  denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
  return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind="stable")
  ranks = np.empty(x.size, np.float64)
  ranks[order] = np.arange(x.size, dtype=np.float64)
  # Equal values share the mean of their ranks.
  values, inverse = np.unique(x, return_inverse=True)
  sums = np.bincount(inverse, weights=ranks, minlength=values.size)
  counts = np.bincount(inverse, minlength=values.size)
  return (sums / counts)[inverse]
