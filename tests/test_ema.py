"""config.ema_decay: the moving average of the parameters, its update, evaluation and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import fashion_mnist_cnn
from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models.mlp import MLP
from jaxmodels.train import (
    base_config,
    checkpoint,
    config as config_lib,
    loop,
    optim,
    parallel,
    steps,
)

DATA = SyntheticDataset("image_classification", image_shape=(8, 8, 1), num_classes=10)


def test_the_average_follows_the_formula():
  decay, lr = 0.9, 0.1
  tx = optim.with_params_ema(optax.sgd(lr), decay)
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
  state = tx.init(params)
  ema = {k: np.asarray(v, np.float64) for k, v in params.items()}
  rng = np.random.default_rng(0)
  for count in range(30):
    grads = {k: jnp.asarray(rng.normal(size=np.shape(v)), jnp.float32) for k, v in params.items()}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    d = min(decay, (1 + count) / (10 + count))  # 0.1, 0.18, ..., then 0.9 from count 80 on
    ema = {k: d * ema[k] + (1 - d) * np.asarray(params[k], np.float64) for k in ema}
    for k in ema:
      np.testing.assert_allclose(np.asarray(state.ema[k]), ema[k], rtol=1e-6, atol=1e-7)
  assert int(state.count) == 30
  assert float(optim.ema_decay_at(decay, 1000)) == pytest.approx(decay)
  # The updates are the wrapped optimizer's: the average never steers the training.
  assert optim.eval_params(params, state) is state.ema
  assert optim.eval_params(params, optax.sgd(lr).init(params)) is params


def test_the_config_wraps_the_optimizer_and_checks_the_range():
  config = base_config()
  assert not isinstance(optim.make_optimizer(config).init({"w": jnp.ones(2)}), optim.ParamsEMAState)
  config.ema_decay = 0.99
  assert isinstance(optim.make_optimizer(config).init({"w": jnp.ones(2)}), optim.ParamsEMAState)
  config.ema_decay = 1.0
  with pytest.raises(config_lib.ConfigError, match=r"config.ema_decay=1.0 must be in \[0, 1\)"):
    config_lib.check(config, 1)


def test_evaluation_reads_the_average():
  model, task = MLP(hidden_sizes=(8,)), tasks.Classification(10)
  batch = next(DATA.train_batches(16, 0))
  config = base_config()
  config.ema_decay = 0.5
  tx = optim.make_optimizer(config)
  state = steps.init_state(model, task, tx, batch, seed=0)
  shifted = jax.tree_util.tree_map(lambda x: x + 0.3, state.params)
  state = state.replace(opt_state=state.opt_state._replace(ema=shifted))
  got = steps.eval_step(state, batch, model=model, task=task)
  want = steps.eval_step(state.replace(params=shifted, opt_state=()), batch, model=model, task=task)
  plain = steps.eval_step(state.replace(opt_state=()), batch, model=model, task=task)
  assert float(got["loss"][0]) == float(want["loss"][0]) != float(plain["loss"][0])


def _averages(name, num_steps=3):
  model, task = MLP(hidden_sizes=(16,)), tasks.Classification(10)
  config = base_config()
  config.optimizer, config.learning_rate, config.ema_decay = "adam", 0.01, 0.8
  tx, schedule = optim.make_optimizer(config), optim.learning_rate_schedule(config)
  strategy = parallel.make(name, model)
  batches = DATA.train_batches(16, seed=0)
  state = strategy.init_state(task, tx, next(DATA.train_batches(16, 0)), 0)
  train = strategy.train_fn(task, tx, schedule, state)
  dstate = strategy.put_state(state)
  for _ in range(num_steps):
    dstate, _ = train(dstate, strategy.put_batch(next(batches)))
  return strategy.get_state(dstate).opt_state.ema


def test_pmap_and_mesh_average_like_one_device():
  assert jax.device_count() == 8
  ref = _averages("none")
  for name in ("pmap", "mesh"):
    for a, b in zip(jax.tree_util.tree_leaves(_averages(name)), jax.tree_util.tree_leaves(ref)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=name)


def _tiny_config(**overrides):
  config = fashion_mnist_cnn.get_config()
  config.synthetic_data = True
  config.batch_size = 16
  config.model.features = (4,)
  config.model.dense_features = 8
  config.num_train_steps = 20
  config.log_every_steps = 5
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 5
  config.progress_bar = False
  config.schedule = "constant"
  config.ema_decay = 0.9
  config.update(overrides)
  return config


def _saved_state(workdir):
  ckpts = checkpoint.Checkpoints(workdir, 3)
  out = ckpts.manager.restore(ckpts.manager.latest_step())
  ckpts.close()
  return out["state"]


def test_resume_with_an_average_is_bit_identical(tmp_path):
  straight = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(tmp_path / "a"))
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=10), str(tmp_path / "b"))
  resumed = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(tmp_path / "b"))
  assert resumed["test_loss"] == straight["test_loss"]
  assert resumed["test_flip_accuracy"] == straight["test_flip_accuracy"]
  a, b = _saved_state(str(tmp_path / "a")), _saved_state(str(tmp_path / "b"))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  # The average is in the checkpoint, apart from the parameters it trails.
  ema, params = a["opt_state"]["ema"], a["params"]
  assert not np.array_equal(ema["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
