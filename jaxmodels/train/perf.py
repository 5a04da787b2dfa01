"""Throughput helpers: the in-run matmul peak and model FLOPs utilisation."""
from __future__ import annotations

import os
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


def enable_compilation_cache(cache_dir: str | None = None, min_compile_secs: float = 0.0) -> str:
  """Turns on JAX's persistent compilation cache in `cache_dir`; returns the directory used.

  A warm cache skips XLA compilation of every step function (and of the small computations of
  model initialisation), so a restarted or resumed run reaches its first step sooner. The default
  directory is $JAXMODELS_CACHE_DIR or ~/.cache/jaxmodels/xla. Computations that compiled faster
  than `min_compile_secs` are not written (0 caches everything). Call it before the first
  compilation; later calls only change the settings for compilations still to come.
  """
  cache_dir = (cache_dir or os.environ.get("JAXMODELS_CACHE_DIR")
               or os.path.join(os.path.expanduser("~"), ".cache", "jaxmodels", "xla"))
  if "://" not in cache_dir:
    os.makedirs(cache_dir, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return cache_dir
