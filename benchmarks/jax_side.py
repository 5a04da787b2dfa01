"""The jax side of the benchmarks: the ENGINE's own train step, parallel.make(...).train_fn(...).

`JaxStep` builds the flax model, the task and the train state as an experiment would, compiles
the engine's step for a parallelism strategy ('none', 'pmap', 'mesh') and runs it on a fixed batch
with a bounded number of steps in flight, as the training loop does.

Run as a module it measures the time to the first step of one model in a fresh process, with
or without a persistent compilation cache (the cold/warm cache benchmark runs it twice):

  python -m benchmarks.jax_side --first_step=gpt [--cache_dir=DIR] [--quick]
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import optax

from benchmarks import shapes as shapes_lib
import jaxmodels  # noqa: F401  (splits the host CPU into XLA devices before jax starts)
from jaxmodels import tasks
from jaxmodels.models import mlp, resnet, rnn, transformer
from jaxmodels.train import loop, optim, parallel, perf, steps


@dataclasses.dataclass(frozen=True)
class Spec:
  """A benchmarked model: the flax module, its task, a host batch and analytic FLOPs."""

  name: str
  model: Any
  task: tasks.Task
  batch: dict[str, Any]
  flops_per_example: float  # forward FLOPs of one example (2 * MACs)

  @property
  def batch_size(self) -> int:
    return len(self.batch["targets"])

  @property
  def train_flops_per_step(self) -> float:
    """Forward + backward = 3 x forward, for the whole batch."""
    return 3.0 * self.flops_per_example * self.batch_size


# The models whose layers have a oneDNN kernel (jaxmodels.kernels), and the model field choosing it.
KERNEL_FIELDS = {"resnet18": "conv_impl", "lstm": "impl"}


def make_spec(name: str, shape: dict[str, Any], seed: int = 0, kernels: str | None = None) -> Spec:
  """The flax model of benchmark `name` with the shapes of benchmarks.shapes; `kernels`
  ('onednn', ...) sets the model's KERNEL_FIELDS choice, None keeps the model's default."""
  batch = shapes_lib.make_batch(name, shape, seed)
  s = shape
  if name == "gpt":
    model = transformer.GPT(
        vocab_size=s["vocab_size"],
        model_dim=s["model_dim"],
        num_layers=s["num_layers"],
        num_heads=s["num_heads"],
        mlp_dim=s["mlp_dim"],
        max_len=s["context"],
    )
    task = tasks.LanguageModel()
  elif name == "resnet18":
    model = resnet.ResNet18(
        num_classes=s["num_classes"], num_filters=s["num_filters"], stem="cifar"
    )
    task = tasks.Classification(s["num_classes"])
  elif name == "lstm":
    model = rnn.RNNLanguageModel(
        vocab_size=s["vocab_size"],
        embed_dim=s["embed_dim"],
        hidden_size=s["hidden_size"],
        cell="lstm",
    )
    task = tasks.LanguageModel()
  elif name == "mlp":
    model = mlp.MLP(hidden_sizes=tuple(s["hidden_sizes"]), num_classes=s["num_classes"])
    task = tasks.Classification(s["num_classes"])
  else:
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(shapes_lib.MODELS)}")
  shapes = [tuple(x.shape)[1:] for x in task.model_args(batch)]
  spec = Spec(name, model, task, batch, model.flops_per_example(*shapes))
  return spec if kernels is None else with_kernels(spec, kernels)


def with_kernels(spec: Spec, kernels: str) -> Spec:
  """`spec` with its model's KERNEL_FIELDS choice set to `kernels` ('onednn', ...)."""
  if spec.name not in KERNEL_FIELDS:
    raise ValueError(
        f"{spec.name} has no kernel choice; models with one: {', '.join(KERNEL_FIELDS)}"
    )
  return dataclasses.replace(spec, model=spec.model.clone(**{KERNEL_FIELDS[spec.name]: kernels}))


