"""Post-training int8 quantization of a trained workdir, evaluated side by side with float32.

python -m jaxmodels.quantize --workdir=runs/fashion_mnist_cnn [--split=test]

Reads the newest checkpoint and config.json of the workdir, quantizes its weights to int8 (per
output channel, qwix; see jaxmodels/quantize/__init__.py), writes DIR/quantized/ (weights.npz:
int8 kernels, their float32 scales and the float32 rest; meta.json), evaluates the float32 and
the int8 model on the split with the engine's evaluation step, prints a table and writes
DIR/quantize.json. DIR/checkpoints/ is only read. `python -m jaxmodels.predict --workdir=DIR
--quantized` predicts or samples with the int8 model.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import _env, predict, quantize
from jaxmodels.train import loop, metrics, parallel, steps


def evaluate(
    model: Any, task: Any, variables: dict[str, Any], data: Any, split: str, batch_size: int
) -> tuple[dict[str, float], float]:
  """(metrics of the whole split, examples per second): the engine's eval step on one device,
  timed after it has compiled on the first batch."""
  strategy = parallel.make("none", model)
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  state = steps.TrainState(jnp.zeros((), jnp.int32), params, model_state, (), jax.random.PRNGKey(0))
  eval_fn = strategy.eval_fn(task, False, state)
  dstate = strategy.put_state(state)
  batches = list(data.eval_batches(split, batch_size))
  jax.block_until_ready(eval_fn(dstate, strategy.put_batch(batches[0])))  # compiles
  in_flight = loop.InFlight(2)
  start = time.perf_counter()
  sums = [in_flight.add(eval_fn(dstate, strategy.put_batch(b))) for b in batches]
  jax.block_until_ready(sums)
  seconds = time.perf_counter() - start
  examples = sum(float(np.sum(b["mask"])) if "mask" in b else len(b["targets"]) for b in batches)
  values = task.finalize(metrics.reduce_sums([strategy.fetch(s) for s in sums]))
  return values, examples / seconds


def run(workdir: str, split: str) -> dict[str, Any]:
  """Quantizes the workdir's newest checkpoint, writes DIR/quantized/ and DIR/quantize.json;
  returns what quantize.json holds. Raises before writing anything on bad input."""
  experiment, config, data, model = predict.load_run(workdir)
  quantize.check_supported(model, f"the model of {workdir} ({experiment.__name__})")
  try:
    data.num_examples(split)
  except KeyError as e:  # the dataset's message names its splits
    raise ValueError(f"--split={split}: {e.args[0]}") from e
  trained = predict.restore(workdir, experiment, config, data, model)
  task = experiment.get_task(config, data.info)
  batch_size = config.eval_batch_size or config.batch_size
  example = next(data.eval_batches(split, batch_size))
  model_args = task.model_args(example)
  qmodel, qvariables = quantize.quantize_variables(model, trained.variables, model_args)

  float_metrics, float_speed = evaluate(model, task, trained.variables, data, split, batch_size)
  int8_metrics, int8_speed = evaluate(qmodel, task, qvariables, data, split, batch_size)
  meta = {
      "step": trained.step,
      "library": quantize.library(),
      "scheme": "int8 kernels per output channel, tables per row (absmax); float32 activations",
      "quantized_arrays": quantize.num_quantized(qvariables),
  }
  int8_bytes = quantize.save(workdir, qvariables, meta)
  float_bytes = len(quantize.npz_bytes(trained.variables))
  results = dict(
      meta,
      split=split,
      checkpoint=os.path.join(workdir, "checkpoints", str(trained.step)),
      quantized_dir=os.path.join(workdir, quantize.QUANTIZED_DIR),
      float32=dict(float_metrics, bytes=float_bytes, examples_per_s=float_speed),
      int8=dict(int8_metrics, bytes=int8_bytes, examples_per_s=int8_speed),
      size_ratio=float_bytes / int8_bytes,
  )
  loop._write_json(os.path.join(workdir, quantize.RESULTS_FILE), results)
  return results


def table(results: dict[str, Any]) -> str:
  """float32 and int8 side by side: each metric, bytes on disk and eval throughput."""
  f, q = results["float32"], results["int8"]
  names = [k for k in f if k not in ("bytes", "examples_per_s")]
  rows = [(f"{results['split']} {k}", f"{f[k]:.4f}", f"{q[k]:.4f}") for k in names]
  rows.append(("weights (bytes on disk)", f"{f['bytes']:,}", f"{q['bytes']:,}"))
  rows.append(("eval examples/s", f"{f['examples_per_s']:,.0f}", f"{q['examples_per_s']:,.0f}"))
  width = max(len(r[0]) for r in rows)
  lines = [f"{'':{width}}  {'float32':>14}  {'int8':>14}"]
  lines += [f"{a:{width}}  {b:>14}  {c:>14}" for a, b, c in rows]
  lines.append(f"int8 weights are {results['size_ratio']:.2f}x smaller ({results['library']})")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  from absl import flags

  del argv
  fv = flags.FLAGS
  if fv.workdir is None:
    raise ValueError("give --workdir=DIR, the directory of a training run.")
  results = run(fv.workdir, fv.split)
  print(table(results))
  print(f"wrote {results['quantized_dir']} and {os.path.join(fv.workdir, quantize.RESULTS_FILE)}")


def cli() -> None:
  from absl import app, flags

  try:
    _env.configure_process()
  except _env.EnvError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  flags.DEFINE_string("workdir", None, "A training run's workdir.")
  flags.DEFINE_string("split", "test", "Split to evaluate float32 and int8 on.")

  app.run(lambda argv: predict.guard(lambda: main(argv)))


if __name__ == "__main__":
  cli()
