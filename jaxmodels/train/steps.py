"""The train state and the pure train/eval step functions shared by every parallelism mode.

With `axis_name` set (pmap), each device holds part of the batch: the loss is normalised by the
global weight and gradients and metric sums are summed across devices, so the update equals the
one-device update on the global batch.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxmodels.tasks import DecodingTask, Task
from jaxmodels.train import ghost_clipping, privacy
from jaxmodels.train.config import ConfigError
from jaxmodels.train.optim import eval_params


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any  # non-parameter collections, e.g. {'batch_stats': ...}; {} if none
  opt_state: Any
  rng: jax.Array


def init_state(
    model: nn.Module,
    task: Task,
    tx: optax.GradientTransformation,
    batch: Any,
    seed: int,
    out_shardings: Any = None,
) -> TrainState:
  """Initialises parameters from one batch's shapes; pure in (seed, shapes).

  Runs as one compiled computation: op by op, a model's initialisers compile dozens of small
  computations and dominate the time to the first step. With `out_shardings` (a tree like the
  state) every array is created in its layout and never whole on one device; the batch is then
  only read for its shapes.
  """
  if out_shardings is None:
    return jax.jit(functools.partial(_init_state, model, task, tx, seed))(batch)
  shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)

  def init():
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return _init_state(model, task, tx, seed, zeros)

  return jax.jit(init, out_shardings=out_shardings)()


def boxed_abstract_state(
    model: nn.Module, task: Task, tx: optax.GradientTransformation, batch: Any, seed: int
) -> TrainState:
  """The state's shapes, with parameters and their optimizer state in the model's
  `nn.Partitioned` boxes (logical axis names); `flax.linen.meta.unbox` of it has the structure
  of `init_state`'s result."""
  return jax.eval_shape(functools.partial(_init_state, model, task, tx, seed, unbox=False), batch)


def _init_state(model, task, tx, seed, batch, unbox=True):
  init_rng, params_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  variables = model.init(
      {"params": params_rng, "dropout": dropout_rng}, *task.model_args(batch), train=False
  )
  if unbox:  # logical-axis boxes (nn.Partitioned) -> plain arrays
    variables = nn.meta.unbox(variables)
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k not in ("params", "cache")}
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=model_state,
      opt_state=tx.init(params),
      rng=init_rng,
  )


def _psum(tree: Any, axis_name: str | None) -> Any:
  return jax.lax.psum(tree, axis_name) if axis_name else tree


def train_step(
    state: TrainState,
    batch: Any,
    *,
    model: nn.Module,
    task: Task,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    axis_name: str | None = None,
    grad_accum_steps: int = 1,
    dp: privacy.DPSGD | None = None,
) -> tuple[TrainState, dict[str, Any]]:
  """One optimizer step; returns the new state and metric sums {name: (sum, weight)}.

  With grad_accum_steps = k > 1 the batch is processed as k micro-batches (examples i, i+k,
  i+2k, ... form micro-batch i) whose gradients are summed before the one update: the same
  update as the whole batch at 1/k of the activation memory. BatchNorm statistics are then
  those of the micro-batches, updated k times.

  With `dp` the gradient is DP-SGD's (privacy.py): per-example gradients clipped, summed over
  the global batch, noised once with a key that is the same on every device, divided by the
  global batch size.
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  rng = step_rng
  if axis_name:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  if dp is not None:
    grads, sums = _dp_grads(state, batch, rng, step_rng, model, task, axis_name, dp)
    return _apply(state, grads, sums, state.model_state, tx, schedule)
  total_weight = _psum(jnp.sum(task.weights(batch)), axis_name)

  def grads_of(model_state, micro_batch, micro_rng):
    mutable = list(model_state)

    def loss_fn(params):
      variables = {"params": params, **model_state}
      out = model.apply(
          variables,
          *task.model_args(micro_batch),
          train=True,
          rngs={"dropout": micro_rng},
          mutable=mutable or False,
      )
      outputs, new_model_state = out if mutable else (out, {})
      losses, sums = task.losses(outputs, micro_batch)
      return jnp.sum(losses) / jnp.maximum(total_weight, 1e-9), (sums, new_model_state)

    return jax.grad(loss_fn, has_aux=True)(state.params)

  if grad_accum_steps == 1:
    grads, (sums, new_model_state) = grads_of(state.model_state, batch, rng)
  else:
    grads, sums, new_model_state = _accumulate(
        grads_of, state.model_state, batch, rng, grad_accum_steps
    )
  grads, sums = _psum((grads, sums), axis_name)
  return _apply(state, grads, sums, new_model_state, tx, schedule)


def _apply(state, grads, sums, new_model_state, tx, schedule):
  """The optimizer update from the global gradient, with grad_norm and learning_rate metrics."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  one = jnp.ones((), jnp.float32)
  sums = dict(
      sums,
      grad_norm=(optax.tree.norm(grads), one),
      learning_rate=(jnp.asarray(schedule(state.step), jnp.float32), one),
  )
  new_state = state.replace(
      step=state.step + 1, params=params, model_state=new_model_state, opt_state=opt_state
  )
  return new_state, sums


