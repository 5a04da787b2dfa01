"""Command line: python -m jaxmodels.sweep experiments.<name> --workdir=DIR [flags] [--config.k=v]

Exit status: 0 when at least one trial completed, 1 when none did, 2 on bad input, 130 when
interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import signal
import sys

from jaxmodels.sweep.space import SAMPLERS, SweepError

_CONFIG = "--config."


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m jaxmodels.sweep",
      description="Hyperparameter sweep of an experiment with Optuna. Each trial runs "
      "`python -m EXPERIMENT --workdir=DIR/trials/<n> --config.k=v ...`; results go "
      "to DIR/results.csv, DIR/results.md and DIR/plots/. Rerunning the same command "
      "resumes the sweep. Extra --config.<key>=<value> flags are fixed for every "
      "trial. Before the first trial the sweep checks that the configs of its space are "
      "valid and that the data has the objective's split (eval_* metrics need a "
      "validation split: --config.validation_size=N on the image datasets).",
  )
  p.add_argument("experiment", help="importable experiment module, e.g. experiments.mnist_mlp")
  p.add_argument("--workdir", required=True, help="sweep directory")
  p.add_argument(
      "--num_trials",
      type=int,
      help="total trials (default: the sweep's; grid: its "
      "size); finished trials of earlier runs count",
  )
  p.add_argument(
      "--workers",
      type=int,
      default=1,
      help="trials run in parallel on this machine; "
      "each gets an even share of the cores, or one GPU",
  )
  p.add_argument("--sampler", choices=SAMPLERS, help="default: the sweep's (tpe unless set)")
  p.add_argument(
      "--storage",
      help="Optuna storage URL (sqlite:///F.db, postgresql://...) or "
      "journal file path; default sqlite DIR/study.db. Workers on several machines "
      "join one study through a shared storage",
  )
  p.add_argument(
      "--study_name",
      help="default: the experiment module name; a sweep directory holds one study "
      "(DIR/sweep.json names it), several directories may share one storage",
  )
  p.add_argument(
      "--prune",
      action="store_true",
      help="stop trials whose intermediate objective "
      "is below the median of earlier trials at the same step (MedianPruner)",
  )
  p.add_argument(
      "--prune_startup_trials",
      type=int,
      default=5,
      help="trials that complete before pruning starts",
  )
  p.add_argument(
      "--prune_warmup_steps", type=int, default=0, help="steps of a trial before it may be pruned"
  )
  p.add_argument("--seed", type=int, default=0, help="sampler seed")
  p.add_argument(
      "--heartbeat_interval",
      type=float,
      default=5.0,
      help="seconds between a worker's signs of life for its running trial",
  )
  p.add_argument(
      "--stale_after",
      type=float,
      default=30.0,
      help="a running trial without a heartbeat for this long belonged to a dead sweep "
      "and is resumed in its directory",
  )
  p.add_argument(
      "--poll_interval",
      type=float,
      default=1.0,
      help="seconds between reads of a running trial's metrics.jsonl",
  )
  return p


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, str]]:
  """Flags and the fixed --config.<key>=<value> overrides (passed to every trial verbatim)."""
  overrides, rest = {}, []
  for arg in argv:
    if arg.startswith(_CONFIG):
      key, sep, value = arg[len(_CONFIG) :].partition("=")
      if not key or not sep:
        raise SweepError(f"bad flag {arg!r}: write --config.<key>=<value>")
      overrides[key] = value
    else:
      rest.append(arg)
  return parser().parse_args(rest), overrides


def main(argv: Sequence[str] | None = None) -> int:
  """Run the command line; return the exit status."""
  try:
    import matplotlib  # noqa: F401  (the plots of the report)
    import optuna
  except ImportError as e:
    print(
        f"error: sweeps need the sweep extra ({e.name} is not installed): "
        "pip install -e '.[sweep]' in the repository, or make setup",
        file=sys.stderr,
    )
    return 2
  from jaxmodels.sweep import runner

  optuna.logging.set_verbosity(optuna.logging.WARNING)
  argv = sys.argv[1:] if argv is None else argv
  try:
    args, overrides = parse(argv)
    options = runner.Options(
        num_trials=args.num_trials,
        workers=args.workers,
        sampler=args.sampler,
        storage=args.storage,
        study_name=args.study_name,
        prune=args.prune,
        prune_startup_trials=args.prune_startup_trials,
        prune_warmup_steps=args.prune_warmup_steps,
        seed=args.seed,
        overrides=overrides,
        heartbeat_interval=args.heartbeat_interval,
        stale_after=args.stale_after,
        poll_interval=args.poll_interval,
    )
    study = runner.run_sweep(args.experiment, args.workdir, options)
  except SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 130
  done = [t for t in runner.counted(study.get_trials(deepcopy=False)) if t.state.name == "COMPLETE"]
  return 0 if done else 1


def _interrupt(signum, frame) -> None:
  del signum, frame
  raise KeyboardInterrupt


if __name__ == "__main__":
  signal.signal(signal.SIGTERM, _interrupt)
  sys.exit(main())
