"""jaxmodels: flax.linen models, one training engine, sweeps and Cloud TPU tooling."""
from jaxmodels import _env

_env.configure_host_devices()
_env.configure_xla_cpu()

__version__ = "0.1.0"
