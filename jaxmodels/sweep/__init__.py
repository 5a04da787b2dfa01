"""Optuna-backed hyperparameter sweeps over an experiment's config.

An experiment declares its space with the classes below in `get_sweep()`; the sweep runs each
trial as an ordinary experiment subprocess in DIR/trials/<n>/:

  python -m jaxmodels.sweep experiments.<name> --workdir=DIR [--num_trials=N] [--workers=K]

Importing this package is cheap (no Optuna, no matplotlib) so experiments can use it freely;
`run_sweep` and `Options` load the runner on first use.
"""

from jaxmodels.sweep.space import Choice, IntRange, LogUniform, Sweep, SweepError, Uniform

__all__ = [
    "Choice",
    "IntRange",
    "LogUniform",
    "Options",
    "Sweep",
    "SweepError",
    "Uniform",
    "run_sweep",
]


def __getattr__(name: str):
  if name in ("run_sweep", "Options"):
    from jaxmodels.sweep import runner  # pylint: disable=import-outside-toplevel

    return getattr(runner, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
