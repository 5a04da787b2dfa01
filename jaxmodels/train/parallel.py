"""Three ways to run the same step: one device, jax.pmap replicas, or jit over a sharded mesh.

Each strategy moves the state and batches to devices and compiles the step functions of steps.py.
  none  one device.
  pmap  state replicated on every local device; the host batch reshaped to
        (local devices, per-device batch, ...); gradients, metrics and BatchNorm statistics are
        summed/averaged over the 'batch' axis.
  mesh  jax.jit over a (data, fsdp, tensor) device mesh: the batch is split over data * fsdp;
        parameters and optimizer state follow the model's logical axis names through
        sharding.RULES (heads, MLP and vocabulary over 'tensor', the model width over 'fsdp');
        arrays without names are split over 'fsdp' along their largest divisible dimension.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from jaxmodels.tasks import Task
from jaxmodels.train import privacy, sharding, steps
from jaxmodels.train.config import ConfigError

AXIS = "batch"


def with_axis_name(model: nn.Module, axis_name: str) -> nn.Module:
  """Models with an `axis_name` field (BatchNorm users) synchronise statistics over it."""
  if "axis_name" in {f.name for f in dataclasses.fields(model)}:
    return model.clone(axis_name=axis_name)
  return model


class Strategy:
  """Places data and compiles steps; subclasses decide how."""

  name = ""

  def __init__(self, model: nn.Module, grad_accum_steps: int = 1, dp: privacy.DPSGD | None = None):
    self.model = model
    self.grad_accum_steps = grad_accum_steps
    self.dp = dp  # DP-SGD's clip and noise for the train step; None: the plain step

  @property
  def num_devices(self) -> int:
    return jax.device_count()

  def init_state(self, task: Task, tx: Any, batch: Any, seed: int) -> steps.TrainState:
    """The initial state (from `batch`'s shapes), ready for `put_state`."""
    return steps.init_state(self.model, task, tx, batch, seed)

  def put_state(self, state: steps.TrainState) -> Any:
    raise NotImplementedError

  def get_state(self, state: Any) -> steps.TrainState:
    """The state as host numpy arrays, one copy."""
    raise NotImplementedError

  def checkpoint_state(self, state: Any) -> Any:
    """What a checkpoint saves of the device state: one host copy by default."""
    return self.get_state(state)

  def put_batch(self, batch: dict[str, np.ndarray]) -> Any:
    raise NotImplementedError

  def train_fn(self, task: Task, tx: Any, schedule: Any, state: steps.TrainState) -> Callable:
    """train_step(state, batch) jitted for this strategy; `state` (host) gives the structure."""
    raise NotImplementedError

  def eval_fn(self, task: Task, decode: bool, state: steps.TrainState) -> Callable:
    """eval_step(state, batch) jitted for this strategy."""
    raise NotImplementedError

  def _train_step(self, task: Task, tx: Any, schedule: Any, **kwargs: Any) -> Callable:
    """steps.train_step with everything but (state, batch) bound, for the strategy to compile."""
    return functools.partial(
        steps.train_step,
        model=self.model,
        task=task,
        tx=tx,
        schedule=schedule,
        grad_accum_steps=self.grad_accum_steps,
        dp=self.dp,
        **kwargs,
    )

  def fetch(self, tree: Any) -> Any:
    """Step outputs (metric sums) on the host, one copy."""
    return jax.device_get(tree)

  def step_callable(self, fn: Callable, compiled: Any) -> Callable:
    """What the loop calls each step: the ahead-of-time `compiled` form of `fn` by default."""
    del fn
    return compiled


class Single(Strategy):
  name = "none"

  @property
  def num_devices(self) -> int:
    return 1

  def put_state(self, state):
    return jax.device_put(state, jax.local_devices()[0])

  def get_state(self, state):
    return jax.device_get(state)

  def put_batch(self, batch):
    return jax.device_put(batch, jax.local_devices()[0])

  def train_fn(self, task, tx, schedule, state):
    return jax.jit(self._train_step(task, tx, schedule), donate_argnums=0)

  def eval_fn(self, task, decode, state):
    return jax.jit(functools.partial(steps.eval_step, model=self.model, task=task, decode=decode))


def _first_replica(tree: Any) -> Any:
  """Each leaf of pmap's output (leading device axis) as this process's first replica, in numpy.

  Copied from the local shard: `x[0]` would compile one all-reduce per leaf across all devices
  (across processes, with several), and a state's worth of such collectives dispatched back to
  back hung a two-process run (the SIGTERM test of tests/test_multihost.py, under load).
  """
  return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data)[0, ...], tree)


class Pmap(Strategy):
  name = "pmap"

  def __init__(self, model: nn.Module, grad_accum_steps: int = 1, dp: privacy.DPSGD | None = None):
    super().__init__(with_axis_name(model, AXIS), grad_accum_steps, dp)
    self.devices = jax.local_devices()

  def put_state(self, state):
    # One transfer of the whole tree (flax.jax_utils.replicate stacks each leaf with its own
    # small jit: 0.24 s of start-up for shakespeare_gpt's state against 0.01 s).
    n, mesh = len(self.devices), jax.sharding.Mesh(np.array(self.devices), ("replicas",))
    stacked = jax.tree.map(lambda x: np.broadcast_to(x, (n,) + x.shape), jax.device_get(state))
    return jax.device_put(stacked, NamedSharding(mesh, P("replicas")))

  def get_state(self, state):
    return _first_replica(state)

  def put_batch(self, batch):
    n = len(self.devices)
    return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}

  def fetch(self, tree):
    return _first_replica(tree)

  def step_callable(self, fn, compiled):
    # With several processes only the pmapped function itself turns each process's local
    # arrays into global ones; its compiled executable wants the global arrays.
    return fn if jax.process_count() > 1 else compiled

  def train_fn(self, task, tx, schedule, state):
    return jax.pmap(
        self._train_step(task, tx, schedule, axis_name=AXIS), axis_name=AXIS, donate_argnums=0
    )

  def eval_fn(self, task, decode, state):
    return jax.pmap(
        functools.partial(
            steps.eval_step, model=self.model, task=task, axis_name=AXIS, decode=decode
        ),
        axis_name=AXIS,
    )


