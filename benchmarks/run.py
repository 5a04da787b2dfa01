"""Train-step throughput of the jax engine, side by side with PyTorch and the machine's peak.

  python -m benchmarks.run [--quick] [--json=FILE] [--only=gpt,resnet18,...] [--repeat=N]

Benchmarks:
  gpt, resnet18, lstm, mlp  the engine's train step (parallel.make(...).train_fn) against the same
                            model in PyTorch (eager; ResNet NCHW and channels_last; torch.compile
                            when it works), and MFU against the in-run XLA float32 matmul peak
                            from analytic FLOPs (3 x forward per example). resnet18 and lstm
                            are also timed with their oneDNN kernels under pmap
                            (jax:pmap+onednn, where built; --no_kernels skips them).
  conv_devices              the ResNet-18 step on 2 host devices (pmap) over 1 ('none').
  input_pipeline            fashion_mnist_cnn's step fed by the real grain pipeline vs synthetic
                            batches (needs `python -m jaxmodels.data.prepare fashion_mnist`).
  compile_cache             time to the first step in a fresh process, cold vs warm persistent
                            compilation cache.
  gpt_small                 a whole run end to end (issue 20's laptop GPT: 4 layers x 128, batch
                            12, context 64, 2000 steps; --quick 60): `python -m
                            experiments.shakespeare_gpt` against a plain PyTorch eager script
                            (benchmarks.torch_models) with the same hyper-parameters, eval schedule
                            (20 sampled validation batches every 500 steps, whole splits at the
                            end) and validation text, each in fresh processes; PyTorch runs with
                            the faster of 1 and all-core threads (a probe, its time left out).
                            ratio = torch wall / jax wall; step_ratio, start-ups and both
                            validation losses beside it.
                            Needs `python -m jaxmodels.data.prepare shakespeare`; the full run
                            takes ~5 minutes per round.
  dp                        experiments.mnist_dp's CNN: the DP-SGD step (per-example gradients,
                            clipping, noise) vs the plain step, same model, batch and device;
                            vmap_ratio the same with jax.vmap per-example gradients.

Every contender is timed in rounds, one chunk of steps each in turn, after warm-up; per-step
times are medians over rounds and ratios are medians of per-round ratios, printed with their
range over the rounds (min-max), so load from other processes hits both sides alike.
--repeat=N runs the whole table N times and reports each ratio's median over the N runs with
their range: a claim is one that the repeats agree on.

The process splits the host CPU into one XLA device per core (jaxmodels does this on import)
so that 'none' (one device), 'pmap' and 'mesh' (sharded jit over the same 2 devices) can all be
measured; each model reports its fastest engine strategy.
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
ALL = MODEL_BENCHES + ("conv_devices", "input_pipeline", "compile_cache", "gpt_small", "dp")
# (what the goal compares, the threshold, True when higher is better)
GOALS = {
    "gpt": ("ratio_vs_torch", 1.1, True),
    "gpt:mfu": ("mfu", 0.80, True),
    "resnet18": ("ratio_vs_torch", 1.1, True),
    "lstm": ("ratio_vs_torch", 1.1, True),
    "mlp": ("ratio_vs_torch", 1.5, True),
    "conv_devices": ("ratio", 1.6, True),
    "compile_cache": ("ratio", 0.3, False),
    "gpt_small": ("ratio", 1.2, True),
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
  kernels: bool = True  # time resnet18 and lstm with their oneDNN kernels too (jax:pmap+onednn)


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


def paired(
    contenders: list[Contender], rounds: int, chunk_s: float, quick: bool
) -> dict[str, object]:
  """Two contenders (a, b) timed in paired rounds on one device: each one's seconds per step
  (`{label}_step_s`) and the median and range of the per-round ratios a / b."""
  settings = Settings(quick, rounds, chunk_s, ("none",), torch_compile=False)
  contest(contenders, settings)
  a, b = contenders
  ratios = paired_ratios(a, b)
  return {
      f"{a.label}_step_s": a.step_s,
      f"{b.label}_step_s": b.step_s,
      f"ratio_{a.label}_over_{b.label}": statistics.median(ratios),
      "ratio_range": [min(ratios), max(ratios)],
      "rounds": rounds,
  }


def paired_ratios(slow: Contender, fast: Contender) -> list[float]:
  """slow_time / fast_time of each round (> 1: `fast` is faster)."""
  return [a / b for a, b in zip(slow.times, fast.times)]


def paired_ratio(slow: Contender, fast: Contender) -> float:
  """Median over rounds of slow_time / fast_time (> 1: `fast` is faster)."""
  return statistics.median(paired_ratios(slow, fast))


def spread(values: list[float]) -> dict[str, float]:
  """The median of `values` with their range: {'': median, '_min': min, '_max': max}."""
  return {"": statistics.median(values), "_min": min(values), "_max": max(values)}


def put_spread(record: dict[str, Any], key: str, values: list[float]) -> None:
  """Sets record[key] to the median of `values`, and key_min / key_max to their range."""
  for suffix, value in spread(values).items():
    record[key + suffix] = value


# The keys that --repeat combines over whole runs of the table (each a median over rounds).
REPEATED_KEYS = ("ratio_vs_torch", "ratio", "mfu", "step_ratio", "ratio_vs_compile", "vmap_ratio")


def combine_repeats(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
  """One record per benchmark from several runs of the table: each key of REPEATED_KEYS that
  every run measured becomes the median over runs, with key_min / key_max their range and
  `repeats` the values; the other fields are the first run's."""
  names = [r["benchmark"] for r in runs[0]]
  out = []
  for name in names:
    same = [r for run in runs for r in run if r["benchmark"] == name]
    record = dict(same[0])
    record["repeats"] = {}
    for key in REPEATED_KEYS:
      values = [r.get(key) for r in same]
      if len(same) == len(runs) and all(isinstance(v, (int, float)) for v in values):
        put_spread(record, key, values)
        record["repeats"][key] = values
    out.append(finish(record))
  return out


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


