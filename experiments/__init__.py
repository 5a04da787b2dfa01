"""One module per experiment, each run as `python -m experiments.<name>`.

Running one restarts the process under jemalloc (jaxmodels._env) here, before the experiment
module imports jax and the engine; importing the package anywhere else changes nothing.
"""

from jaxmodels import _env

_env.restart_before_imports(__name__)