class MeshStrategy(Strategy):
  """jax.jit over a (data, fsdp, tensor) mesh; data = len(devices) // (fsdp * tensor).

  Parameters and optimizer state are laid out by sharding.RULES from the model's logical axis
  names (the largest-dimension FSDP split for unnamed ones); the step runs under the rules and
  the mesh, so the models' activation constraints apply.
  """

  name = "mesh"

  def __init__(
      self,
      model: nn.Module,
      fsdp: int = 1,
      tensor: int = 1,
      grad_accum_steps: int = 1,
      devices: Any = None,
      dp: privacy.DPSGD | None = None,
  ):
    super().__init__(model, grad_accum_steps, dp)
    self.mesh = sharding.make_mesh(fsdp, tensor, devices)
    sharding.check_model(model, tensor)
    self.fsdp, self.tensor = fsdp, tensor
    if self.batch_shards % jax.process_count():
      raise ConfigError(
          f"config.fsdp={fsdp} and config.tensor={tensor} leave data x fsdp = "
          f"{self.batch_shards} batch shards, which the {jax.process_count()} processes (each "
          "reading its own part of the batch) cannot share; use a smaller config.tensor."
      )
    self.batch_sharding = NamedSharding(self.mesh, P(("data", "fsdp")))
    self.replicated = NamedSharding(self.mesh, P())
    self._state_sharding = None
    self._structure = None

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def batch_shards(self) -> int:
    """How many parts the batch is split into: data * fsdp."""
    return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  def abstract_state(self, task: Task, tx: Any, batch: Any, seed: int) -> steps.TrainState:
    """The state's shapes with their shardings (jax.ShapeDtypeStruct leaves); `batch` may hold
    arrays or shape structs. Fixes the layout `state_sharding` gives this state from now on."""
    boxed = steps.boxed_abstract_state(self.model, task, tx, batch, seed)
    shardings = sharding.tree_shardings(boxed, self.mesh)
    abstract = nn.meta.unbox(boxed)
    if jax.tree_util.tree_structure(abstract) != jax.tree_util.tree_structure(shardings):
      raise ValueError("the boxed state does not unbox to the state's structure")
    self._state_sharding, self._structure = shardings, jax.tree_util.tree_structure(abstract)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )

  def init_state(self, task: Task, tx: Any, batch: Any, seed: int) -> steps.TrainState:
    """The initial state created in its sharded layout (never whole on one device)."""
    self.abstract_state(task, tx, batch, seed)
    return steps.init_state(self.model, task, tx, batch, seed, out_shardings=self._state_sharding)

  def state_sharding(self, state: Any) -> Any:
    """The layout of `state` (arrays or shape structs): the one `abstract_state` fixed for a
    state of this structure, else the FSDP rule for every leaf."""
    structure = jax.tree_util.tree_structure(state)
    if self._state_sharding is None or structure != self._structure:
      self._state_sharding = sharding.tree_shardings(state, self.mesh)
      self._structure = structure
    return self._state_sharding

  def put_state(self, state):
    return jax.device_put(state, self.state_sharding(state))

  def checkpoint_state(self, state):
    # The sharded arrays themselves: orbax writes each shard from the process that holds it, so
    # no host ever holds the whole state (the saves are synchronous, before the next step
    # donates these buffers).
    return state

  def get_state(self, state):
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      return multihost_utils.process_allgather(state, tiled=True)
    return jax.device_get(state)

  def put_batch(self, batch):
    return {
        k: jax.make_array_from_process_local_data(self.batch_sharding, v) for k, v in batch.items()
    }

  def _in_context(self, fn: Callable) -> Callable:
    """`fn` traced under the mesh and the logical axis rules."""

    @functools.wraps(fn)
    def wrapped(*args):
      with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
        with nn.logical_axis_rules(sharding.RULES):
          return fn(*args)

    return wrapped

  def train_fn(self, task, tx, schedule, state):
    state_sharding = self.state_sharding(state)
    return jax.jit(
        self._in_context(self._train_step(task, tx, schedule)),
        in_shardings=(state_sharding, self.batch_sharding),
        out_shardings=(state_sharding, self.replicated),
        donate_argnums=0,
    )

  def eval_fn(self, task, decode, state):
    step = functools.partial(steps.eval_step, model=self.model, task=task, decode=decode)
    return jax.jit(
        self._in_context(step),
        in_shardings=(self.state_sharding(state), self.batch_sharding),
        out_shardings=self.replicated,
    )


def make(
    name: str,
    model: nn.Module,
    fsdp: int = 1,
    grad_accum_steps: int = 1,
    tensor: int = 1,
    dp: privacy.DPSGD | None = None,
) -> Strategy:
  """The strategy `name`; `dp` makes its train step DP-SGD's."""
  if name == "pmap":
    return Pmap(model, grad_accum_steps, dp)
  if name == "mesh":
    return MeshStrategy(model, fsdp, tensor, grad_accum_steps, dp=dp)
  return Single(model, grad_accum_steps, dp)
