"""Throughput helpers: the in-run matmul peak and model FLOPs utilisation."""

from __future__ import annotations

import os
import time

import jax
from jax.experimental.compilation_cache import compilation_cache
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


def process_peak_flops(seconds: float = 0.3) -> float:
  """The matmul peak of this process's devices: on CPU the host devices share the cores, so one
  device's matmul (which uses every core) is the peak; accelerators add up."""
  peak = matmul_peak_flops(seconds=seconds)
  return peak if jax.default_backend() == "cpu" else peak * jax.local_device_count()


def compiled_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled computation (a scan body counts once: prefer analytic ones)."""
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    flops = float(cost.get("flops", 0.0))
    return flops if flops > 0 else None
  except Exception:  # not every backend reports costs
    return None


CACHE_MAX_BYTES = 4 * 2**30


def enable_compilation_cache(cache_dir: str | None = None, min_compile_secs: float = 0.0) -> str:
  """Turns on JAX's persistent compilation cache in `cache_dir`; returns the directory used.

  A warm cache skips XLA compilation of every step function and of the state initialisation, so
  a restarted or resumed run reaches its first step sooner. The default directory is
  $JAXMODELS_CACHE_DIR or ~/.cache/jaxmodels/xla. Computations that compiled faster than
  `min_compile_secs` are not written (0 caches everything). A later call with another directory
  switches the cache for compilations still to come.
  """
  cache_dir = (
      cache_dir
      or os.environ.get("JAXMODELS_CACHE_DIR")
      or os.path.join(os.path.expanduser("~"), ".cache", "jaxmodels", "xla")
  )
  if "://" not in cache_dir:
    os.makedirs(cache_dir, exist_ok=True)
  if (
      jax.config.jax_compilation_cache_dir != cache_dir
      or not jax.config.jax_enable_compilation_cache
  ):
    compilation_cache.reset_cache()  # jax opens the cache once, at the first compilation
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  # A size limit turns on LRU eviction and, with it, a file lock around every read and write,
  # so that processes sharing the directory (sweep workers, tests) never read a half-written entry.
  jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
  return cache_dir


def disable_compilation_cache() -> None:
  """Compilations from now on neither read nor write the persistent cache."""
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()


class StepProfile:
  """A jax.profiler trace of `num_steps` training steps from step `first`, written under
  `logdir`/plugins/profile where TensorBoard's profile tab finds it (the workdir is the logdir)."""

  def __init__(self, logdir: str, first: int, num_steps: int, enabled: bool = True):
    self.logdir, self.first, self.last = logdir, first, first + num_steps
    self.enabled = enabled and num_steps > 0
    self.active = False

  def before_step(self, step: int) -> None:
    """Call with the number of steps done before dispatching the next one."""
    if self.enabled and step == self.first:
      jax.profiler.start_trace(self.logdir)
      self.active = True

  def after_step(self, step: int, outputs) -> None:
    """Call with the number of steps done; the trace ends once the last traced step finishes."""
    if self.active and step >= self.last:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


def process_start_time() -> float | None:
  """The time.time() at which this process started, from /proc (Linux), or None elsewhere.

  An exec keeps the process and its start time, so the allocator restart of an entry point
  (jaxmodels._env) and the interpreter's own start-up are counted.
  """
  try:
    with open("/proc/self/stat", encoding="ascii") as f:
      stat = f.read()
    with open("/proc/uptime", encoding="ascii") as f:
      uptime = f.read()
  except OSError:
    return None
  return time.time() - process_age_s(stat, uptime, os.sysconf("SC_CLK_TCK"))


def process_age_s(stat: str, uptime: str, ticks_per_s: int) -> float:
  """Seconds since a process started, from its /proc/<pid>/stat line and /proc/uptime: the
  22nd field of stat is the start in clock ticks after boot (counted after the command name in
  parentheses, which may itself hold spaces)."""
  fields = stat[stat.rindex(")") + 2 :].split()
  return float(uptime.split()[0]) - int(fields[19]) / ticks_per_s
