"""Process-level settings that must be made before jax initialises its backends (XLA flags) or
before the process starts (the memory allocator).

Only the command-line entry points (experiments, benchmarks, predict) call these, first thing:
importing any jaxmodels module leaves the process environment alone.
"""

from collections.abc import Sequence
import ctypes.util
import importlib.util
import math
import os
import sys

_FLAG = "--xla_force_host_platform_device_count"

# XLA:CPU defaults, each measured on a 2-core AVX-512 host (README, Performance): convolutions
# through Eigen's multi-threaded kernels instead of YNNPACK's made ResNet-18 steps 1.2-1.45x
# faster (one device and pmap); YNNPACK stays on for dots (LSTM steps are 2x slower without).
# The scheduler that orders independent ops to run side by side made them fight over the two
# cores; without it GPT steps ran 10-15% faster, ResNet-18 5%, the LSTM -2% to +9%.
CPU_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
)

# jemalloc with page purging off: XLA:CPU allocates each step's temporaries (1.5 GB for the GPT
# benchmark) afresh, and glibc maps and unmaps blocks that large every step, so the kernel spent
# ~16% of a GPT step zeroing new pages; with jemalloc keeping them, under 1%.
ALLOCATOR_ENV = "JAXMODELS_ALLOCATOR"
_JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


HOST_DEVICES_ENV = "JAXMODELS_HOST_DEVICES"


class EnvError(ValueError):
  """An environment variable of jaxmodels holds a value it cannot use; the message names it."""


def configure_process(batch_sizes: Sequence[int] = ()) -> None:
  """The XLA settings of an entry point: host devices split per core (a count that divides each
  of `batch_sizes`), then the CPU defaults and the platform."""
  configure_host_devices(batch_sizes)
  configure_xla_cpu()
  configure_platforms()


def configure_host_devices(batch_sizes: Sequence[int] = ()) -> None:
  """Split the host CPU into one XLA device per usable core, unless the user chose otherwise.

  Data parallelism over host devices keeps every core busy where one device's kernels would not:
  measured with CPU_FLAGS, pmap over 2 devices ran the ResNet-18 step 1.11x and the GPT step 1.14x
  faster than one device. JAXMODELS_HOST_DEVICES=N chooses N (1 disables the split); by default
  the count is the largest one up to the CPUs this process may use that divides every batch
  size in `batch_sizes`, so a valid command never fails on a machine with an odd core count.
  Has no effect once jax has created its backends, and none on GPU/TPU devices.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if _FLAG in flags or "jax" in sys.modules and _backends_ready():
    return
  requested, cpus = os.environ.get(HOST_DEVICES_ENV), usable_cpus()
  count = host_device_count(requested, cpus, batch_sizes)
  if count < cpus and not requested:
    print(
        f"jaxmodels: {count} host CPU device(s) of {cpus} usable CPUs, the largest count that "
        f"divides the batch sizes {sorted(set(batch_sizes))} ({HOST_DEVICES_ENV} chooses)",
        file=sys.stderr,
        flush=True,
    )
  if count > 1:
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={count}".strip()


def host_device_count(requested: str | None, cpus: int, batch_sizes: Sequence[int] = ()) -> int:
  """JAXMODELS_HOST_DEVICES when set (a positive integer), else the largest count <= `cpus` that
  divides every positive size in `batch_sizes`. Raises EnvError naming the variable."""
  if requested:
    try:
      count = int(requested)
    except ValueError:
      count = 0
    if count < 1:
      raise EnvError(
          f"{HOST_DEVICES_ENV}={requested!r}: give a positive number of host CPU devices "
          "(1 turns the split off), or unset it to use one per core."
      )
    return count
  sizes = [b for b in batch_sizes if b > 0]
  return max(d for d in range(1, max(cpus, 1) + 1) if all(b % d == 0 for b in sizes))


def usable_cpus() -> int:
  """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  quota = _cgroup_cpu_quota("/sys/fs/cgroup/cpu.max")
  return max(1, min(cpus or 1, quota or cpus or 1))


def _cgroup_cpu_quota(path: str) -> int | None:
  """Whole CPUs allowed by a cgroup v2 `cpu.max` ("QUOTA PERIOD", or "max PERIOD": none)."""
  try:
    with open(path, encoding="ascii") as f:
      quota, period = f.read().split()[:2]
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
  except (OSError, ValueError):
    return None


