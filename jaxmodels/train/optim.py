"""Optimizers and learning-rate schedules from a config, all through optax."""

from __future__ import annotations

from collections.abc import Callable
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxmodels.train.config import ConfigError


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """constant, cosine (to 0), warmup_cosine, or step (decays at fractions of the run)."""
  lr, steps, warmup = config.learning_rate, config.num_train_steps, config.warmup_steps
  if config.schedule == "constant":
    schedule = optax.constant_schedule(lr)
  elif config.schedule == "cosine":
    schedule = optax.cosine_decay_schedule(lr, decay_steps=max(steps - warmup, 1))
  elif config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(steps, warmup + 1))
  else:
    boundaries = {int(f * steps): config.step_decay for f in config.step_boundaries}
    schedule = optax.piecewise_constant_schedule(lr, boundaries)
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
  return schedule


def decay_mask(params: optax.Params) -> optax.Params:
  """True for weights that take weight decay: kernels and embeddings, not biases or norm scales."""
  return jax.tree_util.tree_map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer named by config.optimizer, with optional clipping and weight decay."""
  lr = learning_rate_schedule(config)
  name = config.optimizer
  if name == "sgd":
    opt = optax.sgd(lr)
  elif name in ("momentum", "nesterov"):
    opt = optax.sgd(lr, momentum=config.momentum, nesterov=name == "nesterov")
  elif name == "adagrad":
    opt = optax.adagrad(lr, eps=config.eps)
  elif name == "rmsprop":
    opt = optax.rmsprop(lr, eps=config.eps)
  elif name == "adam":
    opt = optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps)
  else:
    opt = optax.adamw(
        lr,
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=decay_mask,
    )
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay and name != "adamw":
    # Coupled L2 decay (added to the gradient) for the non-adaptive optimizers.
    parts.append(optax.add_decayed_weights(config.weight_decay, mask=decay_mask))
  tx = optax.chain(*parts, opt) if parts else opt
  if config.trainable:
    labels = trainable_labels(config.trainable)
    tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
  return with_params_ema(tx, config.ema_decay) if config.ema_decay else tx


class ParamsEMAState(NamedTuple):
  """The wrapped optimizer's state and the moving average of the parameters after each update."""

  inner: optax.OptState
  ema: optax.Params
  count: jax.Array


def ema_decay_at(decay: float, count: jax.Array) -> jax.Array:
  """The decay of update `count` (0-based): min(decay, (1 + count) / (10 + count)), so that the
  first updates, whose average would still lean on the initialisation, weigh more."""
  count = jnp.asarray(count, jnp.float32)
  return jnp.minimum(decay, (1.0 + count) / (10.0 + count))


def with_params_ema(tx: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
  """`tx`, whose state also keeps ema <- d * ema + (1 - d) * new_params after every update, with
  d = ema_decay_at(decay, count). Kept in the optimizer state, the average is checkpointed,
  replicated (pmap) and sharded like the parameters (mesh) with it; `eval_params` reads it."""

  def init(params):
    copy = jax.tree_util.tree_map(jnp.array, params)  # its own buffers: the state is donated
    return ParamsEMAState(tx.init(params), copy, jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("with_params_ema needs the parameters: call update(grads, state, params).")
    updates, inner = tx.update(updates, state.inner, params)
    d = ema_decay_at(decay, state.count)
    new_params = optax.apply_updates(params, updates)
    ema = jax.tree_util.tree_map(
        lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), state.ema, new_params
    )
    return updates, ParamsEMAState(inner, ema, state.count + 1)

  return optax.GradientTransformation(init, update)


def eval_params(params: optax.Params, opt_state: optax.OptState) -> optax.Params:
  """The parameters to evaluate: the moving average where the optimizer keeps one
  (config.ema_decay > 0), else `params`."""
  return opt_state.ema if isinstance(opt_state, ParamsEMAState) else params


def param_path(path: jax.tree_util.KeyPath) -> str:
  """'/'-joined parameter name, e.g. 'Dense_0/kernel'."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def trainable_labels(pattern: str) -> Callable[[optax.Params], Any]:
  """params -> a tree of 'trainable' / 'frozen': a parameter is trainable when `pattern`
  (re.search) matches its path; a pattern that matches none is a ConfigError."""
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"config.trainable={pattern!r} is not a regular expression ({e}).") from e

  def labels(params: optax.Params) -> Any:
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731  (mesh: boxed parameters)
    leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_box)[0]
    names = [param_path(path) for path, _ in leaves]
    if not any(regex.search(n) for n in names):
      tops = ", ".join(dict.fromkeys(n.split("/")[0] for n in names))
      shown = ", ".join(names[:3] + (["..."] if len(names) > 4 else []) + names[3:][-1:])
      raise ConfigError(
          f"config.trainable={pattern!r} matches no parameter, so nothing would train. It is "
          f"searched (re.search) in the '/'-joined parameter paths ({shown}; {len(names)} in "
          f"all) of the top-level modules {tops}. Use '' to train all."
      )
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "trainable" if regex.search(param_path(path)) else "frozen",
        params,
        is_leaf=is_box,
    )

  return labels
