"""The one training loop: every experiment runs through `train_and_evaluate`."""

from __future__ import annotations

import collections
from collections.abc import Callable
import contextlib
import errno
import json
import logging
import os
import signal
import time
from types import ModuleType
from typing import Any

from etils import epath
import jax
import ml_collections
import numpy as np

from jaxmodels import quantize, tasks
from jaxmodels.models.common import HasFlops
from jaxmodels.train import (
    checkpoint,
    config as config_lib,
    finetune,
    lock,
    metrics as metrics_lib,
    optim,
    parallel,
    perf,
    privacy,
    runinfo,
    storage,
)

# config.profile_steps traces steps after this many, so compilation and warm-up stay out of it.
PROFILE_AFTER_STEPS = 10


class NonFiniteError(RuntimeError):
  """The loss or gradient became NaN or infinite; no checkpoint of that state is written."""


class WorkdirError(RuntimeError):
  """The workdir cannot be used."""


class Stopped(Exception):
  """SIGTERM/SIGINT arrived; a checkpoint was written at `step`."""

  def __init__(self, step: int, signum: int):
    super().__init__(step, signum)
    self.step, self.signum = step, signum


def prepare_workdir(workdir: str) -> None:
  """Creates the workdir and proves it writable before any training starts; a remote one
  (gs://) must answer within storage.PROBE_TIMEOUT_S."""
  if storage.is_remote(workdir):
    storage.check_remote(workdir)
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory; choose another path.")
  try:
    os.makedirs(workdir, exist_ok=True)
    storage.write_probe(workdir)
  except OSError as e:
    raise WorkdirError(
        f"--workdir={workdir} is not writable ({e.strerror}); choose a directory "
        "you can write to, or fix its permissions or free disk space."
    ) from e


def read_json(path: str, advice: str) -> dict[str, Any]:
  """The JSON object in a workdir file; WorkdirError naming the file and `advice` if it is
  damaged (cut off by a full disk, overwritten...)."""
  try:
    value = json.loads(epath.Path(path).read_text())
  except (ValueError, UnicodeDecodeError) as e:
    problem = f"is not valid JSON ({e})"
  else:
    if isinstance(value, dict):
      return value
    problem = f"holds a JSON {type(value).__name__}, not an object"
  raise WorkdirError(f"{path} {problem}. {advice}")


def check_resume_config(workdir: str, config: ml_collections.ConfigDict, allow: bool) -> None:
  path = os.path.join(workdir, "config.json")
  if allow or not epath.Path(path).exists():
    return
  saved = read_json(
      path,
      "It records the config of the run this workdir resumes; its checkpoints are not affected. "
      "Restore the file (a copy, or the same values from the original command), pass "
      "--allow_config_change to resume them with this command's config (config.json is then "
      "rewritten), or use a new --workdir.",
  )
  diff = config_lib.differing_keys(saved, config)
  if diff:
    shown = ", ".join(
        f"{k} (saved {config_lib.flat_keys(ml_collections.ConfigDict(saved)).get(k)!r})"
        for k in diff
    )
    why = ""
    if "num_train_steps" in diff and config_lib.calibrates_noise(config_lib.flat_keys(config)):
      why = (
          " num_train_steps is the horizon the DP-SGD noise was calibrated to (config.dp.epsilon): "
          "resumed with another one, the noise would change and the target epsilon would not hold."
      )
    elif "num_train_steps" in diff:
      why = (
          f" num_train_steps is the horizon of the {config.schedule!r} learning-rate schedule: "
          "resumed with another one, the learning rate would jump."
      )
    raise config_lib.ConfigError(
        f"{path} was written by a run with a different config: {shown}.{why} Resume with the "
        "same values, use a new --workdir, or pass --allow_config_change to resume anyway."
    )


