"""Train-step throughput of the jax engine, side by side with PyTorch and the machine's peak.

  python -m benchmarks.run [--quick] [--json=FILE] [--only=gpt,resnet18,...]

Benchmarks:
  gpt, resnet18, lstm, mlp  the engine's train step (parallel.make(...).train_fn) against the same
                            model in PyTorch (eager; ResNet NCHW and channels_last; torch.compile
                            when it works), and MFU against the in-run XLA float32 matmul peak
                            from analytic FLOPs (3 x forward per example).
  conv_devices              the ResNet-18 step on 2 host devices (pmap) over 1 ('none').
  input_pipeline            fashion_mnist_cnn's step fed by the real grain pipeline vs synthetic
                            batches (needs `python -m jaxmodels.data.prepare fashion_mnist`).
  compile_cache             time to the first step in a fresh process, cold vs warm persistent
                            compilation cache.
  dp                        experiments.mnist_dp's CNN: the DP-SGD step (per-example gradients,
                            clipping, noise) vs the plain step, same model, batch and device.

Every contender is timed in rounds, one chunk of steps each in turn, after warm-up; per-step
times are medians over rounds and ratios are medians of per-round ratios, so load from other
processes hits both sides alike. The process splits the host CPU into one XLA device per core
(jaxmodels does this on import) so that 'none' (one device), 'pmap' and 'mesh' (sharded jit over
the same 2 devices) can all be measured; each model reports its fastest engine strategy.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax

from benchmarks import jax_side, shapes as shapes_lib
from jaxmodels import _env
from jaxmodels.train import perf

MODEL_BENCHES = shapes_lib.MODELS
ALL = MODEL_BENCHES + ("conv_devices", "input_pipeline", "compile_cache", "dp")
# (what the goal compares, the threshold, True when higher is better)
GOALS = {
    "gpt": ("ratio_vs_torch", 1.0, True),
    "gpt:mfu": ("mfu", 0.75, True),
    "resnet18": ("ratio_vs_torch", 1.0, True),
    "lstm": ("ratio_vs_torch", 1.0, True),
    "mlp": ("ratio_vs_torch", 1.2, True),
    "conv_devices": ("ratio", 1.6, True),
    "compile_cache": ("ratio", 0.3, False),
    "dp": ("ratio", 0.5, True),
}


@dataclasses.dataclass
class Contender:
  """Something timed per step: `run(n)` returns the seconds of n steps."""

  label: str
  run: Callable[[int], float]
  steps: int = 1
  times: list[float] = dataclasses.field(default_factory=list)

  @property
  def step_s(self) -> float:
    return statistics.median(self.times)


@dataclasses.dataclass
class Settings:
  quick: bool
  rounds: int
  chunk_s: float
  strategies: tuple[str, ...]
  torch_compile: bool


def contest(
    contenders: list[Contender], settings: Settings, extra: Callable[[], float] | None = None
) -> list[float]:
  """Times every contender in `settings.rounds` rounds, rotating the order each round.

  The first call of each (warm-up) also sizes its chunk to about `settings.chunk_s` seconds.
  `extra`, when given, is measured once per round too (the matmul peak); its values are returned.
  """
  for c in contenders:
    c.run(1)
    c.steps = max(1, math.ceil(settings.chunk_s / max(c.run(1), 1e-6)))
  extras = []
  for r in range(settings.rounds):
    order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
    for c in order:
      c.times.append(c.run(c.steps) / c.steps)
    if extra is not None:
      extras.append(extra())
  return extras


def paired_ratio(slow: Contender, fast: Contender) -> float:
  """Median over rounds of slow_time / fast_time (> 1: `fast` is faster)."""
  return statistics.median(a / b for a, b in zip(slow.times, fast.times))


def peak_fn(settings: Settings) -> Callable[[], float]:
  n = 256 if settings.quick else 1024
  return lambda: perf.matmul_peak_flops(n, 0.05 if settings.quick else 0.25)


# ---------- model benchmarks


def _torch_contenders(
    name: str, shape: dict[str, Any], spec: jax_side.Spec, settings: Settings, notes: list[str]
) -> list[Contender]:
  try:
    from benchmarks import torch_models
  except ImportError:
    notes.append("torch not installed (pip install -e '.[bench]')")
    return []
  torch_models.set_threads()
  out = [
      Contender(f"torch:{v}", torch_models.TorchStep(name, shape, spec.batch, v).run)
      for v in torch_models.variants(name)
  ]
  if settings.torch_compile:
    try:
      compiled = torch_models.TorchStep(name, shape, spec.batch, "compile")
      t = time.perf_counter()
      compiled.run(2)
      notes.append(f"torch.compile took {time.perf_counter() - t:.0f}s")
      out.append(Contender("torch:compile", compiled.run))
    except Exception as e:  # inductor needs a compiler and may fail on any model
      notes.append(f"torch.compile unavailable ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
  return out


def _jax_contenders(spec: jax_side.Spec, settings: Settings, notes: list[str]) -> list[Contender]:
  out = []
  for strategy in settings.strategies:
    if strategy != "none" and jax.local_device_count() < 2:
      continue
    try:
      step = jax_side.JaxStep(spec, strategy)
    except ValueError as e:
      notes.append(f"{strategy}: {e}")
      continue
    out.append(Contender(f"jax:{strategy}", step.run))
  return out


def _best(
    contenders: list[Contender], prefix: str, exclude: tuple[str, ...] = ()
) -> Contender | None:
  pool = [c for c in contenders if c.label.startswith(prefix) and c.label not in exclude]
  return min(pool, key=lambda c: c.step_s) if pool else None


def model_bench(name: str, settings: Settings, jax_only: bool = False) -> dict[str, Any]:
  """Measures one model; returns its record plus the contenders (key '_contenders')."""
  shape = shapes_lib.shapes(name, settings.quick)
  spec = jax_side.make_spec(name, shape)
  notes: list[str] = []
  contenders = _jax_contenders(spec, settings, notes)
  if not jax_only:
    contenders += _torch_contenders(name, shape, spec, settings, notes)
  peaks = contest(contenders, settings, peak_fn(settings))
  jax_best = _best(contenders, "jax:")
  torch_best = _best(contenders, "torch:", exclude=("torch:compile",))
  compiled = next((c for c in contenders if c.label == "torch:compile"), None)
  per_s = lambda c: spec.batch_size / c.step_s if c else None
  mfus = [spec.train_flops_per_step / t / p for t, p in zip(jax_best.times, peaks)]
  record = {
      "benchmark": name,
      "jax_per_s": per_s(jax_best),
      "torch_per_s": per_s(torch_best),
      "ratio_vs_torch": paired_ratio(torch_best, jax_best) if torch_best else None,
      "mfu": statistics.median(mfus),
      "unit": "examples",
      "jax_variant": jax_best.label,
      "torch_variant": torch_best.label if torch_best else None,
      "torch_compile_per_s": per_s(compiled),
      "ratio_vs_compile": paired_ratio(compiled, jax_best) if compiled else None,
      "torch_mfu": (
          spec.train_flops_per_step / torch_best.step_s / max(peaks) if torch_best else None
      ),
      "peak_gflops": max(peaks) / 1e9,
      "train_gflop_per_step": spec.train_flops_per_step / 1e9,
      "per_s": {c.label: per_s(c) for c in contenders},
      "note": "; ".join(notes),
      "_contenders": contenders,
  }
  return record


def conv_devices_record(resnet: dict[str, Any]) -> dict[str, Any]:
  """ResNet-18 on 2 host devices (pmap) over one device ('none'), paired per round."""
  by = {c.label: c for c in resnet["_contenders"]}
  one, two = by.get("jax:none"), by.get("jax:pmap")
  if not (one and two):
    return _skipped("conv_devices", "needs jax:none and jax:pmap on 2 host devices")
  batch = resnet["jax_per_s"] * (by[resnet["jax_variant"]].step_s)
  return {
      "benchmark": "conv_devices",
      "jax_per_s": batch / two.step_s,
      "one_device_per_s": batch / one.step_s,
      "ratio": paired_ratio(one, two),
      "note": "resnet18 step: pmap over 2 host devices / parallelism 'none'",
  }


def conv_devices_subprocess(settings: Settings) -> dict[str, Any]:
  """Runs conv_devices in a child process with exactly 2 host devices."""
  flags = " ".join(
      f
      for f in os.environ.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
  )
  env = dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=2".strip())
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "conv.json")
    argv = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--only=conv_devices",
        f"--json={out}",
        f"--rounds={settings.rounds}",
    ] + (["--quick"] if settings.quick else [])
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not os.path.exists(out):
      return _skipped("conv_devices", f"child process failed: {proc.stderr.strip()[-300:]}")
    with open(out, encoding="utf-8") as f:
      return json.load(f)[0]


# ---------- input pipeline


def input_pipeline_bench(settings: Settings) -> dict[str, Any]:
  """fashion_mnist_cnn's step fed by the real pipeline vs synthetic batches vs a fixed batch."""
  from experiments import fashion_mnist_cnn as exp
  from jaxmodels import data as data_lib

  config = exp.get_config()
  if settings.quick:
    config.batch_size = 8
  try:
    t = time.perf_counter()
    real = data_lib.load("fashion_mnist")
    load_s = time.perf_counter() - t
  except data_lib.DataError:
    return _skipped(
        "input_pipeline",
        "skipped: prepare fashion_mnist " "(python -m jaxmodels.data.prepare fashion_mnist)",
    )
  config.synthetic_data = True
  synthetic = exp.get_data(config)
  feeds = jax_side.engine_feeds(exp, config, {"real": real, "synthetic": synthetic})
  contenders = [Contender(label, run) for label, run in feeds.items()]
  contest(contenders, settings)
  by = {c.label: c for c in contenders}
  n = config.batch_size
  return {
      "benchmark": "input_pipeline",
      "jax_per_s": n / by["real"].step_s,
      "synthetic_per_s": n / by["synthetic"].step_s,
      "fixed_per_s": n / by["fixed"].step_s,
      "ratio": paired_ratio(by["synthetic"], by["real"]),
      "real_step_ms": 1e3 * by["real"].step_s,
      "synthetic_step_ms": 1e3 * by["synthetic"].step_s,
      "load_s": load_s,
      "note": f"fashion_mnist_cnn batch {n}, parallelism {config.parallelism}; "
      "ratio = real/synthetic throughput",
  }


