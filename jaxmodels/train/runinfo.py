"""What summary.json records about the run besides its numbers: the experiment, the command line,
when it finished, the machine and the package versions, so a results table can be rebuilt from
workdirs alone (python -m jaxmodels.report)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from typing import Any

import jax

from jaxmodels import _env

# The distributions whose versions decide the numbers of a run.
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "grain",
    "tensorflow-datasets",
)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU's marketing name ('AMD EPYC 7B13'); platform.processor() where /proc has none."""
  try:
    with open(cpuinfo, encoding="utf-8", errors="replace") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
          return value.strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict[str, Any]:
  """The CPU, the cores this process may use, the devices jax trains on, and the system's load
  averages over the last 1, 5 and 15 minutes (the run's own threads count: a load well above the
  cores says that something else ran beside it)."""
  devices = jax.devices()
  load = (
      {"load_average": [round(x, 2) for x in os.getloadavg()]} if hasattr(os, "getloadavg") else {}
  )
  return {
      "cpu": cpu_model(),
      "cpus": _env.usable_cpus(),
      "platform": devices[0].platform,
      "device_kind": devices[0].device_kind,
      "num_devices": len(devices),
      "num_processes": jax.process_count(),
      "os": platform.platform(terse=True),
      **load,
  }


def versions() -> dict[str, str]:
  """Python's and the PACKAGES' versions (the ones installed; a missing one is left out)."""
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return out


def finished_now() -> str:
  """The UTC time in ISO 8601, to the second."""
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def facts(experiment: str, command: str | None) -> dict[str, Any]:
  """The summary.json keys that say what ran, where and with what: `experiment`, `command` (the
  command line, when the run came from one), `finished_at`, `machine`, `versions`."""
  out: dict[str, Any] = {"experiment": experiment}
  if command:
    out["command"] = command
  out.update(finished_at=finished_now(), machine=machine(), versions=versions())
  return out