def _kernel_spec(spec: jax_side.Spec, settings: Settings, notes: list[str]) -> jax_side.Spec | None:
  """The same model with its oneDNN kernels, when it has them and they load; timed under pmap
  only: 'none' would give each call one core of this 2-device process (onednn.call_threads) and
  the FFI calls have no sharding rule for 'mesh'."""
  wanted = settings.kernels and "pmap" in settings.strategies
  if not wanted or spec.name not in jax_side.KERNEL_FIELDS:
    return None
  from jaxmodels.kernels import onednn  # noqa: PLC0415

  if reason := onednn.unavailable_reason():
    notes.append(f"oneDNN kernels not timed: {reason}")
    return None
  return jax_side.with_kernels(spec, "onednn")


def _jax_contenders(spec: jax_side.Spec, settings: Settings, notes: list[str]) -> list[Contender]:
  runs = [(strategy, spec, f"jax:{strategy}") for strategy in settings.strategies]
  if kernel_spec := _kernel_spec(spec, settings, notes):
    runs.append(("pmap", kernel_spec, "jax:pmap+onednn"))
  out = []
  for strategy, s, label in runs:
    if strategy != "none" and jax.local_device_count() < 2:
      continue
    try:
      step = jax_side.JaxStep(s, strategy)
    except ValueError as e:
      notes.append(f"{strategy}: {e}")
      continue
    out.append(Contender(label, step.run))
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
      "ratio_vs_torch": None,
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
  put_spread(record, "mfu", mfus)
  if torch_best:
    put_spread(record, "ratio_vs_torch", paired_ratios(torch_best, jax_best))
  return record