# ---------- compilation cache


def _first_step(name: str, quick: bool, cache_dir: str) -> dict[str, float]:
  argv = [
      sys.executable,
      "-m",
      "benchmarks.jax_side",
      f"--first_step={name}",
      f"--cache_dir={cache_dir}",
  ] + (["--quick"] if quick else [])
  proc = subprocess.run(argv, capture_output=True, text=True, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"first-step child failed: {proc.stderr.strip()[-300:]}")
  return json.loads(lines[-1])


def _cold_warm(name: str, quick: bool) -> tuple[dict, dict]:
  with tempfile.TemporaryDirectory() as cache_dir:
    return _first_step(name, quick, cache_dir), _first_step(name, quick, cache_dir)


def compile_cache_bench(settings: Settings, models: tuple[str, ...]) -> list[dict[str, Any]]:
  """Time to the first step in fresh processes: empty cache (cold), then the same cache (warm).

  ratio is warm/cold of the time to the first finished step; startup_ratio leaves the first
  step's own run time out.
  """
  records = []
  for name in models:
    try:
      cold, warm = _cold_warm(name, settings.quick)
    except RuntimeError as e:
      records.append(_skipped(f"compile_cache:{name}", str(e)))
      continue
    records.append(
        {
            "benchmark": f"compile_cache:{name}",
            "cold_s": cold["first_step_s"],
            "warm_s": warm["first_step_s"],
            "ratio": warm["first_step_s"] / cold["first_step_s"],
            "startup_ratio": warm["startup_s"] / cold["startup_s"],
            "cold": cold,
            "warm": warm,
            "note": (
                f"first step cold {cold['first_step_s']:.1f}s warm {warm['first_step_s']:.1f}s "
                f"(startup ratio {warm['startup_s'] / cold['startup_s']:.2f}, the step itself "
                f"{warm['step_s']:.1f}s)"
            ),
        }
    )
  return records


