"""Ahead-of-time check of a training step at pod scale, without the pod.

  python -m jaxmodels.aot experiments.<name> --topology=<v5p-128 | v5p:4x4x4 | local>
      [--num_slices=N] [--json=FILE] [--config.<key>=<value> ...]

Resolves the experiment's config with the overrides as `python -m experiments.<name>` does,
builds the abstract train state with jax.eval_shape (nothing is allocated, so a 175B model
works on a laptop), and compiles the engine's own mesh train step (parallel.MeshStrategy) for
the devices of a TPU topology that libtpu describes (the `tpu` extra; no TPU needed). Prints
per-device memory against the chip's HBM, FLOPs per step, a roofline step time and MFU.

Exit status: 0 when the step fits in HBM, 1 when it does not, 2 on bad input.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import dataclasses
import importlib
import json
import math
import os
import re
import sys
import time
from types import ModuleType
from typing import Any

from absl import flags
from ml_collections import config_flags

from jaxmodels import _env, tpu
from jaxmodels.train import config as config_lib

USAGE = (
    "usage: python -m jaxmodels.aot experiments.<name> --topology=<name|local> "
    "[--num_slices=N] [--json=FILE] [--config.<key>=<value> ...]\n"
    f"topologies: {tpu.FORMS}; local: this machine's devices."
)
# Recomputing the forward pass (remat) adds one forward's FLOPs to the step's three.
REMAT_FLOPS = {"full": 4 / 3, True: 4 / 3}


class AotError(ValueError):
  """Input the check cannot use; the message says what would be valid."""


@dataclasses.dataclass
class Target:
  """The devices to compile for and the per-device numbers of the roofline."""

  name: str
  devices: list[Any]
  peak_flops: float  # per device, FLOP/s
  hbm_bytes: int | None  # per device
  hbm_bandwidth: float | None  # per device, bytes/s


def tpu_target(topology: tpu.Topology) -> Target:
  """The devices libtpu describes for `topology`; this host needs libtpu, not a TPU."""
  try:
    from jax.experimental import topologies
  except ImportError as e:  # pragma: no cover - every supported jax has it
    raise AotError(f"this jax has no jax.experimental.topologies ({e}).") from e
  megacore = topology.chip.cores_per_chip > 1
  try:
    with _quiet_libtpu(topology):
      desc = topologies.get_topology_desc(
          topology_name=topology.name,
          platform="tpu",
          chip_config_name="megacore" if megacore else "default",
          num_slices=topology.num_slices,
      )
  except Exception as e:
    if "libtpu" in str(e).lower() or "plugin" in str(e).lower() or "tpu" not in str(e).lower():
      raise AotError(
          f"libtpu could not describe topology {topology.name} ({e}). Install it with "
          "pip install -e '.[tpu]' (no TPU needed)."
      ) from e
    raise AotError(f"libtpu rejected topology {topology.name}: {e}. Valid {tpu.FORMS}.") from e
  chip = topology.chip
  return Target(
      topology.describe(), list(desc.devices), chip.peak_flops, chip.hbm_bytes, chip.hbm_bandwidth
  )


@contextlib.contextmanager
def _quiet_libtpu(topology: tpu.Topology) -> Iterator[None]:
  """Off a TPU VM libtpu looks for the VM's accelerator type and workers and logs a page of
  warnings when it finds none: name them for it while it starts (a TPU VM's own settings win).
  The variables are removed again, so that nothing this process starts later (an experiment
  would take TPU_WORKER_HOSTNAMES for a Cloud TPU VM) inherits them."""
  settings = {
      "TPU_SKIP_MDS_QUERY": "1",
      # Describing a topology touches no chip; without this a second process (parallel tests,
      # two checks at once) fails on libtpu's one-process-per-host lockfile.
      "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
      "TPU_ACCELERATOR_TYPE": topology.accelerator_type,
      "TPU_WORKER_HOSTNAMES": "localhost",
  }
  added = [k for k in settings if k not in os.environ]
  os.environ.update({k: settings[k] for k in added})
  try:
    yield
  finally:
    for k in added:
      os.environ.pop(k, None)


def local_target() -> Target:
  """This process's devices: a TPU's numbers from the table, others measured or asked."""
  import jax

  from jaxmodels.train import perf

  devices = jax.devices()
  chip = tpu.chip_of_device_kind(devices[0].device_kind)
  name = f"local ({len(devices)} x {devices[0].device_kind})"
  if chip is not None:
    return Target(name, devices, chip.peak_flops, chip.hbm_bytes, chip.hbm_bandwidth)
  stats = devices[0].memory_stats() or {}
  hbm = stats.get("bytes_limit")
  if hbm is None and devices[0].platform == "cpu":
    hbm = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // len(devices)
  peak = perf.matmul_peak_flops()
  if devices[0].platform == "cpu":
    peak /= len(devices)  # host devices share the cores
  return Target(name, devices, peak, hbm, None)


def resolve_target(topology: str, num_slices: int) -> Target:
  if topology == "local":
    if num_slices != 1:
      raise AotError(f"--num_slices={num_slices} needs a TPU topology, not --topology=local.")
    return local_target()
  return tpu_target(tpu.parse(topology, num_slices))


def _mesh_config(config: Any) -> Any:
  """The experiment's config as the check compiles it: mesh parallelism, synthetic batches."""
  config = config.copy_and_resolve_references()
  config.unlock()
  config.parallelism = "mesh"
  config.synthetic_data = True
  return config


def _abstract_batch(data: Any, config: Any, sharding: Any) -> dict[str, Any]:
  """The global batch's shapes from one synthetic example, as ShapeDtypeStructs."""
  import jax

  example = next(iter(data.train_batches(1, config.seed)))
  return {
      k: jax.ShapeDtypeStruct((config.batch_size, *v.shape[1:]), v.dtype, sharding=sharding)
      for k, v in example.items()
  }


def _sharded_bytes(tree: Any, shardings: Any) -> int:
  import jax
  import numpy as np

  leaves = jax.tree_util.tree_leaves(tree)
  specs = jax.tree_util.tree_leaves(shardings)
  return int(
      sum(
          math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
          for x, s in zip(leaves, specs)
      )
  )


def _analytic_flops(model: Any, task: Any, batch: dict[str, Any], batch_size: int) -> float | None:
  """3 x forward FLOPs x batch, as the training loop counts them for MFU."""
  from jaxmodels.models.common import HasFlops

  if not isinstance(model, HasFlops):
    return None
  shapes = [tuple(x.shape)[1:] for x in task.model_args(batch)]
  return 3.0 * model.flops_per_example(*shapes) * batch_size


def _xla_costs(compiled: Any) -> tuple[float, float]:
  """(FLOPs, bytes accessed) of one device's program by XLA's count; 0 where unknown."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # not every backend reports costs
    return 0.0, 0.0
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def _memory(compiled: Any, state: Any, batch: Any, state_shardings: Any) -> dict[str, int | None]:
  """Per-device bytes: the state's shards, and XLA's memory analysis of the step."""
  import jax

  batch_shardings = jax.tree_util.tree_map(lambda x: x.sharding, batch)
  out: dict[str, int | None] = {
      "parameters": _sharded_bytes(state.params, state_shardings.params),
      "optimizer_state": _sharded_bytes(state.opt_state, state_shardings.opt_state),
      "arguments": _sharded_bytes(state, state_shardings) + _sharded_bytes(batch, batch_shardings),
  }
  if isinstance(compiled, int):  # the compiler's count of what did not fit
    return dict(out, outputs=None, aliased=None, temporaries=None, code=None, total=compiled)
  mem = compiled.memory_analysis()
  out.update(
      arguments=int(mem.argument_size_in_bytes),
      outputs=int(mem.output_size_in_bytes),
      aliased=int(mem.alias_size_in_bytes),
      temporaries=int(mem.temp_size_in_bytes),
      code=int(mem.generated_code_size_in_bytes),
  )
  out["total"] = (
      out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] + out["code"]
  )
  return out


_OOM = re.compile(r"memory required for .*?\(([\d.]+)([KMGT])\) exceeds available HBM")


def _out_of_hbm(error: Exception) -> int | None:
  """The bytes a TPU compile reported needing when it ran out of HBM, else None."""
  match = _OOM.search(str(error))
  if "RESOURCE_EXHAUSTED" not in str(error) or not match:
    return None
  return int(float(match.group(1)) * 2 ** (10 * "KMGT".index(match.group(2)) + 10))


def _compile(train_fn: Any, state: Any, batch: Any) -> tuple[Any, float]:
  """(compiled step, or the bytes it needs where the TPU compiler finds it does not fit; s)."""
  start = time.perf_counter()
  try:
    compiled = train_fn.lower(state, batch).compile()
  except Exception as e:  # jax raises JaxRuntimeError; its home module moved between versions
    needed = _out_of_hbm(e)
    if needed is None:
      raise
    compiled = needed
  return compiled, time.perf_counter() - start


def plan(experiment: ModuleType, config: Any, target: Target) -> dict[str, Any]:
  """Compiles the experiment's mesh train step for `target`; returns the report's numbers."""
  import jax

  from jaxmodels.train import optim, parallel, privacy

  config = _mesh_config(config)
  n = len(target.devices)
  config_lib.check(config, n)
  data = experiment.get_data(config)
  model = experiment.get_model(config, data.info)
  task = experiment.get_task(config, data.info)
  tx = optim.make_optimizer(config)
  schedule = optim.learning_rate_schedule(config)
  strategy = parallel.MeshStrategy(
      model,
      fsdp=config.fsdp,
      tensor=config.tensor,
      grad_accum_steps=config.grad_accum_steps,
      devices=target.devices,
      # DP-SGD's step (per-example gradients); the noise's size does not change what compiles.
      dp=privacy.DPSGD(config.dp.l2_clip, 1.0) if config.dp.enabled else None,
  )
  batch = _abstract_batch(data, config, strategy.batch_sharding)
  state = strategy.abstract_state(task, tx, batch, config.seed)
  train_fn = strategy.train_fn(task, tx, schedule, state)
  compiled, compile_s = _compile(train_fn, state, batch)
  if isinstance(compiled, int):
    state_shardings, xla_flops, xla_bytes = strategy.state_sharding(state), 0.0, 0.0
  else:  # the shardings the executable takes its arguments in
    state_shardings = compiled.input_shardings[0][0]
    xla_flops, xla_bytes = _xla_costs(compiled)
  memory = _memory(compiled, state, batch, state_shardings)
  num_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params))
  analytic = _analytic_flops(model, task, batch, config.batch_size)
  return dict(
      topology=target.name,
      num_devices=n,
      device_kind=target.devices[0].device_kind,
      mesh=dict(strategy.mesh.shape),
      num_params=int(num_params),
      batch_size=config.batch_size,
      grad_accum_steps=config.grad_accum_steps,
      remat=str(getattr(model, "remat", "none")),
      memory_per_device=memory,
      bytes_per_device=memory["total"],
      hbm_bytes_per_device=target.hbm_bytes,
      fits=not isinstance(compiled, int)
      and (target.hbm_bytes is None or memory["total"] <= target.hbm_bytes),
      flops_per_step=analytic if analytic is not None else xla_flops * n,
      xla_flops_per_step=xla_flops * n,
      compile_s=compile_s,
      **roofline(target, memory, analytic, xla_flops, xla_bytes, getattr(model, "remat", None)),
  )


def roofline(
    target: Target,
    memory: dict[str, int],
    analytic_flops: float | None,
    xla_flops: float,
    xla_bytes: float,
    remat: Any,
) -> dict[str, float | None]:
  """Step time as the slower of compute at peak FLOP/s and memory traffic at HBM bandwidth, per
  device: a lower bound that leaves out communication and assumes perfect overlap.

  XLA counts a scanned loop's body once, so the compute term takes the larger of its count and
  the analytic one (with remat's recomputed forward), and the memory term at least reads and
  writes the device's arguments once.
  """
  n = len(target.devices)
  model_flops = analytic_flops if analytic_flops is not None else xla_flops * n
  hardware = max(xla_flops, model_flops * REMAT_FLOPS.get(remat, 1.0) / n)
  compute_s = hardware / target.peak_flops
  traffic = max(xla_bytes, 2.0 * memory["arguments"])
  memory_s = traffic / target.hbm_bandwidth if target.hbm_bandwidth else 0.0
  step_s = max(compute_s, memory_s)
  mfu = model_flops / (step_s * n * target.peak_flops) if step_s > 0 else None
  return dict(
      peak_flops_per_device=target.peak_flops,
      hbm_bandwidth_per_device=target.hbm_bandwidth,
      compute_s=compute_s,
      memory_s=memory_s if target.hbm_bandwidth else None,
      est_step_s=step_s,
      est_mfu=mfu,
  )


def _gib(x: float | None) -> str:
  """Bytes in GiB, or MiB below one GiB."""
  if x is None:
    return "unknown"
  return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def _si(x: float | None, unit: str = "") -> str:
  if not x:
    return "unknown"
  for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= scale:
      return f"{x / scale:.3g} {prefix}{unit}"
  return f"{x:.3g} {unit}"


def format_report(r: dict[str, Any]) -> str:
  m, mem, hbm = r["mesh"], r["memory_per_device"], r["hbm_bytes_per_device"]
  share = f" = {100 * mem['total'] / hbm:.0f}% of HBM" if hbm else ""
  mfu = "unknown" if r["est_mfu"] is None else f"{100 * r['est_mfu']:.0f}%"
  memory_s = "n/a" if r["memory_s"] is None else f"{r['memory_s'] * 1e3:.1f} ms"
  lines = [
      f"topology          {r['topology']}: {r['num_devices']} devices ({r['device_kind']})",
      f"mesh              data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']}; batch "
      f"{r['batch_size']}, grad_accum_steps={r['grad_accum_steps']}, remat={r['remat']}",
      f"parameters        {r['num_params']:,} ({_si(r['num_params'])})",
      f"per device        (HBM {_gib(hbm)})",
      f"  parameters      {_gib(mem['parameters'])}",
      f"  optimizer state {_gib(mem['optimizer_state'])}",
      f"  arguments       {_gib(mem['arguments'])} (state and batch)",
      f"  temporaries     {_gib(mem['temporaries'])}",
      f"  outputs         {_gib(mem['outputs'])} ({_gib(mem['aliased'])} reuse donated arguments)",
      f"  code            {_gib(mem['code'])}",
      f"  total           {_gib(mem['total'])}{share}: {'fits' if r['fits'] else 'DOES NOT FIT'}",
      f"FLOPs per step    {_si(r['flops_per_step'], 'FLOP')} analytic (3 x forward x batch); "
      f"XLA {_si(r['xla_flops_per_step'], 'FLOP')} (a scanned body counts once)",
      f"roofline          compute {r['compute_s'] * 1e3:.1f} ms at "
      f"{_si(r['peak_flops_per_device'], 'FLOP/s')}/device, memory {memory_s}: step "
      f"~{r['est_step_s'] * 1e3:.1f} ms, MFU {mfu} (no communication counted)",
      f"compile           {r['compile_s']:.1f} s",
  ]
  return "\n".join(lines)


def advice(r: dict[str, Any]) -> str:
  """The paragraph for a step that does not fit."""
  mem, m = r["memory_per_device"], r["mesh"]
  return (
      f"The step needs {_gib(mem['total'])} per device but {r['topology']} has "
      f"{_gib(r['hbm_bytes_per_device'])} of HBM per device (parameters "
      f"{_gib(mem['parameters'])}, optimizer state {_gib(mem['optimizer_state'])}, temporaries "
      f"{_gib(mem['temporaries'])}). What helps: shard the state over more devices "
      f"(--config.fsdp, now {m['fsdp']}; --config.tensor, now {m['tensor']}), recompute "
      f"activations (--config.model.remat, now {r['remat']}), a smaller per-device batch "
      f"(--config.batch_size, now {r['batch_size']} over {m['data'] * m['fsdp']} data shards) or "
      f"more micro-batches (--config.grad_accum_steps, now {r['grad_accum_steps']}), or a "
      "larger topology."
  )


def _fail(message: str, status: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _experiment_arg(argv: list[str]) -> str:
  positional = [a for a in argv[1:] if not a.startswith("-")]
  if len(positional) != 1:
    _fail(f"name one experiment module (got {positional or 'none'}).\n{USAGE}")
  return positional[0]


def _import_experiment(name: str) -> ModuleType:
  try:
    module = importlib.import_module(name)
  except ImportError as e:
    raise AotError(f"{name} is not an importable experiment module ({e}).") from e
  missing = [
      f for f in ("get_config", "get_data", "get_model", "get_task") if not hasattr(module, f)
  ]
  if missing:
    raise AotError(f"{name} is not an experiment: it has no {', '.join(missing)}.")
  return module


def _parse(argv: list[str], base: Any) -> tuple[flags.FlagValues, Any]:
  """The flags as `python -m experiments.<name>` parses them, plus the check's own."""
  config_lib.check_overrides(argv[1:], base)
  config_lib.prefer_given(argv[1:], base)
  fv = flags.FlagValues()
  flags.DEFINE_string("topology", None, "TPU topology or 'local'.", flag_values=fv, required=True)
  flags.DEFINE_integer("num_slices", 1, "Slices of the topology (multi-slice).", flag_values=fv)
  flags.DEFINE_string("json", None, "Write the report as one JSON object here.", flag_values=fv)
  config_flag = config_flags.DEFINE_config_dict(
      "config", base, lock_config=True, flag_values=fv, sys_argv=argv
  )
  try:
    fv(argv)
    fv.validate_all_flags()
  except flags.Error as e:
    raise AotError(f"{e}\n{USAGE}") from e
  return fv, config_flag.value


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("-h", "--help") for a in argv[1:]):
    print(__doc__.strip())
    return
  _env.configure_process()
  try:
    experiment = _import_experiment(_experiment_arg(argv))
    fv, config = _parse(argv, experiment.get_config())
    target = resolve_target(fv.topology, fv.num_slices)
    report = plan(experiment, config, target)
  except (AotError, tpu.TopologyError, config_lib.ConfigError) as e:
    _fail(str(e))
  report["experiment"] = experiment.__name__
  print(format_report(report), flush=True)
  if fv.json:
    with open(fv.json, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2, sort_keys=True)
  if not report["fits"]:
    _fail(advice(report), status=1)


if __name__ == "__main__":
  main()
