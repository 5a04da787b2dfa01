"""Process-level XLA settings that must be made before jax initialises its backends."""
import os
import sys

_FLAG = "--xla_force_host_platform_device_count"


def configure_host_devices() -> None:
  """Split the host CPU into one XLA device per core, unless the user chose otherwise.

  XLA runs a convolution on one core; data parallelism over host devices is how a conv net uses
  every core. Set JAXMODELS_HOST_DEVICES=N to choose N (1 disables the split). Has no effect once
  jax has created its backends, and none on GPU/TPU devices.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if _FLAG in flags or "jax" in sys.modules and _backends_ready():
    return
  count = os.environ.get("JAXMODELS_HOST_DEVICES") or str(os.cpu_count() or 1)
  if int(count) > 1:
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={int(count)}".strip()


def _backends_ready() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge._backends)  # pylint: disable=protected-access
  except Exception:  # pragma: no cover - private API moved: assume initialised
    return True