# ---------- differential privacy


def dp_bench(settings: Settings) -> dict[str, Any]:
  """Throughput of mnist_dp's DP-SGD step over its plain step ('none', one device), paired."""
  from experiments import mnist_dp
  from jaxmodels.train import privacy

  config = mnist_dp.get_config()
  n = 8 if settings.quick else config.batch_size
  shape = dict(image_shape=(28, 28, 1), num_classes=10, batch_size=n)
  batch = shapes_lib.make_batch("mlp", shape)
  info = {"num_classes": 10}
  model, task = mnist_dp.get_model(config, info), mnist_dp.get_task(config, info)
  spec = jax_side.Spec("mnist_dp", model, task, batch, model.flops_per_example((28, 28, 1)))
  dp = privacy.DPSGD(config.dp.l2_clip, 1.0)
  plain = Contender("plain", jax_side.JaxStep(spec, "none").run)
  private = Contender("dp", jax_side.JaxStep(spec, "none", dp=dp).run)
  contest([plain, private], settings)
  return {
      "benchmark": "dp",
      "jax_per_s": n / private.step_s,
      "plain_per_s": n / plain.step_s,
      "ratio": paired_ratio(plain, private),
      "note": f"mnist_dp CNN batch {n}, parallelism 'none'; ratio = DP-SGD / plain throughput",
  }


# ---------- records and the table


def _skipped(name: str, note: str) -> dict[str, Any]:
  return {"benchmark": name, "note": note}