def configure_platforms() -> None:
  """Keeps jax off the TPU backend on a host without TPUs or GPUs when libtpu is installed.

  With the `tpu` extra (libtpu, also used by `python -m jaxmodels.aot` on any host), jax would
  otherwise load libtpu at its first device query on every CPU host: 0.15 s and a page of libtpu
  warnings. An explicit JAX_PLATFORMS wins.
  """
  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
    return
  try:
    from jax._src import hardware_utils

    if hardware_utils.num_available_tpu_chips_and_device_id()[0] or (
        hardware_utils.has_visible_nvidia_gpu()
    ):
      return
  except Exception:  # pragma: no cover - private API moved: leave jax's choice alone
    return
  if _backends_ready():
    return
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax

  jax.config.update("jax_platforms", "cpu")


def configure_xla_cpu() -> None:
  """Adds CPU_FLAGS to XLA_FLAGS, each unless XLA_FLAGS already sets that flag (yours win).

  JAXMODELS_XLA_DEFAULTS=0 adds none. The flags only affect XLA's CPU backend.
  """
  if os.environ.get("JAXMODELS_XLA_DEFAULTS", "1") == "0":
    return
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f for f in CPU_FLAGS if f.split("=")[0] not in flags]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


def find_jemalloc() -> str | None:
  """The path or soname of jemalloc when the system has it (Debian: libjemalloc2), else None."""
  for path in (
      "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
      "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
      "/usr/lib64/libjemalloc.so.2",
  ):
    if os.path.exists(path):
      return path
  return ctypes.util.find_library("jemalloc")


def allocator_env(environ: dict[str, str]) -> dict[str, str] | None:
  """The environment to restart this process with under jemalloc, or None when no restart is due:
  already preloaded, turned off (JAXMODELS_ALLOCATOR=system), or jemalloc not installed."""
  choice = environ.get(ALLOCATOR_ENV, "jemalloc")
  if choice not in ("jemalloc", "system"):
    raise ValueError(f"{ALLOCATOR_ENV}={choice!r}: valid values are 'jemalloc' and 'system'")
  if choice == "system" or "jemalloc" in environ.get("LD_PRELOAD", ""):
    return None
  lib = find_jemalloc()
  if lib is None:
    return None
  preload = " ".join(p for p in (lib, environ.get("LD_PRELOAD", "")) if p)
  return dict(
      environ,
      LD_PRELOAD=preload,
      MALLOC_CONF=environ.get("MALLOC_CONF", _JEMALLOC_CONF),
      **{ALLOCATOR_ENV: "jemalloc"},
  )


def restart_with_allocator() -> None:
  """Re-executes this command line under jemalloc when allocator_env says so (Linux only).

  Called first thing by the command-line entry points (experiments, benchmarks, sweeps), never
  on import: an interactive session or a test keeps the allocator it started with.
  """
  if not sys.platform.startswith("linux") or not getattr(sys, "orig_argv", None):
    return
  env = allocator_env(dict(os.environ))
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def restart_before_imports(package: str) -> None:
  """restart_with_allocator for the command `python -m <package>.<module>`, from `package`'s
  `__init__`: the restart then happens before the module's own imports (jax, flax, optax,
  orbax: 3.9 s of CPU time for shakespeare_gpt on the 2-core host under load, 2026-12-02)
  instead of repeating them after the exec.

  Does nothing in any other process (an import from a test, a notebook, `python -c`): runpy
  sets sys.argv[0] to '-m' only while it imports the packages of the module it will run.
  A bad JAXMODELS_ALLOCATOR is left for the entry point to report as its error.
  """
  argv = list(getattr(sys, "orig_argv", []))
  if sys.argv[:1] != ["-m"] or "-m" not in argv[:-1]:
    return
  if not argv[argv.index("-m") + 1].startswith(package + "."):
    return
  try:
    restart_with_allocator()
  except ValueError:
    pass


def _backends_ready() -> bool:
  try:
    from jax._src import xla_bridge

    return bool(xla_bridge._backends)  # pylint: disable=protected-access
  except Exception:  # pragma: no cover - private API moved: assume initialised
    return True
