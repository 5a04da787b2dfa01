"""Throughput helpers: the in-run matmul peak and model FLOPs utilisation."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def matmul_peak_flops(n: int = 1024, seconds: float = 0.3) -> float:
  """FLOP/s of a float32 n×n matmul on the default device, best of repeated timings."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  deadline = time.perf_counter() + seconds
  while time.perf_counter() < deadline:
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def compiled_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled computation (counts a scan body once: prefer analytic counts)."""
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    flops = float(cost.get("flops", 0.0))
    return flops if flops > 0 else None
  except Exception:  # not every backend reports costs
    return None
