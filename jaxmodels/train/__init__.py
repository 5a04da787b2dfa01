"""The one engine: configs, optimizers, steps, parallelism, checkpoints, metrics, the loop."""

from jaxmodels.train.cli import run_experiment
from jaxmodels.train.config import ConfigError, base_config
from jaxmodels.train.loop import train_and_evaluate

__all__ = ["ConfigError", "base_config", "run_experiment", "train_and_evaluate"]