class _Signals:
  """Turns SIGTERM/SIGINT into a request to stop after the current step.

  With several processes all must stop after the same step, so SIGTERM is left to jax's
  preemption service, which agrees on that step, and SIGINT keeps its default. Without that
  service (jax_enable_preemption_service off) each process catches SIGTERM itself and the
  processes agree on the step by gathering their flags at every step.
  """

  def __init__(self):
    self.signum = 0
    self._old = {}
    self._multi = jax.process_count() > 1
    self._own_sigterm = False  # multi-process, without the preemption service
    self._caught = 0

  def poll(self, step: int) -> int:
    """The signal to stop on after `step`, or 0; every process must call it at every step."""
    if not self._multi or self.signum:
      return self.signum
    from jax.experimental import multihost_utils

    if not self._own_sigterm:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signum = signal.SIGTERM
        return self.signum
      except RuntimeError as e:  # jax_enable_preemption_service is off
        print(
            f"WARNING: jax's preemption service is off ({e}): each process catches SIGTERM "
            "itself, and the processes agree on the step to stop at by exchanging a flag at "
            "every step.",
            flush=True,
        )
        self._own_sigterm = True
        self._catch((signal.SIGTERM,))
    flags = multihost_utils.process_allgather(np.int32(self._caught))
    self.signum = int(np.max(flags))
    return self.signum

  def __enter__(self):
    if not self._multi:
      self._catch((signal.SIGTERM, signal.SIGINT))
    return self

  def _catch(self, signals) -> None:
    for sig in signals:
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass

  def _handle(self, signum, frame):
    del frame
    self._caught = signum
    if not self._multi:
      self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def train_and_evaluate(
    experiment: ModuleType,
    config: ml_collections.ConfigDict,
    workdir: str,
    allow_config_change: bool = False,
    command: str | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
  """Trains `experiment` to config.num_train_steps in `workdir`, resuming if it can.

  The experiment module provides get_data(config), get_model(config, info) and
  get_task(config, info). Returns the summary also written to workdir/summary.json, which also
  records `command` (the command line that ran it, when there is one) and runinfo.facts.
  summary.json's startup_s counts from `started_at` (the command line passes the process's
  start) to the end of this invocation's first step; without it, from this call.
  """
  start_time = time.time()
  started_at = start_time if started_at is None else started_at
  config = ml_collections.FrozenConfigDict(config)
  is_main = jax.process_index() == 0
  check_config(config)  # before the workdir is created: a bad value leaves no trace
  before, missing = _entries(workdir), _missing_dirs(workdir)
  prepare_workdir(workdir)
  with _workdir_lock(workdir, is_main):
    try:
      return _train_and_evaluate(
          experiment, config, workdir, allow_config_change, (started_at, start_time), command
      )
    except BaseException:
      if is_main:
        _undo_untrained(workdir, before, missing)
      raise


def check_config(config: ml_collections.ConfigDict) -> None:
  """config.check for this process's devices and processes."""
  config_lib.check(config, jax.device_count())
  if config.parallelism == "none" and jax.process_count() > 1:
    raise config_lib.ConfigError(
        f"config.parallelism='none' trains on one device, but this run has {jax.process_count()} "
        "processes; use --config.parallelism=pmap or mesh."
    )


def _entries(workdir: str) -> set[str]:
  """The names in a local workdir; none where it does not exist yet (or is remote)."""
  if "://" in workdir or not os.path.isdir(workdir):
    return set()
  return set(os.listdir(workdir))


def _missing_dirs(workdir: str) -> list[str]:
  """The workdir and those of its parents that do not exist yet, deepest first."""
  missing, path = [], os.path.abspath(workdir)
  while "://" not in workdir and not os.path.exists(path):
    missing.append(path)
    path = os.path.dirname(path)
  return missing


def _undo_untrained(workdir: str, before: set[str], missing: list[str]) -> None:
  """After a run that failed before saving any checkpoint, removes what it created (the lock,
  an empty checkpoints/, config.json and run.json, and the directories it made if they are left
  empty), so that a failed command leaves no workdir for the next one to resume or refuse."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if "://" in workdir or os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    return
  for name in ("config.json", "run.json", ".lock"):  # the lock's file goes while it is held
    if name not in before:
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(workdir, name))
  made = ([] if "checkpoints" in before else [ckpt_dir]) + missing
  for path in made:
    try:
      os.rmdir(path)
    except OSError:  # not empty (or gone): what is in it stays
      if os.path.exists(path):
        break


def _workdir_lock(workdir: str, is_main: bool) -> contextlib.AbstractContextManager:
  """Process 0 holds the workdir's lock for the run; the other processes of a job share it."""
  return lock.WorkdirLock(workdir) if is_main else contextlib.nullcontext()


def _train_and_evaluate(experiment, config, workdir, allow_config_change, times, command):
  started_at, start_time = times
  is_main = jax.process_index() == 0
  check_resume_config(workdir, config, allow_config_change)
  if config.compilation_cache_dir == "none":
    perf.disable_compilation_cache()
  else:
    perf.enable_compilation_cache(config.compilation_cache_dir or None)

  data = experiment.get_data(config)
  model = finetune.freeze_batch_stats(experiment.get_model(config, data.info), config)
  model = quantize.for_training(model, config)  # config.quantization="int8_qat": QAT
  task: tasks.Task = experiment.get_task(config, data.info)
  tx = optim.make_optimizer(config)
  schedule = optim.learning_rate_schedule(config)
  shard = dict(process_index=jax.process_index(), process_count=jax.process_count())

  batches = data.train_batches(config.batch_size, config.seed, 0, **shard)
  init_batch = next(batches)
  _close(batches)
  dp = _dp_plan(config, data, model, task, init_batch, is_main)
  strategy = parallel.make(
      config.parallelism,
      model,
      config.fsdp,
      config.grad_accum_steps,
      config.tensor,
      dp=dp.sgd if dp else None,
  )
  ckpts = checkpoint.Checkpoints(workdir, config.keep_checkpoints)
  state, meta = _initial_state(strategy, ckpts, task, tx, init_batch, config.seed)
  fine_tune = config.init_from and not meta  # a fresh start: a resumed run never reads it again
  if fine_tune:
    state, report = finetune.initialise(
        config.init_from, state, strategy.model, task, tx, init_batch
    )
    if is_main:
      print(report.text(), flush=True)
  start = int(state.step)
  if is_main:  # only now: a config that cannot build or restore leaves the workdir as it was
    _write_json(os.path.join(workdir, "config.json"), json.loads(config_lib.to_json(config)))
    _write_json(os.path.join(workdir, "run.json"), {"experiment": experiment_name(experiment)})
  if fine_tune:  # checkpoint 0 is the run's own start from now on
    ckpts.save(state, {"step": 0, "wall_s": 0.0, "train_metrics": {}, "init_from": report.source})
  summary_path = os.path.join(workdir, "summary.json")
  summary = _finished_summary(summary_path) if start >= config.num_train_steps else None
  if summary is not None:
    ckpts.close()
    if is_main:
      print(f"{workdir} already finished {start} steps; nothing to do. Summary: {summary_path}")
    return summary

  about = (experiment_name(experiment), command)
  run = _Run(config, workdir, data, task, strategy, ckpts, is_main, shard, start, about, dp)
  try:
    summary = run.train(state, start, tx, schedule, meta, start_time, started_at)
  except BaseException as e:
    failed = _write_error(e, workdir, ckpts)
    run.close(quiet=True)  # a full disk fails the closing writes too: report the first error
    if failed:
      raise failed from None
    raise
  run.close()
  if hasattr(experiment, "on_finish"):
    final = strategy.get_state(run.final_state)  # every process: a mesh state is gathered
    if is_main:
      params = optim.eval_params(final.params, final.opt_state)
      variables = {"params": params, **final.model_state}
      summary.update(experiment.on_finish(model, variables, data.info, config))
      _write_json(summary_path, summary)
  return summary


def _dp_plan(config, data, model, task, batch, is_main) -> privacy.Plan | None:
  """DP-SGD's settings (the noise calibrated to a target epsilon) after refusing a model that
  mixes the examples of a batch; None when config.dp is off."""
  if not config.dp.enabled:
    return None
  privacy.check_model(model, task, batch)
  dp = privacy.plan(config, data.num_examples("train"))
  if is_main:
    print(dp.describe(config.num_train_steps), flush=True)
  return dp


def _write_error(error: BaseException, workdir: str, ckpts) -> storage.StorageError | None:
  """The paragraph for a metrics or event file write that found the disk full, or a file of the
  workdir that cannot be written (permissions, a read-only filesystem); else None."""
  if not isinstance(error, OSError):
    return None
  denied = error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
  in_workdir = str(error.filename or "").startswith(str(workdir))
  if not (storage.is_full(error) or (denied and in_workdir)):
    return None
  return storage.StorageError(
      f"writing to {workdir} failed: {storage.write_failure(error)}. {ckpts.intact(error)}"
  )


def _finished_summary(path: str) -> dict[str, Any] | None:
  """summary.json of a finished run; None if there is none or it is damaged (the final
  evaluation then runs again and rewrites it)."""
  if not epath.Path(path).exists():
    return None
  try:
    return read_json(path, "Evaluating the final checkpoint again to rewrite it.")
  except WorkdirError as e:
    print(e, flush=True)
    return None


def _initial_state(strategy, ckpts, task, tx, batch, seed) -> tuple[Any, dict[str, Any]]:
  """(state, checkpoint meta): the latest checkpoint's, else a fresh state ({} meta). A mesh
  state restores straight into its shardings, whatever mesh wrote the checkpoint, and a fresh
  one is created sharded: neither is ever whole on one device."""
  if isinstance(strategy, parallel.MeshStrategy):
    restored = ckpts.restore_latest(strategy.abstract_state(task, tx, batch, seed), True)
    return restored or (strategy.init_state(task, tx, batch, seed), {})
  state = strategy.init_state(task, tx, batch, seed)
  return ckpts.restore_latest(state) or (state, {})


def _close(batches: Any) -> None:
  """Closes a batch iterator that can be closed: grain's prefetch iterators stop their threads."""
  close = getattr(batches, "close", None)
  if close is not None:
    close()


def recorded_split(split: str) -> str:
  """The name metrics.jsonl, summary.json and TensorBoard give a dataset split: the held-out
  "validation" split is "eval"."""
  return "eval" if split == "validation" else split


def experiment_name(experiment: ModuleType) -> str:
  """The importable name, also when the module runs as __main__."""
  spec = getattr(experiment, "__spec__", None)
  return spec.name if spec is not None else experiment.__name__


def _write_json(path: str, obj: Any) -> None:
  """Replaces `path` whole: through a temporary file locally, in one upload on gs:// (epath)."""
  text = json.dumps(obj, indent=2, sort_keys=True)
  if "://" in path:
    epath.Path(path).write_text(text)
    return
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


class InFlight:
  """Bounds how many dispatched computations may be unfinished: adding one more than `limit`
  waits for the oldest. With 2 host CPU devices, dispatching many data-parallel steps without
  waiting deadlocked XLA's cross-device all-reduce (the process aborted after 40 s in a
  rendezvous); waiting on each step avoided it."""

  def __init__(self, limit: int):
    self.limit = limit
    self.queue: collections.deque = collections.deque()

  def add(self, outputs: Any) -> Any:
    self.queue.append(outputs)
    if len(self.queue) > self.limit:
      jax.block_until_ready(self.queue.popleft())
    return outputs


class _Run:
  """State of one invocation of the loop: writers, compiled steps, timers."""

  def __init__(
      self, config, workdir, data, task, strategy, ckpts, is_main, shard, start, about, dp
  ):
    self.config, self.workdir, self.data, self.task = config, workdir, data, task
    self.dp = dp  # privacy.Plan of a DP-SGD run, else None
    self.strategy, self.ckpts, self.is_main, self.shard = strategy, ckpts, is_main, shard
    self.writer = metrics_lib.MetricWriter(workdir, enabled=is_main, start_step=start)
    self.pending: list[Any] = []
    self.last_train: dict[str, float] = {}
    self.eval_batch_size = config.eval_batch_size or config.batch_size
    self.decode = tasks.decodes(task)
    self.progress = None
    self.final_state = None  # the device state after the last step
    self.about: tuple[str, str | None] = about  # (experiment, command) for summary.json

  def close(self, quiet: bool = False) -> None:
    """Closes the writers and checkpoints; `quiet` logs their errors instead of raising them."""
    closers = [self.progress.close] if self.progress else []
    for close in closers + [self.writer.close, self.ckpts.close]:
      try:
        close()
      except Exception as e:
        if not quiet:
          raise
        logging.warning("closing after an error failed too: %s: %s", type(e).__name__, e)

  def train(self, state, start, tx, schedule, meta, start_time, started_at) -> dict[str, Any]:
    config, strategy = self.config, self.strategy
    self.start_time, self.prior_wall_s = start_time, float(meta.get("wall_s", 0.0))
    self.started_at, self.startup_s = started_at, None
    self.last_train = dict(meta.get("train_metrics", {}))
    train_fn = strategy.train_fn(self.task, tx, schedule, state)
    self.eval_fn = strategy.eval_fn(self.task, False, state)
    self.host_state = state
    dstate = strategy.put_state(state)
    batches = self.data.train_batches(config.batch_size, config.seed, start, **self.shard)
    try:  # closing stops the input pipeline's prefetch threads, also on a stop or an error
      dstate, step, timing = self._steps(dstate, start, train_fn, batches)
    finally:
      _close(batches)
    return self._finish(dstate, step, start_time, timing)

  def _steps(self, dstate, start: int, train_fn, batches) -> tuple[Any, int, dict[str, float]]:
    """Runs the steps from `start` to num_train_steps; returns the state, the step reached and
    the timing (compile_s, train_time and the timed steps' count and FLOPs)."""
    config, strategy = self.config, self.strategy
    t = time.time()
    host_batch = next(batches)
    batch = strategy.put_batch(host_batch)
    # One compiled step per batch shape: datasets with length buckets (cmudict) vary the shape.
    compiled_steps: dict[Any, tuple[Callable, float | None]] = {}
    self._compiled_step(compiled_steps, train_fn, dstate, host_batch, batch)
    compile_s = time.time() - t
    profile = perf.StepProfile(
        self.workdir, start + PROFILE_AFTER_STEPS, config.profile_steps, enabled=self.is_main
    )

    self.progress = metrics_lib.Progress(
        start, config.num_train_steps, config.progress_bar, self.is_main
    )
    in_flight = InFlight(config.max_steps_in_flight)
    train_time, timed_steps, timed_flops = 0.0, 0, 0.0
    step = start
    with _Signals() as signals:
      while step < config.num_train_steps:
        step_fn, flops, compiling_s = self._compiled_step(
            compiled_steps, train_fn, dstate, host_batch, batch
        )
        compile_s += compiling_s
        t = time.time()
        profile.before_step(step)
        dstate, sums = step_fn(dstate, batch)
        step += 1
        if self.startup_s is None:
          jax.block_until_ready(sums)  # one wait: start-up ends when the first step has finished
          self.startup_s = time.time() - self.started_at
        profile.after_step(step, sums)
        self.pending.append(sums)
        in_flight.add(sums)
        self.progress.update(step)
        done = step == config.num_train_steps
        if step % config.log_every_steps == 0 or step % config.checkpoint_every_steps == 0 or done:
          self._log_train(step)
        if step > start + 1 and not compiling_s:
          train_time += time.time() - t
          timed_steps += 1
          timed_flops += flops or 0.0
        if step % config.eval_every_steps == 0 and not done:
          self.evaluate(dstate, step, self.data.eval_splits[:1], config.eval_batches)
        stop = signals.poll(step)
        if step % config.checkpoint_every_steps == 0 or done or stop:
          self._save(dstate, step)
        if stop:
          raise Stopped(step, stop)
        if not done:
          host_batch = next(batches)
          batch = strategy.put_batch(host_batch)
      jax.block_until_ready(dstate)
      profile.stop()
    return (
        dstate,
        step,
        {
            "compile_s": compile_s,
            "train_time": train_time,
            "timed_steps": timed_steps,
            "timed_flops": timed_flops,
        },
    )

  def _finish(
      self, dstate, step: int, start_time: float, timing: dict[str, float]
  ) -> dict[str, Any]:
    """The final evaluation of every split and summary.json."""
    config, strategy = self.config, self.strategy
    compile_s, train_time = timing["compile_s"], timing["train_time"]
    timed_steps, timed_flops = timing["timed_steps"], timing["timed_flops"]

    self.final_state = dstate
    final = {}
    if self.decode:
      self.eval_fn = strategy.eval_fn(self.task, True, self.host_state)
    for split in self.data.eval_splits:
      final.update(
          {
              f"{recorded_split(split)}_{k}": v
              for k, v in self.evaluate(dstate, step, (split,)).items()
          }
      )
    wall_s = time.time() - start_time
    examples_per_s = timed_steps * config.batch_size / train_time if train_time else None
    summary = {f"train_{k}": v for k, v in self.last_train.items()}
    summary.update(final)
    summary.update(
        steps=step,
        wall_s=wall_s,
        compile_s=compile_s,
        startup_s=self.startup_s,
        total_wall_s=wall_s + self.prior_wall_s,
        examples_per_s=examples_per_s,
        num_devices=strategy.num_devices,
        parallelism=strategy.name,
    )
    if self.dp:
      summary.update(self.dp.summary(step))
    if timed_flops and train_time:
      achieved = timed_flops / train_time / jax.process_count()
      summary.update(
          flops_per_step=timed_flops / timed_steps, mfu=achieved / perf.process_peak_flops()
      )
    summary.update(runinfo.facts(*self.about))
    if self.is_main:
      _write_json(os.path.join(self.workdir, "summary.json"), summary)
      quiet = ("machine", "versions")  # in the file; too long for the line printed
      shown = {k: v for k, v in summary.items() if not k.startswith("train_") and k not in quiet}
      print(json.dumps(shown, indent=None), flush=True)
    self.writer.flush()
    return summary

  def _compiled_step(
      self, cache: dict, train_fn, dstate, host_batch, batch
  ) -> tuple[Callable, float | None, float]:
    """(step callable, FLOPs, seconds spent compiling now) for this batch's shapes; compiles on
    first sight of the shapes, else the seconds are 0."""
    key = tuple((k, np.shape(v)) for k, v in sorted(host_batch.items()))
    if key in cache:
      return cache[key] + (0.0,)
    t = time.time()
    compiled = train_fn.lower(dstate, batch).compile()
    cache[key] = (
        self.strategy.step_callable(train_fn, compiled),
        self._flops_per_step(host_batch, compiled),
    )
    return cache[key] + (time.time() - t,)

  def _flops_per_step(self, host_batch, compiled) -> float | None:
    """Analytic FLOPs of one step of the global batch; XLA's count where no analytic one exists."""
    model, per_example = self.strategy.model, None
    if isinstance(model, HasFlops):
      shapes = [tuple(x.shape)[1:] for x in self.task.model_args(host_batch)]
      per_example = model.flops_per_example(*shapes)
    if per_example is not None:
      return 3.0 * per_example * self.config.batch_size
    flops = perf.compiled_flops(compiled)
    if flops and self.strategy.name == "pmap":
      flops *= jax.device_count()  # a pmapped computation is counted for one device
    return flops

  def _log_train(self, step: int) -> None:
    sums = [self.strategy.fetch(s) for s in self.pending]
    self.pending = []
    values = metrics_lib.reduce_sums(sums)
    values["learning_rate"] = float(np.asarray(sums[-1]["learning_rate"][0]))
    for name in ("loss", "grad_norm"):
      if name in values and not np.isfinite(values[name]):
        raise NonFiniteError(
            f"training {name} is {values[name]} at step {step} (the mean over steps since the "
            "last log); no checkpoint of this state was written. Lower config.learning_rate, set "
            f"config.grad_clip_norm, or check the data, then run again: {self._resume_advice()}"
        )
    values = self.task.finalize(values)
    if self.dp:  # the privacy spent up to this step (a function of the step: resumes continue it)
      values["dp_epsilon"] = self.dp.accountant.epsilon(step)
    self.last_train = values
    self.writer.write(step, "train", values)
    self.progress.log(step, "train", values)

  def _resume_advice(self) -> str:
    saved = self.ckpts.steps()
    if not saved:
      return "no checkpoint was saved, so it starts over from step 0 with the values you give."
    lower = f"--config.learning_rate={self.config.learning_rate / 10:g}"
    return (
        f"it resumes from the checkpoint of step {saved[-1]}, and resuming with a changed value "
        f"needs --allow_config_change (for example {lower} --allow_config_change)."
    )

  def evaluate(self, dstate, step: int, splits, num_batches: int = 0) -> dict[str, float]:
    """Metrics of each split: all of it, or an estimate on `num_batches` batches of a fixed
    sample (config.eval_batches, for the evaluations during training)."""
    values = {}
    for split in splits:
      in_flight = InFlight(self.config.max_steps_in_flight)
      batches = self.data.eval_batches(
          split, self.eval_batch_size, num_batches=num_batches, **self.shard
      )
      sums = [in_flight.add(self.eval_fn(dstate, self.strategy.put_batch(b))) for b in batches]
      values = self.task.finalize(metrics_lib.reduce_sums([self.strategy.fetch(s) for s in sums]))
      name = recorded_split(split)
      self.writer.write(step, name, values)
      self.progress.log(step, name, values)
    return values

  def _save(self, dstate, step: int) -> None:
    if self.pending:
      self._log_train(step)  # also checks the state is finite before it is saved
    self.writer.flush()  # the records up to a checkpoint are stored before it is
    state = self.strategy.checkpoint_state(dstate)
    wall_s = self.prior_wall_s + time.time() - self.start_time
    # The last train metrics go along, so a run resumed at its final step still reports them.
    self.ckpts.save(state, {"step": step, "wall_s": wall_s, "train_metrics": self.last_train})
