"""`python -m experiments.<name> --workdir=DIR --config.<key>=<value>`: absl flags, the loop."""

from __future__ import annotations

import shlex
import sys
from types import ModuleType
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from jaxmodels import _env
from jaxmodels.models.common import ModelOptionError
from jaxmodels.train import checkpoint, config as config_lib, lock, loop, perf, storage

# Errors a user can fix: printed as one paragraph, exit status 2 (1 for a diverged run).
USER_ERRORS: tuple[type[BaseException], ...] = (
    config_lib.ConfigError,
    loop.WorkdirError,
    lock.LockError,
    checkpoint.CheckpointError,
    storage.StorageError,
    FileNotFoundError,
)


def _user_errors() -> tuple[type[BaseException], ...]:
  try:
    from jaxmodels import data

    extra = getattr(data, "USER_ERRORS", ())
  except ImportError:
    extra = ()
  return USER_ERRORS + tuple(extra)


def _fail(message: str, status: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def run_experiment(experiment: ModuleType, argv: list[str] | None = None) -> None:
  """The `__main__` of every experiment module."""
  if argv is None:
    try:
      _env.restart_with_allocator()
    except ValueError as e:  # a bad JAXMODELS_ALLOCATOR
      _fail(str(e))
  argv = list(sys.argv if argv is None else argv)
  base = experiment.get_config()
  try:
    config_lib.check_overrides(argv[1:], base)
    config_lib.prefer_given(argv[1:], base)
  except config_lib.ConfigError as e:
    _fail(str(e))
  fv = flags.FLAGS
  flags.DEFINE_string(
      "workdir",
      None,
      "Directory for checkpoints, metrics and summary.",
      flag_values=fv,
      required=True,
  )
  flags.DEFINE_string(
      "coordinator_address", None, "HOST:PORT of process 0 (multi-process).", flag_values=fv
  )
  flags.DEFINE_integer(
      "num_processes", None, "Number of processes (multi-process).", flag_values=fv
  )
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).", flag_values=fv)
  flags.DEFINE_bool(
      "allow_config_change",
      False,
      "Resume a workdir even if its saved config differs.",
      flag_values=fv,
  )
  config_flag = config_flags.DEFINE_config_dict("config", base, lock_config=True, flag_values=fv)

  def main(args: list[str]) -> None:
    if len(args) > 1:
      _fail(_stray_argument(args[1], argv))
    if not fv["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
      _env.configure_process(_batch_sizes(config_flag.value, fv.num_processes))
    except _env.EnvError as e:
      _fail(str(e))
    _init_distributed(fv)
    try:
      loop.train_and_evaluate(
          experiment,
          config_flag.value,
          fv.workdir,
          allow_config_change=fv.allow_config_change,
          command=command_line(loop.experiment_name(experiment), argv[1:]),
          started_at=perf.process_start_time(),
      )
    except loop.Stopped as e:
      print(
          f"Stopped by signal {e.signum} at step {e.step}; a checkpoint was saved there. Run "
          "the same command again to resume.",
          flush=True,
      )
      sys.exit(128 + e.signum)
    except loop.NonFiniteError as e:
      _fail(str(e), status=1)
    except ModelOptionError as e:
      _fail(f"config.model: {e}.")
    except _user_errors() as e:
      _fail(str(e))

  app.run(main, argv=argv, flags_parser=lambda args: _parse_flags(fv, args))


def command_line(experiment: str, args: list[str]) -> str:
  """The command that runs `experiment` with `args` again, quoted for a POSIX shell."""
  return shlex.join(["python", "-m", experiment, *args])


def _parse_flags(fv: flags.FlagValues, args: list[str]) -> list[str]:
  """absl's parsing, with its errors as one `error:` paragraph that lists the flags."""
  try:
    return fv(args)
  except flags.Error as e:
    _fail(
        f"{str(e).rstrip('.')}. An experiment takes --workdir=DIR (required), "
        "--config.<key>=<value> (--helpfull lists the keys), --allow_config_change, and "
        "--coordinator_address, --num_processes and --process_id for multi-process runs."
    )
    raise  # not reached: _fail exits


def _stray_argument(word: str, argv: list[str]) -> str:
  """The message for an argument that is not a flag; a flag's value given after a space is the
  usual cause (a boolean flag stands alone, so its value is left over)."""
  before = argv[argv.index(word, 1) - 1] if word in argv[1:] else ""
  hint = ""
  if before.startswith("--") and "=" not in before:
    hint = f" If it is the value of {before}, join them with '=': {before}={word}."
  return (
      f"unexpected argument {word!r}: experiments take only flags, written --name=value "
      f"(--workdir=DIR, --config.<key>=<value>).{hint}"
  )


def _batch_sizes(config: Any, num_processes: int | None) -> list[int]:
  """The per-process batch sizes the host devices must divide: train micro-batch and eval."""
  processes = num_processes or 1
  micro = config.batch_size // max(config.grad_accum_steps, 1)
  return [micro // processes, (config.eval_batch_size or config.batch_size) // processes]


def _init_distributed(fv: flags.FlagValues) -> None:
  import jax

  if fv.coordinator_address or fv.num_processes:
    if not (fv.coordinator_address and fv.num_processes and fv.process_id is not None):
      _fail(
          "multi-process runs need all of --coordinator_address=HOST:PORT, --num_processes=N "
          "and --process_id=I (or none of them)."
      )
    import os

    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
      # CPU processes need cross-process collectives; gloo is the default in recent jax only.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
  elif _on_cloud_tpu():
    jax.distributed.initialize()


def _on_cloud_tpu() -> bool:
  import os

  return bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"))
