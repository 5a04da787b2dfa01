"""What each sweep worker's trials run on: a share of this machine's cores, or one GPU.

A trial learns its share through its core affinity (set by _launch.py) and its environment
(trial_env): the thread counts of the numerical libraries, CUDA_VISIBLE_DEVICES for its GPU. Its
host device count is the experiment's own choice (jaxmodels._env: the largest count up to its
cores that divides the batch), so a batch size that does not divide the share still runs.
"""

from __future__ import annotations

from collections.abc import Sequence
import os
import shutil
import subprocess

from jaxmodels import _env

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "NUMEXPR_MAX_THREADS",
)
_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def available_cores() -> list[int]:
  """The cores this process may run on: its affinity, as many as a cgroup CPU quota allows."""
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
  cores = cores or list(range(os.cpu_count() or 1))
  return cores[: _env.usable_cpus()]


def detect_gpus() -> list[str]:
  """GPU ids a trial may be given: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
  if not shutil.which("nvidia-smi"):
    return []
  try:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [line.strip() for line in out.splitlines() if line.strip()]


def slot_resources(
    slot: int, workers: int, cores: list[int], gpus: list[str]
) -> tuple[list[int], str | None]:
  """Cores and GPU of worker `slot`: an even share of the cores, one GPU round-robin."""
  share = max(1, len(cores) // workers)
  mine = [cores[(slot * share + j) % len(cores)] for j in range(share)]
  return mine, (gpus[slot % len(gpus)] if gpus else None)


def trial_env(
    base: dict[str, str], cores: int, gpu: str | None, shared_gpu: bool, pythonpath: str
) -> dict[str, str]:
  """The environment of a trial subprocess: `cores` threads, its GPU. The sweep's own host
  device count (an XLA_FLAGS entry) is dropped; JAXMODELS_HOST_DEVICES, if set, passes."""
  env = dict(base)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_FLAG)]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  for var in THREAD_VARS:
    env[var] = str(cores)
  env["PYTHONUNBUFFERED"] = "1"
  env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, base.get("PYTHONPATH")) if p)
  if gpu is not None:
    env["CUDA_VISIBLE_DEVICES"] = gpu
    if shared_gpu:
      env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  return env


def trial_devices(cores: int, gpu: str | None, batch_sizes: Sequence[int]) -> int:
  """The devices a trial's jax sees: its one GPU, else the host devices an experiment splits
  its `cores` into for these batch sizes (jaxmodels._env). EnvError for a bad
  JAXMODELS_HOST_DEVICES."""
  if gpu is not None:
    return 1
  return _env.host_device_count(os.environ.get(_env.HOST_DEVICES_ENV), cores, batch_sizes)


def worker_slots(
    workers: int,
    pythonpath: str,
    cores: list[int] | None = None,
    gpus: list[str] | None = None,
) -> list[tuple[list[int], dict[str, str]]]:
  """(cores to pin, environment) of each worker's trials; no pinning with a single worker.
  `cores` and `gpus` default to available_cores() and detect_gpus()."""
  cores = available_cores() if cores is None else cores
  gpus = detect_gpus() if gpus is None else gpus
  slots = []
  for slot in range(workers):
    mine, gpu = slot_resources(slot, workers, cores, gpus)
    env = trial_env(dict(os.environ), len(mine), gpu, workers > len(gpus) > 0, pythonpath)
    slots.append((mine if workers > 1 else [], env))
  return slots
