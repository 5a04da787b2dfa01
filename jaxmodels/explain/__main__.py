"""python -m jaxmodels.explain --workdir=DIR [--num_examples=8] [--split=test] [--steps=64]

Loads the newest checkpoint of a training run and writes its explanations as DIR/explain/*.png
(see jaxmodels.explain.explainer for what each kind of model gets). Exit status 2 on bad input,
with nothing written.
"""

from __future__ import annotations

import sys

from etils import epath
import numpy as np

from jaxmodels import _env


def check_flags(num_examples: int, steps: int) -> None:
  """Raises ValueError naming the first flag outside its range."""
  for name, value, meaning in (
      ("num_examples", num_examples, "examples to explain"),
      ("steps", steps, "integration steps of integrated gradients"),
  ):
    if value < 1:
      raise ValueError(f"--{name}={value}: must be >= 1 ({meaning}).")


def examples(trained, split: str, num_examples: int) -> dict[str, np.ndarray]:
  """The first `num_examples` examples of `split` (fewer when the split is smaller)."""
  try:
    available = trained.data.num_examples(split)
  except KeyError as e:  # the dataset's message names its splits
    raise ValueError(f"--split={split}: {e.args[0]}") from e
  batch = next(trained.data.eval_batches(split, min(num_examples, available)))
  real = np.asarray(batch["mask"]).astype(bool) if "mask" in batch else slice(None)
  return {k: np.asarray(v)[real] for k, v in batch.items() if k != "mask"}


def main(workdir: str | None, num_examples: int, split: str, steps: int) -> None:
  from jaxmodels import predict
  from jaxmodels.explain import explainer

  check_flags(num_examples, steps)
  if workdir is None:
    raise ValueError("give --workdir=DIR, the directory of a training run.")
  try:
    import matplotlib  # noqa: F401  (the figures)
  except ImportError as e:
    raise ValueError(
        "jaxmodels.explain draws with matplotlib, which is not installed: "
        "pip install -e '.[explain]' in the repository, or make setup"
    ) from e
  trained = predict.load(workdir)
  task = trained.experiment.get_task(trained.config, trained.data.info)
  batch = examples(trained, split, num_examples)
  explainer.model_kind(trained, task, batch)  # an unsupported model fails before any work
  out = explainer.explain(trained, task, batch, epath.Path(workdir) / "explain", steps)
  for note in out.notes:
    print(note)
  for path in out.paths:
    print(f"wrote {path}")


def cli() -> None:
  from absl import app, flags

  try:
    _env.configure_process()
  except _env.EnvError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  flags.DEFINE_string("workdir", None, "A training run's workdir.")
  flags.DEFINE_integer("num_examples", 8, "Examples to explain (classifiers; Transformers: 1).")
  flags.DEFINE_string("split", "test", "Split to take the examples from.")
  flags.DEFINE_integer("steps", 64, "Integration steps of integrated gradients.")

  def guarded(argv):
    from jaxmodels import predict
    from jaxmodels.explain.explainer import UnsupportedModelError

    if len(argv) > 1:
      print(f"error: unexpected argument {argv[1]!r}; flags are --name=value.", file=sys.stderr)
      sys.exit(2)
    fv = flags.FLAGS
    predict.guard(
        lambda: main(fv.workdir, fv.num_examples, fv.split, fv.steps), UnsupportedModelError
    )

  app.run(guarded)


if __name__ == "__main__":
  cli()