def conv_devices_record(resnet: dict[str, Any]) -> dict[str, Any]:
  """ResNet-18 on 2 host devices (pmap) over one device ('none'), paired per round."""
  by = {c.label: c for c in resnet["_contenders"]}
  one, two = by.get("jax:none"), by.get("jax:pmap")
  if not (one and two):
    return _skipped("conv_devices", "needs jax:none and jax:pmap on 2 host devices")
  batch = resnet["jax_per_s"] * (by[resnet["jax_variant"]].step_s)
  record = {
      "benchmark": "conv_devices",
      "jax_per_s": batch / two.step_s,
      "one_device_per_s": batch / one.step_s,
      "note": "resnet18 step: pmap over 2 host devices / parallelism 'none'",
  }
  put_spread(record, "ratio", paired_ratios(one, two))
  return record


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
  record = {
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
  put_spread(record, "ratio", paired_ratios(by["synthetic"], by["real"]))
  return record


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


# ---------- gpt_small: a whole run, end to end

# The laptop configuration of issue 20: shakespeare_gpt's model (4 layers x 128) and optimizer at
# batch 12, context 64. FULL is the run itself; QUICK a short one with the same eval schedule.
# Both sides evaluate 60 windows at a time: the intermediate evaluations read 4 such batches
# (240 windows), the final one every window of validation and test.
GPT_SMALL = dict(
    batch_size=12,
    context=64,
    eval_every=500,
    eval_batch_size=60,
    eval_batches=4,
    sample_tokens=200,
)
GPT_SMALL_STEPS = {False: 2000, True: 60}


def gpt_small_args(quick: bool) -> dict[str, Any]:
  """The run's hyper-parameters, from experiments.shakespeare_gpt's config (both sides)."""
  from experiments import shakespeare_gpt

  config = shakespeare_gpt.get_config()
  steps = GPT_SMALL_STEPS[quick]
  return dict(
      GPT_SMALL,
      steps=steps,
      eval_every=20 if quick else GPT_SMALL["eval_every"],
      warmup=min(config.warmup_steps, steps // 10),
      lr=config.learning_rate,
      b2=config.b2,
      weight_decay=config.weight_decay,
      clip=config.grad_clip_norm,
      seed=config.seed,
      **{k: config.model[k] for k in ("model_dim", "num_layers", "num_heads", "mlp_dim")},
  )


def gpt_small_data(path: str, args: dict[str, Any]) -> dict[str, Any]:
  """Writes what the PyTorch script reads (as nanoGPT's prepare.py would): the train text, the
  validation and test windows of our evaluation and the sample the intermediate evals read."""
  import numpy as np

  from jaxmodels import data as data_lib
  from jaxmodels.data import datasets

  ds = data_lib.load("shakespeare", block_size=args["context"])
  arrays = {"train": ds.text["train"]}
  for split, short in (("validation", "val"), ("test", "test")):
    windows = ds.tables[split].take(np.arange(len(ds.tables[split])))
    arrays[f"{short}_inputs"], arrays[f"{short}_targets"] = windows["inputs"], windows["targets"]
  n = len(arrays["val_inputs"])
  arrays["eval_sample"] = datasets.eval_sample(n, args["eval_batches"] * args["eval_batch_size"])
  vocab = ds.info["vocab"]
  arrays["prompt"] = np.array([vocab.index(c) for c in "ROMEO:" if c in vocab], np.int32)
  np.savez(path, **arrays)
  return dict(args, vocab_size=len(vocab))


def _jax_run(args: dict[str, Any], workdir: str) -> dict[str, Any]:
  """experiments.shakespeare_gpt in a fresh process; its summary plus the process's wall."""
  steps = args["steps"]
  argv = [sys.executable, "-m", "experiments.shakespeare_gpt", f"--workdir={workdir}"] + [
      f"--config.{k}={v}"
      for k, v in dict(
          batch_size=args["batch_size"],
          block_size=args["context"],
          num_train_steps=steps,
          warmup_steps=args["warmup"],
          eval_every_steps=args["eval_every"],
          eval_batch_size=args["eval_batch_size"],
          eval_batches=args["eval_batches"],
          sample_tokens=args["sample_tokens"],
          checkpoint_every_steps=min(500, steps),
          log_every_steps=min(50, steps),
          progress_bar=False,
      ).items()
  ]
  t = time.time()
  proc = subprocess.run(argv, capture_output=True, text=True, check=False)
  wall = time.time() - t
  if proc.returncode != 0:
    raise RuntimeError(f"jax run failed: {proc.stderr.strip()[-300:]}")
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  return {
      "wall_s": wall,
      "startup_s": summary["startup_s"],
      "step_s": args["batch_size"] / summary["examples_per_s"],
      "eval_loss": summary["eval_loss"],
      "test_loss": summary["test_loss"],
  }


def _torch_run(args: dict[str, Any], data_path: str) -> dict[str, Any]:
  """benchmarks.torch_models' GPT script in a fresh process; its report plus the wall."""
  argv = [
      sys.executable,
      "-m",
      "benchmarks.torch_models",
      f"--gpt_small={data_path}",
      f"--args={json.dumps(args)}",
  ]
  t = time.time()
  proc = subprocess.run(argv, capture_output=True, text=True, check=False)
  wall = time.time() - t
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"torch run failed: {proc.stderr.strip()[-300:]}")
  out = json.loads(lines[-1])
  probe = out["probe_s"]  # choosing the thread count is not the script's own work
  return dict(out, wall_s=wall - probe, startup_s=out["first_step_done"] - t - probe)


def gpt_small_bench(settings: Settings) -> dict[str, Any]:
  """End-to-end wall time of the same run trained by the engine (the experiment command) and
  by a plain PyTorch eager script, in paired rounds of fresh processes (order alternating);
  ratio = torch wall / jax wall per round, step_ratio the same of the mean step times."""
  try:
    import torch  # noqa: F401
  except ImportError:
    return _skipped("gpt_small", "torch not installed (pip install -e '.[bench]')")
  args = gpt_small_args(settings.quick)
  jax_c, torch_c = Contender("jax", None), Contender("torch", None)
  jax_steps, torch_steps, runs = Contender("jax", None), Contender("torch", None), []
  with tempfile.TemporaryDirectory() as tmp:
    data_path = os.path.join(tmp, "shakespeare.npz")
    try:
      args = gpt_small_data(data_path, args)
    except Exception as e:  # noqa: BLE001 - a missing dataset is the usual cause
      return _skipped(
          "gpt_small", f"skipped: prepare shakespeare ({type(e).__name__}: {str(e)[:120]})"
      )
    for r in range(settings.rounds):
      pair = {}
      for side in ("jax", "torch") if r % 2 == 0 else ("torch", "jax"):
        if side == "jax":
          pair[side] = _jax_run(args, os.path.join(tmp, f"run{r}"))
        else:
          pair[side] = _torch_run(args, data_path)
      runs.append(pair)
      jax_c.times.append(pair["jax"]["wall_s"])
      torch_c.times.append(pair["torch"]["wall_s"])
      jax_steps.times.append(pair["jax"]["step_s"])
      torch_steps.times.append(pair["torch"]["step_s"])
  last = runs[-1]
  med = lambda side, key: statistics.median(p[side][key] for p in runs)
  record = {
      "benchmark": "gpt_small",
      "jax_per_s": args["batch_size"] / jax_steps.step_s,
      "torch_per_s": args["batch_size"] / torch_steps.step_s,
      "step_ratio": paired_ratio(torch_steps, jax_steps),
      "jax_wall_s": jax_c.step_s,
      "torch_wall_s": torch_c.step_s,
      "jax_startup_s": med("jax", "startup_s"),
      "torch_startup_s": med("torch", "startup_s"),
      "jax_eval_loss": last["jax"]["eval_loss"],
      "torch_eval_loss": last["torch"]["eval_loss"],
      "steps": args["steps"],
      "rounds": runs,
      "note": (
          f"{args['steps']} steps end to end, wall jax {jax_c.step_s:.0f}s torch "
          f"{torch_c.step_s:.0f}s (start-up {med('jax', 'startup_s'):.1f}s vs "
          f"{med('torch', 'startup_s'):.1f}s), step ratio "
          f"{paired_ratio(torch_steps, jax_steps):.2f}, validation loss "
          f"{last['jax']['eval_loss']:.2f} vs {last['torch']['eval_loss']:.2f}"
      ),
  }
  put_spread(record, "ratio", paired_ratios(torch_c, jax_c))
  return record


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
  dp = privacy.DPSGD(config.dp.l2_clip, 1.0, config.dp.per_example)
  plain = Contender("plain", jax_side.JaxStep(spec, "none").run)
  private = Contender("dp", jax_side.JaxStep(spec, "none", dp=dp).run)
  vmap_dp = dataclasses.replace(dp, per_example="vmap")
  vmap = Contender("dp_vmap", jax_side.JaxStep(spec, "none", dp=vmap_dp).run)
  contest([plain, private, vmap], settings)
  record = {
      "benchmark": "dp",
      "jax_per_s": n / private.step_s,
      "plain_per_s": n / plain.step_s,
      "vmap_per_s": n / vmap.step_s,
      "note": (
          f"mnist_dp CNN batch {n}, parallelism 'none'; ratio = DP-SGD ({dp.per_example}) / "
          "plain throughput; vmap_ratio = the same with per-example gradients by jax.vmap"
      ),
  }
  put_spread(record, "ratio", paired_ratios(plain, private))
  put_spread(record, "vmap_ratio", paired_ratios(plain, vmap))
  record["note"] += f" ({record['vmap_ratio']:.2f})"
  return record


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


def _fmt_spread(record: dict[str, Any], key: str, spec: str) -> str:
  """record[key] and, where measured, its range: '1.05 (0.98-1.12)'."""
  text = _fmt(record.get(key), spec)
  low, high = record.get(f"{key}_min"), record.get(f"{key}_max")
  if record.get(key) is not None and low is not None and high is not None:
    text += f" ({format(low, spec)}-{format(high, spec)})"
  return text


def table(records: list[dict[str, Any]]) -> str:
  """A plain-text table of the records."""
  rows = [("benchmark", "jax/s", "torch/s", "ratio", "mfu", "variant", "goal", "met", "note")]
  for r in records:
    key = "ratio_vs_torch" if r.get("ratio_vs_torch") is not None else "ratio"
    variant = " vs ".join(v for v in (r.get("jax_variant"), r.get("torch_variant")) if v)
    met = {True: "yes", False: "NO", None: "-"}[r.get("goal_met")]
    rows.append(
        (
            r["benchmark"],
            _fmt(r.get("jax_per_s")),
            _fmt(r.get("torch_per_s")),
            _fmt_spread(r, key, ".2f"),
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
  parser.add_argument(
      "--repeat",
      type=int,
      default=1,
      help="run the whole table this many times; each ratio is then the median over the runs, "
      "with their range",
  )
  parser.add_argument("--no_torch_compile", action="store_true", help="skip torch.compile")
  parser.add_argument(
      "--no_kernels",
      action="store_true",
      help="skip the jax:pmap+onednn contenders of resnet18 and lstm (jaxmodels.kernels)",
  )
  parser.add_argument(
      "--cache_models",
      default=None,
      help="models for compile_cache (default gpt,resnet18; quick mlp)",
  )
  args = parser.parse_args(argv)
  if args.repeat < 1 or (args.rounds is not None and args.rounds < 1):
    parser.error(f"--repeat={args.repeat} and --rounds={args.rounds} must be >= 1")
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
      kernels=not args.no_kernels,
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
            "resnet18",
            dataclasses.replace(settings, strategies=("none", "pmap"), kernels=False),
            jax_only=True,
        )
      records.append(conv_devices_record(resnet))
    elif name == "input_pipeline":
      records.append(input_pipeline_bench(settings))
    elif name == "gpt_small":
      records.append(gpt_small_bench(settings))
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
  runs = []
  for i in range(args.repeat):
    runs.append(run(args))
    if args.repeat > 1:
      print(f"run {i + 1} of {args.repeat}:\n{table(runs[-1])}", flush=True)
  records = combine_repeats(runs) if args.repeat > 1 else runs[0]
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(records, f, indent=2)
  print(
      f"jax {jax.__version__}, {jax.local_device_count()} host devices, {os.cpu_count()} cores, "
      f"load average at start {load:.1f} (other processes make absolute numbers noisy; "
      "ratios are paired per round: median (min-max) over rounds"
      + (f", then the median (range) of {args.repeat} runs)" if args.repeat > 1 else ")")
  )
  print(table(records))
  return records


if __name__ == "__main__":
  main()
