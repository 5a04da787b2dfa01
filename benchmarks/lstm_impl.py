"""The benchmark LSTM language model's train step with its LSTM layers fused in XLA and by oneDNN,
paired per round.

  python -m benchmarks.lstm_impl [--strategy=none|pmap] [--rounds=5] [--chunk_s=2] [--quick]
  python -m benchmarks.lstm_impl --layer=T,B,F,H [--lengths] [--forward] [--rounds=5] [--chunk_s=2]

Both contenders are the engine's compiled step (benchmarks.jax_side.JaxStep) on the same batch,
differing only in RNNLanguageModel.impl ('fused' or 'onednn'); each round times both, the order
rotating, and the ratio reported is the median over rounds of fused_time / onednn_time (> 1:
oneDNN is faster) with the range of the per-round ratios. `--layer` times one LSTM layer's
outputs and gradients (`rnn.RecurrentLayer`, T steps, batch B, F inputs, H units) instead;
`--lengths` gives it sequence lengths (every second one half the steps), `--forward` times the
outputs alone (evaluation: oneDNN's inference primitive).

Each oneDNN call runs usable cores / host devices threads (`onednn.call_threads()`): with the
default split into one host device per core, one thread on one device; JAXMODELS_HOST_DEVICES=1
gives it every core.
"""

import argparse
import json
import time

from benchmarks import jax_side, run as bench, shapes as shapes_lib
from jaxmodels import _env

IMPLS = ("fused", "onednn")


def measure(strategy: str, rounds: int, chunk_s: float, quick: bool) -> dict[str, object]:
  """Seconds per train step of each impl and the paired ratio fused / onednn."""
  shape = shapes_lib.shapes("lstm", quick)
  contenders = []
  for impl in IMPLS:
    spec = jax_side.make_spec("lstm", shape, kernels=impl)
    contenders.append(bench.Contender(impl, jax_side.JaxStep(spec, strategy).run))
  result = bench.paired(contenders, rounds, chunk_s, quick)
  return {"strategy": strategy, "batch_size": spec.batch_size, **_threads(), **result}


def measure_layer(
    layer: str, rounds: int, chunk_s: float, lengths: bool, forward: bool = False
) -> dict[str, object]:
  """The same comparison for one LSTM layer's value and gradients (see the docstring)."""
  import jax  # noqa: PLC0415  (after configure_process)
  import jax.numpy as jnp  # noqa: PLC0415

  from jaxmodels.models import rnn  # noqa: PLC0415

  steps, batch, features, hidden = map(int, layer.split(","))
  x = jax.random.normal(jax.random.key(0), (steps, batch, features))
  lens = None
  if lengths:
    lens = jnp.where(jnp.arange(batch) % 2 == 0, steps, max(1, steps // 2)).astype(jnp.int32)
  variables = rnn.RecurrentLayer("lstm", hidden).init(jax.random.key(1), x, lens)
  contenders = []
  for impl in IMPLS:
    model = rnn.RecurrentLayer("lstm", hidden, impl=impl)

    def loss(variables, x, model=model):
      (_, h), ys = model.apply(variables, x, lens)
      return jnp.sum(ys * ys) + jnp.sum(h)

    step = jax.jit(loss if forward else jax.value_and_grad(loss, (0, 1)))
    jax.block_until_ready(step(variables, x))

    def run(num_steps, step=step):
      start = time.perf_counter()
      for _ in range(num_steps):
        out = step(variables, x)
      jax.block_until_ready(out)
      return time.perf_counter() - start

    contenders.append(bench.Contender(impl, run))
  result = bench.paired(contenders, rounds, chunk_s, quick=False)
  return {"layer": layer, "lengths": lengths, "forward": forward, **_threads(), **result}


def _threads() -> dict[str, int]:
  import jax  # noqa: PLC0415

  from jaxmodels.kernels import onednn  # noqa: PLC0415

  return {"host_devices": jax.local_device_count(), "onednn_threads": onednn.call_threads()}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--strategy", default="none", choices=("none", "pmap"))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--chunk_s", type=float, default=2.0)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--layer", default=None, help="T,B,F,H: one LSTM layer instead")
  parser.add_argument("--lengths", action="store_true", help="with --layer: sequence lengths")
  parser.add_argument("--forward", action="store_true", help="with --layer: outputs alone")
  args = parser.parse_args(argv)
  _env.configure_process()
  if args.layer:
    result = measure_layer(args.layer, args.rounds, args.chunk_s, args.lengths, args.forward)
  else:
    result = measure(args.strategy, args.rounds, args.chunk_s, args.quick)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