def _dp_grads(state, batch, rng, step_rng, model, task, axis_name, dp):
  """DP-SGD's gradient and the metric sums (plus dp_clipped_fraction) of the global batch."""

  def example_loss(params, example, key):
    one = jax.tree_util.tree_map(lambda x: x[None], example)
    outputs = model.apply(
        {"params": params, **state.model_state},
        *task.model_args(one),
        train=True,
        rngs={"dropout": key},
    )
    losses, sums = task.losses(outputs, one)
    return privacy.example_means(losses, task.weights(one))[0], sums

  n = jax.tree_util.tree_leaves(batch)[0].shape[0]
  ghost = None
  if dp.per_example != "vmap":
    variables = {"params": state.params, **state.model_state}
    ghost = ghost_clipping.clipped_sum(model, variables, task, batch, rng, dp.l2_clip)
    if ghost is None and dp.per_example == "ghost":
      raise ConfigError(
          f"config.dp.per_example='ghost', but the model {type(model).__name__} has parameters "
          "other than Dense and 2-D Conv kernels and biases, each layer called once (ghost "
          "clipping covers only those); use 'auto' or 'vmap'."
      )
  if ghost is not None:
    grads, norms, sums = ghost.grads, ghost.norms, ghost.sums
  else:
    keys = jax.random.split(rng, n)
    per_example, sums = jax.vmap(jax.grad(example_loss, has_aux=True), in_axes=(None, 0, 0))(
        state.params, batch, keys
    )
    clipped, norms = privacy.clip_per_example(per_example, dp.l2_clip)
    grads, sums = jax.tree_util.tree_map(lambda x: jnp.sum(x, 0), (clipped, sums))
  was_clipped = jnp.sum((norms > dp.l2_clip).astype(jnp.float32))
  sums["dp_clipped_fraction"] = (was_clipped, jnp.asarray(n, jnp.float32))
  grads, sums = _psum((grads, sums), axis_name)
  global_n = n * (jax.lax.psum(1, axis_name) if axis_name else 1)
  # One draw for the global sum, from a key without the device index: every device adds the
  # same noise to the same psum, which is the one-device update.
  noise_key = jax.random.split(step_rng)[0]
  grads = privacy.add_noise(grads, noise_key, dp.noise_multiplier * dp.l2_clip)
  grads = jax.tree_util.tree_map(lambda g: g / global_n, grads)
  return grads, sums


def _accumulate(grads_of, model_state, batch, rng, k):
  """Sums gradients and metric sums over k strided micro-batches with a scan."""

  def split(x):
    return jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0)

  micro_batches = jax.tree_util.tree_map(split, batch)
  first = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
  shapes = jax.eval_shape(grads_of, model_state, first, rng)
  zeros, zero_sums = jax.tree_util.tree_map(
      lambda x: jnp.zeros(x.shape, x.dtype), (shapes[0], shapes[1][0])
  )

  def body(carry, xs):
    grads, sums, ms = carry
    i, micro_batch = xs
    g, (s, ms) = grads_of(ms, micro_batch, jax.random.fold_in(rng, i))
    return (_add(grads, g), _add(sums, s), ms), None

  (grads, sums, model_state), _ = jax.lax.scan(
      body, (zeros, zero_sums, model_state), (jnp.arange(k), micro_batches)
  )
  return grads, sums, model_state


def _add(a: Any, b: Any) -> Any:
  return jax.tree_util.tree_map(jnp.add, a, b)


def eval_step(
    state: TrainState,
    batch: Any,
    *,
    model: nn.Module,
    task: Task,
    axis_name: str | None = None,
    decode: bool = False,
) -> dict[str, Any]:
  """Metric sums for one evaluation batch (padding carries zero weight); with `decode`, also the
  task's decode metrics (the task is then a `DecodingTask`). The parameters are the moving
  average where the optimizer keeps one (config.ema_decay)."""
  variables = {"params": eval_params(state.params, state.opt_state), **state.model_state}
  outputs = model.apply(variables, *task.model_args(batch), train=False)
  _, sums = task.losses(outputs, batch)
  if decode:
    sums.update(cast(DecodingTask, task).decode_metrics(model, variables, batch))
  return _psum(sums, axis_name)
