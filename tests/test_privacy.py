"""DP-SGD (jaxmodels/train/privacy.py): clipping, noise, accounting, parallel equality, errors."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import mnist_dp
from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models.cnn import CNN
from jaxmodels.models.mlp import MLP
from jaxmodels.train import config as config_lib, loop, parallel, privacy, steps

DATA = SyntheticDataset("image_classification", image_shape=(8, 8, 1), num_classes=10)
TASK = tasks.Classification(10)
MODEL = MLP(hidden_sizes=(16,), activation="tanh")


def _batch(n=16, seed=0):
  return next(DATA.train_batches(n, seed))


def _step(strategy_name, dp, batch, model=MODEL, lr=1.0, task=TASK, fsdp=1):
  """The parameters after one SGD step (learning rate `lr`) from the seed-0 state."""
  tx = optax.sgd(lr)
  strategy = parallel.make(strategy_name, model, fsdp=fsdp, dp=dp)
  state = steps.init_state(strategy.model, task, tx, batch, seed=0)
  before = jax.device_get(state.params)  # the step donates the state
  train = strategy.train_fn(task, tx, optax.constant_schedule(lr), state)
  dstate, sums = train(strategy.put_state(state), strategy.put_batch(batch))
  return strategy.get_state(dstate).params, strategy.fetch(sums), before


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)])


def test_clipped_per_example_norms_never_exceed_the_clip():
  rng = np.random.default_rng(0)
  scales = np.array([1e-4, 0.3, 0.99, 1.0, 1.01, 5.0, 1e3, 0.0], np.float32)
  grads = {
      "w": rng.standard_normal((8, 5, 3)).astype(np.float32),
      "b": rng.standard_normal((8, 3)).astype(np.float32),
  }
  norms = np.sqrt(np.sum(grads["w"] ** 2, (1, 2)) + np.sum(grads["b"] ** 2, 1))
  grads = {k: v * (scales / norms).reshape((-1,) + (1,) * (v.ndim - 1)) for k, v in grads.items()}
  clipped, got_norms = privacy.clip_per_example(grads, 1.0)
  np.testing.assert_allclose(got_norms, scales, rtol=1e-5)
  after = np.sqrt(np.sum(np.asarray(clipped["w"]) ** 2, (1, 2)) + np.sum(clipped["b"] ** 2, 1))
  assert np.all(after <= 1.0 * (1 + 1e-6)), after
  np.testing.assert_allclose(after, np.minimum(scales, 1.0), rtol=1e-5)
  small = scales <= 1.0  # gradients inside the ball are left as they are
  np.testing.assert_allclose(np.asarray(clipped["w"])[small], grads["w"][small], rtol=1e-6)


def test_clipped_norms_in_the_train_step_are_bounded():
  """Through the step: with no noise, the update of a batch of one is at most clip * lr."""
  batch = _batch(1)
  after, sums, before = _step("none", privacy.DPSGD(0.05, 0.0), batch)
  step = np.linalg.norm(_flat(after) - _flat(before))
  assert sums["dp_clipped_fraction"][0] == 1  # the gradient of this example is > 0.05
  np.testing.assert_allclose(step, 0.05, rtol=1e-4)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_no_noise_and_a_huge_clip_is_the_plain_step(label_smoothing):
  task = tasks.Classification(10, label_smoothing=label_smoothing)
  batch = _batch(16)
  plain, plain_sums, _ = _step("none", None, batch, task=task, lr=0.1)
  private, private_sums, _ = _step("none", privacy.DPSGD(1e9, 0.0), batch, task=task, lr=0.1)
  np.testing.assert_allclose(_flat(private), _flat(plain), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(private_sums["loss"][0], plain_sums["loss"][0], rtol=1e-6)
  assert private_sums["dp_clipped_fraction"][0] == 0


def test_the_noise_has_the_right_standard_deviation():
  """(noised - clean) * batch size over ~1000 parameters has std noise_multiplier * clip;
  the 5% tolerance would fail at 2x (or at noise added per device, under pmap: sqrt(8)x)."""
  model = MLP(hidden_sizes=(64,))
  batch = _batch(16)
  clip, sigma = 0.5, 2.0
  clean, _, _ = _step("none", privacy.DPSGD(clip, 0.0), batch, model=model)
  for name in ("none", "pmap"):
    noised, _, _ = _step(name, privacy.DPSGD(clip, sigma), batch, model=model)
    noise = (_flat(clean) - _flat(noised)) * 16
    assert noise.size > 4000
    np.testing.assert_allclose(np.std(noise), sigma * clip, rtol=0.05, err_msg=name)
    assert abs(np.mean(noise)) < 0.05 * sigma * clip


@pytest.mark.parametrize("sigma", [0.0, 1.0], ids=["no_noise", "noise"])
def test_pmap_over_8_devices_and_mesh_equal_one_device(sigma):
  assert jax.device_count() == 8
  dp = privacy.DPSGD(0.1, sigma)
  batch = _batch(16)
  ref, ref_sums, _ = _step("none", dp, batch)
  for name, fsdp in [("pmap", 1), ("mesh", 1), ("mesh", 2)]:
    got, sums, _ = _step(name, dp, batch, fsdp=fsdp)
    np.testing.assert_allclose(_flat(got), _flat(ref), rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(sums["loss"][0], ref_sums["loss"][0], rtol=1e-5)
    assert sums["dp_clipped_fraction"] == ref_sums["dp_clipped_fraction"]


def test_epsilon_equals_dp_accounting_for_a_known_case():
  from dp_accounting import dp_event
  from dp_accounting.rdp import rdp_privacy_accountant

  q, sigma, delta = 256 / 60000, 1.1, 1e-5
  accountant = privacy.Accountant(sigma, q, delta)
  for steps_ in (1, 100, 2340):
    reference = rdp_privacy_accountant.RdpAccountant()
    reference.compose(
        dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps_
        )
    )
    np.testing.assert_allclose(accountant.epsilon(steps_), reference.get_epsilon(delta), rtol=1e-9)
  assert accountant.epsilon(0) == 0.0
  assert 0 < accountant.epsilon(100) < accountant.epsilon(2340)


def test_the_calibrated_noise_spends_the_target_epsilon():
  q, delta, n = 256 / 60000, 1e-5, 500
  sigma = privacy.calibrate_noise(3.0, delta, q, n)
  spent = privacy.Accountant(sigma, q, delta).epsilon(n)
  assert spent <= 3.0 and spent == pytest.approx(3.0, rel=1e-3)
  assert privacy.calibrate_noise(1.0, delta, q, n) > sigma > privacy.calibrate_noise(8, delta, q, n)


def test_default_delta_is_one_over_n_rounded_down_to_a_power_of_ten():
  assert privacy.default_delta(60000) == pytest.approx(1e-5)
  assert privacy.default_delta(50000) == pytest.approx(1e-5)
  assert privacy.default_delta(100) == pytest.approx(1e-2)
  assert privacy.default_delta(101) == pytest.approx(1e-3)


def _dp_config(**dp):
  config = mnist_dp.get_config()
  config.dp.update(dp)
  return config


@pytest.mark.parametrize(
    "dp, says",
    [
        (dict(epsilon=0.0), "config.dp.epsilon=0.0 must be > 0"),
        (dict(epsilon=-1.0), "config.dp.epsilon=-1.0 must be > 0"),
        (dict(delta=0.0), "config.dp.delta=0.0 must be in (0, 1)"),
        (dict(delta=1.0), "config.dp.delta=1.0 must be in (0, 1)"),
        (dict(l2_clip=0.0), "config.dp.l2_clip=0.0 must be > 0"),
        (dict(noise_multiplier=1.0), "exactly one of config.dp.noise_multiplier"),
        (dict(epsilon=None), "exactly one of config.dp.noise_multiplier"),
        (dict(epsilon=None, noise_multiplier=0.0), "config.dp.noise_multiplier=0.0 must be > 0"),
    ],
)
def test_bad_dp_values_are_clear_errors(dp, says):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check(_dp_config(**dp), 1)
  assert says in str(e.value)


def test_dp_with_gradient_accumulation_is_refused():
  config = _dp_config()
  config.grad_accum_steps = 2
  with pytest.raises(config_lib.ConfigError, match="grad_accum_steps=2"):
    config_lib.check(config, 1)


def test_dp_off_ignores_the_dp_keys():
  config = _dp_config(epsilon=-1.0, enabled=False)
  config_lib.check(config, 1)


def _tiny(workdir_steps=4, **dp):
  config = mnist_dp.get_config()
  config.synthetic_data = True
  config.batch_size = 16
  config.model = dict(features=(4,), dense_features=8, activation="tanh")
  config.num_train_steps = workdir_steps
  config.schedule = "constant"  # some tests resume with more steps: a decay's horizon would move
  config.log_every_steps = 2
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 2
  config.progress_bar = False
  config.parallelism = "none"
  config.dp.update(dp)
  return config


def test_batchnorm_is_refused_and_nothing_is_written(tmp_path):
  config = _tiny()
  config.model.use_batchnorm = True
  workdir = str(tmp_path / "run")
  with pytest.raises(config_lib.ConfigError, match="batch_stats.*BatchNorm"):
    loop.train_and_evaluate(mnist_dp, config, workdir)
  assert not os.path.exists(workdir)
  with pytest.raises(config_lib.ConfigError, match="use_batchnorm=False"):
    privacy.check_model(CNN(features=(4,), use_batchnorm=True), TASK, _batch(2))
  privacy.check_model(CNN(features=(4,)), TASK, _batch(2))  # no BatchNorm: accepted


class SmallTrainSplit(SyntheticDataset):
  """Synthetic images with a train split of 640 examples, so that epsilon is far from 0."""

  def num_examples(self, split):
    return 640 if split == "train" else super().num_examples(split)


@pytest.fixture
def small_data(monkeypatch):
  data = SmallTrainSplit("image_classification", image_shape=(28, 28, 1), num_classes=10)
  monkeypatch.setattr(mnist_dp, "get_data", lambda config: data)
  return data


def _epsilons(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["dp_epsilon"] for r in records if "dp_epsilon" in r}


def test_summary_has_dp_epsilon_and_delta_and_a_resume_continues_the_accounting(
    tmp_path, small_data
):
  workdir = str(tmp_path / "run")
  config = _tiny(4, epsilon=None, noise_multiplier=0.8)
  first = loop.train_and_evaluate(mnist_dp, config, workdir)
  accountant = privacy.Accountant(0.8, 16 / 640, 1e-5)
  assert accountant.epsilon(4) > 0.1
  assert first["dp_delta"] == 1e-5
  assert first["dp_epsilon"] == pytest.approx(accountant.epsilon(4), rel=1e-9)
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["dp_epsilon"] == first["dp_epsilon"] and saved["dp_delta"] == 1e-5
  # Resumed to 8 steps (a given noise multiplier: num_train_steps may change): the epsilon goes
  # on from the 4 steps already spent.
  second = loop.train_and_evaluate(mnist_dp, _tiny(8, epsilon=None, noise_multiplier=0.8), workdir)
  assert second["dp_epsilon"] == pytest.approx(accountant.epsilon(8), rel=1e-9)
  assert second["dp_epsilon"] > first["dp_epsilon"]
  logged = _epsilons(workdir)
  assert sorted(logged) == [2, 4, 6, 8]
  for step, epsilon in logged.items():
    assert epsilon == pytest.approx(accountant.epsilon(step), rel=1e-9)


def test_a_calibrated_run_refuses_a_new_horizon_on_resume(tmp_path, small_data):
  workdir = str(tmp_path / "run")
  first = loop.train_and_evaluate(mnist_dp, _tiny(2, epsilon=2.0, delta=None), workdir)
  assert first["dp_epsilon"] == pytest.approx(2.0, rel=1e-3) and first["dp_epsilon"] <= 2.0
  assert first["dp_delta"] == pytest.approx(1e-3)  # 1/640 rounded down to a power of ten
  with pytest.raises(config_lib.ConfigError, match="DP-SGD noise was calibrated"):
    loop.train_and_evaluate(mnist_dp, _tiny(4, epsilon=2.0, delta=None), workdir)


def test_a_saved_config_without_dp_keys_resumes():
  """Workdirs written before config.dp existed hold no dp.* keys: they had dp off."""
  config = config_lib.base_config()
  saved = json.loads(config_lib.to_json(config))
  del saved["dp"]
  assert config_lib.differing_keys(saved, config) == []
  config.dp.enabled = True
  assert "dp.enabled" in config_lib.differing_keys(saved, config)


@pytest.mark.parametrize(
    "argv, sigma, epsilon",
    [
        (["--config.dp.noise_multiplier=1.1"], None, None),  # the experiment's epsilon is unset
        (["--config.dp.epsilon=8"], None, 3.0),  # epsilon given: noise stays unset
        (["--config.dp.epsilon=8", "--config.dp.noise_multiplier=1.1"], None, 3.0),  # both: kept
    ],
)
def test_the_noise_key_given_alone_replaces_the_experiments_default(argv, sigma, epsilon):
  config = mnist_dp.get_config()  # dp.epsilon=3 by default
  config_lib.prefer_given(argv, config)
  assert config.dp.noise_multiplier == sigma and config.dp.epsilon == epsilon


def test_mnist_dp_runs_with_a_given_noise_multiplier_instead_of_its_epsilon():
  config = mnist_dp.get_config()
  argv = ["--config.dp.noise_multiplier=1.1"]
  config_lib.check_overrides(argv, config)
  config_lib.prefer_given(argv, config)
  config.dp.noise_multiplier = 1.1  # what absl then parses from argv
  config_lib.check(config, num_devices=1)
  assert privacy.plan(config, 60000).calibrated is False


class _Mixed(nn.Module):
  """Convolutions the ghost-clipping patches must get right (stride, dilation, VALID, explicit
  and int padding, no bias) and a Dense over positions ([B, T, d] inputs)."""

  @nn.compact
  def __call__(self, x, train=False):
    x = jnp.tanh(nn.Conv(3, (3, 3), strides=2, padding="SAME")(x))
    x = jnp.tanh(nn.Conv(4, (2, 3), kernel_dilation=(2, 1), padding="VALID", use_bias=False)(x))
    x = jnp.tanh(nn.Conv(4, (1, 1), padding=((1, 0), (0, 2)))(x))
    x = jnp.tanh(nn.Conv(5, (3, 3), padding=1)(x))
    x = jnp.tanh(nn.Dense(32)(x.reshape(x.shape[0], -1, x.shape[-1])))  # over 12 positions
    x = jnp.tanh(nn.Dense(32)(x))  # its per-example norm from the 12 x 12 Gram matrices
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


class _WithNorm(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(10)(nn.LayerNorm()(x.reshape(x.shape[0], -1)))


GHOST_MODELS = {
    "mlp": MLP(hidden_sizes=(16, 8), activation="tanh"),
    "cnn": CNN(features=(4, 8), dense_features=16, activation="tanh"),
    "mixed": _Mixed(),
}


@pytest.mark.parametrize("name", sorted(GHOST_MODELS))
@pytest.mark.parametrize("l2_clip", [0.05, 1e6])
def test_ghost_clipping_equals_per_example_vmap(name, l2_clip):
  batch = _batch(12)
  ghost, ghost_sums, before = _step(
      "none", privacy.DPSGD(l2_clip, 0.0, "ghost"), batch, GHOST_MODELS[name]
  )
  vmap, vmap_sums, _ = _step("none", privacy.DPSGD(l2_clip, 0.0, "vmap"), batch, GHOST_MODELS[name])
  moved = _flat(ghost) - _flat(before)
  assert np.max(np.abs(moved)) > 0
  np.testing.assert_allclose(moved, _flat(vmap) - _flat(before), rtol=1e-4, atol=1e-7)
  assert ghost_sums["dp_clipped_fraction"] == vmap_sums["dp_clipped_fraction"]
  np.testing.assert_allclose(ghost_sums["loss"], vmap_sums["loss"], rtol=1e-5)


def test_auto_falls_back_to_vmap_and_ghost_names_the_model_it_cannot_cover():
  batch = _batch(8)
  auto, _, _ = _step("none", privacy.DPSGD(1.0, 0.0, "auto"), batch, _WithNorm())
  vmap, _, _ = _step("none", privacy.DPSGD(1.0, 0.0, "vmap"), batch, _WithNorm())
  np.testing.assert_array_equal(_flat(auto), _flat(vmap))
  with pytest.raises(config_lib.ConfigError, match=r"per_example='ghost'.*_WithNorm.*'vmap'"):
    _step("none", privacy.DPSGD(1.0, 0.0, "ghost"), batch, _WithNorm())


def test_mnist_dp_names_its_datasets_for_another():
  config = mnist_dp.get_config()
  config.dataset = "cifar10"
  with pytest.raises(
      config_lib.ConfigError, match="config.dataset='cifar10'.*mnist, fashion_mnist"
  ):
    mnist_dp.get_data(config)