def finish(record: dict[str, Any]) -> dict[str, Any]:
  """Fills the common keys, the goal and whether it is met; drops private fields."""
  out = {k: v for k, v in record.items() if not k.startswith("_")}
  for key in ("jax_per_s", "torch_per_s", "ratio_vs_torch", "mfu"):
    out.setdefault(key, None)
  base = out["benchmark"].split(":")[0]
  goals = [(g, GOALS[g]) for g in (base, f"{base}:mfu") if g in GOALS]
  met = []
  for _, (key, threshold, higher) in goals:
    value = out.get(key)
    if value is not None:
      met.append(value >= threshold if higher else value <= threshold)
  out["goal"] = ", ".join(f"{k} {'>=' if h else '<='} {t}" for _, (k, t, h) in goals) or None
  out["goal_met"] = all(met) if met else None
  return out


def _fmt(value: Any, spec: str = ".3g") -> str:
  if value is None:
    return "-"
  return format(value, spec) if isinstance(value, (int, float)) else str(value)


def table(records: list[dict[str, Any]]) -> str:
  """A plain-text table of the records."""
  rows = [("benchmark", "jax/s", "torch/s", "ratio", "mfu", "variant", "goal", "met", "note")]
  for r in records:
    ratio = r.get("ratio_vs_torch", r.get("ratio"))
    if ratio is None:
      ratio = r.get("ratio")
    variant = " vs ".join(v for v in (r.get("jax_variant"), r.get("torch_variant")) if v)
    met = {True: "yes", False: "NO", None: "-"}[r.get("goal_met")]
    rows.append(
        (
            r["benchmark"],
            _fmt(r.get("jax_per_s")),
            _fmt(r.get("torch_per_s")),
            _fmt(ratio, ".2f"),
            _fmt(r.get("mfu"), ".0%"),
            variant or "-",
            r.get("goal") or "-",
            met,
            r.get("note") or "",
        )
    )
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
  return "\n".join(lines)


# ---------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--quick", action="store_true", help="tiny shapes, few rounds (smoke test)")
  parser.add_argument("--json", default=None, help="write the records to this file")
  parser.add_argument("--only", default=",".join(ALL), help=f"comma list of: {', '.join(ALL)}")
  parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, quick 2)")
  parser.add_argument(
      "--chunk_s",
      type=float,
      default=None,
      help="seconds of steps per contender per round (default 1.0, quick 0.02)",
  )
  parser.add_argument(
      "--strategies",
      default="none,pmap,mesh",
      help="jax parallelism strategies to time (comma list of none, pmap, mesh)",
  )
  parser.add_argument("--no_torch_compile", action="store_true", help="skip torch.compile")
  parser.add_argument(
      "--cache_models",
      default=None,
      help="models for compile_cache (default gpt,resnet18; quick mlp)",
  )
  args = parser.parse_args(argv)
  args.only = tuple(s for s in args.only.split(",") if s)
  unknown = [s for s in args.only if s not in ALL]
  if unknown:
    parser.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(ALL)}")
  return args


def settings_from(args: argparse.Namespace) -> Settings:
  return Settings(
      quick=args.quick,
      rounds=args.rounds or (2 if args.quick else 5),
      chunk_s=args.chunk_s if args.chunk_s is not None else (0.02 if args.quick else 1.0),
      strategies=tuple(s for s in args.strategies.split(",") if s),
      torch_compile=not args.no_torch_compile and not args.quick,
  )


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Runs the selected benchmarks; returns the finished records."""
  settings = settings_from(args)
  records, measured = [], {}
  for name in args.only:
    if name in MODEL_BENCHES:
      measured[name] = model_bench(name, settings)
      records.append(measured[name])
    elif name == "conv_devices":
      if jax.local_device_count() != 2:
        records.append(conv_devices_subprocess(settings))
        continue
      resnet = measured.get("resnet18")
      if resnet is None or len(resnet["_contenders"]) < 2:
        resnet = model_bench(
            "resnet18", dataclasses.replace(settings, strategies=("none", "pmap")), jax_only=True
        )
      records.append(conv_devices_record(resnet))
    elif name == "input_pipeline":
      records.append(input_pipeline_bench(settings))
    elif name == "compile_cache":
      models = args.cache_models or ("mlp" if args.quick else "gpt,resnet18")
      records.extend(compile_cache_bench(settings, tuple(models.split(","))))
    elif name == "dp":
      records.append(dp_bench(settings))
    print(f"[{name} done]", file=sys.stderr, flush=True)
  return [finish(r) for r in records]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  if argv is None:
    _env.restart_with_allocator()  # the torch side runs under the same allocator
  try:
    _env.configure_process()
  except _env.EnvError as e:
    sys.exit(f"error: {e}")
  args = parse_args(argv)
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  records = run(args)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(records, f, indent=2)
  print(
      f"jax {jax.__version__}, {jax.local_device_count()} host devices, {os.cpu_count()} cores, "
      f"load average at start {load:.1f} (other processes make absolute numbers noisy; "
      "ratios are paired per round)"
  )
  print(table(records))
  return records


if __name__ == "__main__":
  main()
