"""jaxmodels: flax.linen models, one training engine, sweeps and Cloud TPU tooling.

Importing it (or any submodule) changes nothing in the process: the entry points set XLA_FLAGS
and the allocator themselves (jaxmodels._env).
"""

__version__ = "0.1.0"
