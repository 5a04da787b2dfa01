"""The benchmark ResNet-18 train step with its convolutions by XLA and by oneDNN, paired per round.

  python -m benchmarks.conv_impl [--strategy=none|pmap] [--rounds=5] [--chunk_s=2] [--quick]
      [--num_filters=64] [--image=32,32,3]
  python -m benchmarks.conv_impl --layer=N,H,C,K,S [--rounds=5] [--chunk_s=2]

Both contenders are the engine's compiled step (benchmarks.jax_side.JaxStep) on the same batch,
differing only in ResNet.conv_impl; each round times both, the order rotating, and the ratio
reported is the median over rounds of xla_time / onednn_time (> 1: oneDNN is faster) with the
range of the per-round ratios. `--layer` times one convolution's forward and both gradients
instead (batch N, H x H x C input, K x K kernel to C channels, stride S, padding K // 2).
'none' and `--layer` run with one host device (JAXMODELS_HOST_DEVICES=1 unless set), so both
sides have every core; 'pmap' splits the host into one device per core.
"""

import argparse
import json
import os
import time

from benchmarks import jax_side, run as bench, shapes as shapes_lib
from jaxmodels import _env


def measure(
    strategy: str, rounds: int, chunk_s: float, quick: bool, overrides: dict[str, object]
) -> dict[str, object]:
  """Seconds per step of each conv impl and the paired ratio xla / onednn."""
  shape = {**shapes_lib.shapes("resnet18", quick), **overrides}
  contenders = []
  for impl in ("xla", "onednn"):
    spec = jax_side.make_spec("resnet18", shape, kernels=impl)
    contenders.append(bench.Contender(impl, jax_side.JaxStep(spec, strategy).run))
  result = bench.paired(contenders, rounds, chunk_s, quick)
  return {"strategy": strategy, "batch_size": spec.batch_size, **overrides, **result}


def measure_layer(layer: str, rounds: int, chunk_s: float) -> dict[str, object]:
  """The same comparison for one convolution's value and gradients (see the docstring)."""
  import jax  # noqa: PLC0415  (after configure_process)
  import jax.numpy as jnp  # noqa: PLC0415

  from jaxmodels.models import cnn  # noqa: PLC0415

  n, h, c, k, s = map(int, layer.split(","))
  x = jax.random.normal(jax.random.key(0), (n, h, h, c))
  w = jax.random.normal(jax.random.key(1), (k, k, c, c)) * 0.05
  pad = ((k // 2, k // 2),) * 2
  dims = ("NHWC", "HWIO", "NHWC")
  contenders = []
  for impl in ("xla", "onednn"):

    def loss(x, w, impl=impl):
      y = cnn.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=dims, impl=impl)
      return jnp.sum(y * y)

    step = jax.jit(jax.value_and_grad(loss, (0, 1)))
    jax.block_until_ready(step(x, w))

    def run(num_steps, step=step):
      start = time.perf_counter()
      for _ in range(num_steps):
        out = step(x, w)
      jax.block_until_ready(out)
      return time.perf_counter() - start

    contenders.append(bench.Contender(impl, run))
  return {"layer": layer, **bench.paired(contenders, rounds, chunk_s, quick=False)}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--strategy", default="none", choices=("none", "pmap"))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--chunk_s", type=float, default=2.0)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--layer", default=None, help="N,H,C,K,S: one convolution instead")
  parser.add_argument("--num_filters", type=int, default=None, help="ResNet width (default 64)")
  parser.add_argument("--image", default=None, help="H,W,C of the images (default 32,32,3)")
  args = parser.parse_args(argv)
  if args.layer or args.strategy == "none":
    # One device owning every core: oneDNN's calls get cores / host devices threads each.
    os.environ.setdefault(_env.HOST_DEVICES_ENV, "1")
  _env.configure_process()
  if args.layer:
    result = measure_layer(args.layer, args.rounds, args.chunk_s)
  else:
    overrides = {}
    if args.num_filters:
      overrides["num_filters"] = args.num_filters
    if args.image:
      overrides["image_shape"] = tuple(map(int, args.image.split(",")))
    result = measure(args.strategy, args.rounds, args.chunk_s, args.quick, overrides)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
