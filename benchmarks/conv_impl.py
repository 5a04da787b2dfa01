"""The benchmark ResNet-18 train step with its convolutions by XLA and by oneDNN, paired per round.

  python -m benchmarks.conv_impl [--strategy=none|pmap] [--rounds=5] [--chunk_s=2] [--quick]

Both contenders are the engine's compiled step (benchmarks.jax_side.JaxStep) on the same batch,
differing only in ResNet.conv_impl; each round times both, the order rotating, and the ratio
reported is the median over rounds of xla_time / onednn_time (> 1: oneDNN is faster) with the
range of the per-round ratios.
"""

import argparse
import dataclasses
import json
import statistics

from benchmarks import jax_side, run as bench, shapes as shapes_lib
from jaxmodels import _env


def measure(strategy: str, rounds: int, chunk_s: float, quick: bool) -> dict[str, object]:
  """Seconds per step of each conv impl and the paired ratio xla / onednn."""
  spec = jax_side.make_spec("resnet18", shapes_lib.shapes("resnet18", quick))
  contenders = []
  for impl in ("xla", "onednn"):
    model_spec = dataclasses.replace(spec, model=spec.model.clone(conv_impl=impl))
    step = jax_side.JaxStep(model_spec, strategy)
    contenders.append(bench.Contender(impl, step.run))
  settings = bench.Settings(quick, rounds, chunk_s, (strategy,), torch_compile=False)
  bench.contest(contenders, settings)
  xla, onednn = contenders
  ratios = [a / b for a, b in zip(xla.times, onednn.times)]
  return {
      "strategy": strategy,
      "batch_size": spec.batch_size,
      "xla_step_s": xla.step_s,
      "onednn_step_s": onednn.step_s,
      "ratio_xla_over_onednn": statistics.median(ratios),
      "ratio_range": [min(ratios), max(ratios)],
      "rounds": rounds,
  }


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--strategy", default="none", choices=("none", "pmap"))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--chunk_s", type=float, default=2.0)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  _env.configure_process()
  print(json.dumps(measure(args.strategy, args.rounds, args.chunk_s, args.quick)), flush=True)


if __name__ == "__main__":
  main()