class JaxStep:
  """The engine's compiled train step for `spec` under a parallelism strategy, on a fixed batch.

  Construction does everything up to and including the first step and keeps its timings in
  `timings`: init_s (steps.init_state), compile_s (tracing, lowering, compilation), step_s (the
  first step).
  """

  def __init__(
      self,
      spec: Spec,
      strategy: str = "none",
      lr: float = 1e-3,
      seed: int = 0,
      max_in_flight: int = 2,
      dp: Any = None,
  ):
    self.spec, self.max_in_flight = spec, max_in_flight
    self.strategy = parallel.make(strategy, spec.model, dp=dp)  # dp: a privacy.DPSGD
    if spec.batch_size % self.strategy.num_devices:
      raise ValueError(
          f"batch {spec.batch_size} does not split over " f"{self.strategy.num_devices} devices"
      )
    tx, schedule = optax.adam(lr), optax.constant_schedule(lr)
    clock = time.perf_counter()
    host_state = jax.block_until_ready(
        steps.init_state(spec.model, spec.task, tx, spec.batch, seed)
    )
    self.timings = {"init_s": time.perf_counter() - clock}
    clock = time.perf_counter()
    train_fn = self.strategy.train_fn(spec.task, tx, schedule, host_state)
    self.state = self.strategy.put_state(host_state)
    self.batch = self.strategy.put_batch(spec.batch)
    self.compiled = train_fn.lower(self.state, self.batch).compile()
    self.timings["compile_s"] = time.perf_counter() - clock
    self.timings["step_s"] = self.run(1)

  @property
  def first_step_s(self) -> float:
    """Seconds from nothing to the first finished step."""
    return sum(self.timings.values())

  @property
  def name(self) -> str:
    return self.strategy.name

  def run(self, num_steps: int) -> float:
    """Seconds for `num_steps` steps, at most `max_in_flight` dispatched and unfinished."""
    start = time.perf_counter()
    in_flight = loop.InFlight(self.max_in_flight)
    for _ in range(num_steps):
      self.state, sums = self.compiled(self.state, self.batch)
      in_flight.add(sums)
    jax.block_until_ready((self.state, list(in_flight.queue)))
    return time.perf_counter() - start


class Feed:
  """The engine's step fed from a batch iterator (or one device-resident batch when None)."""

  def __init__(
      self,
      strategy: Any,
      train_fn: Any,
      host_state: Any,
      batches: Any,
      first: dict[str, Any],
      max_in_flight: int = 2,
  ):
    self.strategy, self.batches, self.max_in_flight = strategy, batches, max_in_flight
    self.state = strategy.put_state(host_state)
    self.fixed = strategy.put_batch(first)
    self.compiled = train_fn.lower(self.state, self.fixed).compile()

  def run(self, num_steps: int) -> float:
    """Seconds for `num_steps` steps including fetching and placing each batch."""
    start = time.perf_counter()
    in_flight = loop.InFlight(self.max_in_flight)
    for _ in range(num_steps):
      batch = self.fixed if self.batches is None else self.strategy.put_batch(next(self.batches))
      self.state, sums = self.compiled(self.state, batch)
      in_flight.add(sums)
    jax.block_until_ready((self.state, list(in_flight.queue)))
    return time.perf_counter() - start


def engine_feeds(experiment: Any, config: Any, datasets: dict[str, Any]) -> dict[str, Any]:
  """`run(n)` functions of an experiment's train step fed by each dataset, plus 'fixed'.

  The model, task, optimizer and parallelism come from the experiment module and its config,
  as in the training loop; the model is built from the first dataset's info.
  """
  info = next(iter(datasets.values())).info
  model, task = experiment.get_model(config, info), experiment.get_task(config, info)
  tx, schedule = optim.make_optimizer(config), optim.learning_rate_schedule(config)
  strategy = parallel.make(config.parallelism, model)
  feeds = {}
  for label, data in datasets.items():
    batches = data.train_batches(config.batch_size, config.seed)
    first = next(batches)
    host_state = steps.init_state(model, task, tx, first, config.seed)
    train_fn = strategy.train_fn(task, tx, schedule, host_state)
    feeds[label] = Feed(strategy, train_fn, host_state, batches, first).run
    if "fixed" not in feeds:
      feeds["fixed"] = Feed(strategy, train_fn, host_state, None, first).run
  return feeds


def time_to_first_step(name: str, quick: bool, cache_dir: str | None) -> dict[str, float]:
  """Timings from a fresh model to the first finished step, with an optional persistent cache.

  startup_s is everything before the first step runs (what a compilation cache can shorten);
  first_step_s adds the step itself.
  """
  if cache_dir:
    perf.enable_compilation_cache(cache_dir)
  step = JaxStep(make_spec(name, shapes_lib.shapes(name, quick)))
  t = step.timings
  return dict(t, startup_s=t["init_s"] + t["compile_s"], first_step_s=step.first_step_s)


def _main(argv: list[str] | None = None) -> None:
  import argparse
  import json

  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--first_step", required=True, choices=shapes_lib.MODELS)
  parser.add_argument("--cache_dir", default=None)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  result = time_to_first_step(args.first_step, args.quick, args.cache_dir)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  _main()
