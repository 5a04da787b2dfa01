"""Tests see 8 fake CPU devices; set before jax is imported anywhere."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The test process is an entry point too: the XLA:CPU defaults the commands run with.
from jaxmodels import _env  # noqa: E402  (after the device count, before jax starts)

_env.configure_xla_cpu()
# Runs in tests share one persistent compilation cache, away from the user's.
os.environ.setdefault(
    "JAXMODELS_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jaxmodels-tests-xla-cache")
)
