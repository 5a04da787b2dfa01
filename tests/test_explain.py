"""jaxmodels.explain: integrated gradients and saliency against closed forms, the sanity checks of
the attribution literature, the attention weights MultiHeadAttention sows, and the command on
tiny trained workdirs (image, text, GPT) and on bad input."""

import hashlib
import importlib
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from jaxmodels.explain import attributions, explainer
from jaxmodels.explain.__main__ import main
from jaxmodels.models.attention import MultiHeadAttention, causal_mask
from jaxmodels.models.mlp import MLP
from jaxmodels.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------- the maths


@pytest.mark.parametrize("rule", attributions.RULES)
def test_integrated_gradients_of_a_separable_function_is_its_closed_form(rule):
  """f = sum(sin x): IG_i = sin(x_i) - sin(b_i) exactly in the limit of many steps."""
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 7))
  baseline = jnp.full_like(x, 0.3)
  ig = attributions.integrated_gradients(
      lambda z: jnp.sum(jnp.sin(z)), x, baseline, steps=256, rule=rule
  )
  # Second-order rules are within ~1e-5 here; left and right sums are first order.
  tolerance = 1e-4 if rule in ("trapezoid", "riemann_middle") else 2e-2
  np.testing.assert_allclose(ig, np.sin(x) - np.sin(0.3), atol=tolerance)


def test_the_trapezoid_rule_is_exact_for_a_quadratic():
  """grad of c x^2 is linear along the path, which the trapezoid rule integrates exactly even with
  one interval; the left Riemann sum does not."""
  x, b = jnp.array([1.0, -2.0, 3.0]), jnp.array([0.5, 0.5, -1.0])
  f = lambda z: jnp.sum(jnp.array([1.0, 2.0, 3.0]) * z**2)
  want = np.array([1.0, 2.0, 3.0]) * (np.square(x) - np.square(b))
  np.testing.assert_allclose(attributions.integrated_gradients(f, x, b, steps=1), want, rtol=1e-6)
  left = attributions.integrated_gradients(f, x, b, steps=1, rule="riemann_left")
  assert not np.allclose(left, want)


def _random_mlp(seed=0, shape=(4, 8, 8, 1)):
  model = MLP(hidden_sizes=(32, 16), num_classes=3, activation="tanh")
  x = jax.random.normal(jax.random.PRNGKey(seed + 100), shape)
  return model, model.init(jax.random.PRNGKey(seed), x), x


def test_integrated_gradients_satisfy_completeness_within_one_percent():
  """sum of attributions = f(x) - f(baseline) per example, for a random MLP and the class logit."""
  model, variables, x = _random_mlp()
  classes = np.array([0, 1, 2, 1])
  per_example = lambda z: model.apply(variables, z)[np.arange(4), classes]
  f = lambda z: jnp.sum(per_example(z))
  baseline = jnp.zeros_like(x)
  ig = attributions.integrated_gradients(f, x, baseline, steps=64)
  gap = per_example(x) - per_example(baseline)
  assert np.all(np.abs(gap) > 1e-2)  # a gap worth checking against
  np.testing.assert_allclose(ig.sum(axis=(1, 2, 3)), gap, rtol=0.01)


def test_saliency_of_a_linear_model_is_its_weights():
  dense = nn.Dense(1)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 20))
  variables = dense.init(jax.random.PRNGKey(2), x)
  got = attributions.saliency(lambda z: dense.apply(variables, z)[0, 0], x)
  np.testing.assert_allclose(got[0], variables["params"]["kernel"][:, 0], rtol=1e-6)


def test_rank_correlation_is_spearmans_with_ties():
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, 5, 200), rng.standard_normal(200)
  b[:50] = 0.0
  assert attributions.rank_correlation(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
  assert attributions.rank_correlation(b, b) == pytest.approx(1.0)


def _informative_pixel_data(n, seed):
  """8x8 noise images; the class is the sign of the top-left 2x2 patch's sum (3 classes with a
  band around 0), so a trained model's attributions belong on those 4 pixels."""
  x = np.random.default_rng(seed).standard_normal((n, 8, 8, 1)).astype(np.float32)
  s = x[:, :2, :2, 0].sum(axis=(1, 2))
  return x, np.where(s > 0.5, 2, np.where(s < -0.5, 0, 1)).astype(np.int32)


def _train(model, variables, steps=300):
  x, y = _informative_pixel_data(1024, 0)
  tx = optax.adam(1e-2)
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = variables, tx.init(variables)
  for _ in range(steps):
    params, opt_state = step(params, opt_state)
  return params


def test_attributions_change_when_the_weights_are_rerandomised():
  """Adebayo et al. 2018's model-parameter randomisation test: a trained model's attribution maps
  and those of the same architecture with re-randomised weights rank-correlate weakly, while the
  trained model's maps concentrate on the pixels that decide the class."""
  model, initial, _ = _random_mlp()
  trained = _train(model, initial)
  random = model.init(jax.random.PRNGKey(7), jnp.zeros((1, 8, 8, 1)))
  x, _ = _informative_pixel_data(16, 1)
  x = jnp.asarray(x)
  accuracy = np.mean(model.apply(trained, x).argmax(-1) == _informative_pixel_data(16, 1)[1])
  assert accuracy >= 0.8  # the trained model learned the task: its maps have something to show

  def maps(params):
    classes = model.apply(params, x).argmax(-1)
    f = lambda z: jnp.sum(model.apply(params, z)[np.arange(16), classes])
    ig = attributions.integrated_gradients(f, x, jnp.zeros_like(x), steps=32)
    return {"ig": np.asarray(ig), "saliency": np.abs(np.asarray(attributions.saliency(f, x)))}

  got, rerandomised = maps(trained), maps(random)
  # Integrated gradients are compared signed: |IG| carries the factor |x - baseline| whatever the
  # weights, which keeps its rank correlation near 0.46 here (the input-times-gradient effect
  # Adebayo et al. describe); the signed maps and |saliency| measured -0.09 and -0.04.
  for method in ("ig", "saliency"):
    correlations = [
        attributions.rank_correlation(a, b) for a, b in zip(got[method], rerandomised[method])
    ]
    assert np.mean(correlations) < 0.3, (method, correlations)
    share = np.abs(got[method][:, :2, :2]).sum() / np.abs(got[method]).sum()
    assert share > 0.3, (method, share)  # 4 of 64 pixels: about 6% for a map blind to the task


# ---------- attention weights


def test_sown_attention_weights_reproduce_the_attention_output():
  """out = Dense_out(weights @ V) with the sown weights; they are causal rows summing to 1, and
  asking for them changes no output."""
  mha = MultiHeadAttention(num_heads=2, model_dim=8)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
  mask = causal_mask(5)
  variables = mha.init(jax.random.PRNGKey(1), x, mask=mask)
  assert "intermediates" not in variables
  plain = mha.apply(variables, x, mask=mask)
  out, state = mha.apply(variables, x, mask=mask, mutable=["intermediates"])
  np.testing.assert_array_equal(out, plain)
  (weights,) = state["intermediates"]["attention_weights"]
  assert weights.shape == (2, 2, 5, 5)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  assert np.all(np.triu(np.asarray(weights), k=1) == 0.0)
  p = nn.meta.unbox(variables["params"])
  v = jnp.einsum("btc,chd->bthd", x, p["value"]["kernel"]) + p["value"]["bias"]
  heads = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 5, 8)
  np.testing.assert_allclose(heads @ p["out"]["kernel"] + p["out"]["bias"], out, atol=1e-5)


# ---------- the command

TINY = {
    "fashion_mnist_cnn": {"model.features": (4,), "model.dense_features": 8},
    "imdb_lstm": {"max_len": 12, "vocab_size": 50, "model.embed_dim": 8, "model.hidden_size": 8},
    "shakespeare_gpt": {
        "block_size": 12,
        "model.model_dim": 16,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.mlp_dim": 32,
        "sample_tokens": 2,
    },
    "shakespeare_rnn": {"block_size": 12, "model.embed_dim": 8, "model.hidden_size": 8},
}


def _tiny_config(module, overrides):
  config = module.get_config()
  config.update(
      dict(
          synthetic_data=True,
          batch_size=8,
          num_train_steps=2,
          log_every_steps=1,
          eval_every_steps=2,
          checkpoint_every_steps=2,
          progress_bar=False,
      )
  )
  config.warmup_steps = min(config.warmup_steps, 1)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  out = {}
  for name, overrides in TINY.items():
    module = importlib.import_module(f"experiments.{name}")
    out[name] = str(tmp_path_factory.mktemp(name))
    loop.train_and_evaluate(module, _tiny_config(module, overrides), out[name])
  return out


def snapshot(workdir):
  digest = {}
  for dirpath, _, files in os.walk(workdir):
    for name in files:
      with open(os.path.join(dirpath, name), "rb") as fh:
        digest[os.path.relpath(os.path.join(dirpath, name), workdir)] = hashlib.sha256(
            fh.read()
        ).hexdigest()
  return digest


def _pngs(workdir):
  directory = os.path.join(workdir, "explain")
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


@pytest.mark.parametrize(
    "name, want",
    [
        ("fashion_mnist_cnn", ["images.png"]),
        ("imdb_lstm", ["tokens_0.png", "tokens_1.png", "tokens_2.png"]),
        ("shakespeare_gpt", ["attention_block_self_attn.png"]),
    ],
)
def test_explain_writes_the_figures(workdirs, name, want, capsys):
  main(workdirs[name], num_examples=3, split="test", steps=8)
  assert _pngs(workdirs[name]) == want
  printed = capsys.readouterr().out
  for png in want:
    path = os.path.join(workdirs[name], "explain", png)
    assert f"wrote {path}" in printed
    with open(path, "rb") as fh:
      assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  if name != "shakespeare_gpt":
    assert "completeness" in printed


def test_attention_maps_hold_every_layer_and_head(workdirs):
  from jaxmodels import predict

  trained = predict.load(workdirs["shakespeare_gpt"])
  ids = np.arange(1, 11, dtype=np.int32)[None]
  maps = explainer.attention_weights(trained.model, trained.variables, (ids,))
  assert list(maps) == ["block_self_attn"]
  assert maps["block_self_attn"].shape == (2, 2, 10, 10)  # layers, heads, queries, keys
  np.testing.assert_allclose(maps["block_self_attn"].sum(-1), 1.0, rtol=1e-5)


def _explain(args):
  env = dict(os.environ, JAXMODELS_HOST_DEVICES="1")
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
      [sys.executable, "-m", "jaxmodels.explain", *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


@pytest.mark.parametrize(
    "case, words",
    [
        ("unsupported", ["RNNLanguageModel", "does not explain", "imdb_lstm", "shakespeare_gpt"]),
        ("num_examples", ["--num_examples=0", "must be >= 1"]),
        ("no_checkpoint", ["holds no checkpoint", "train first"]),
    ],
)
def test_bad_input_is_a_clear_error_and_overwrites_nothing(workdirs, tmp_path, case, words):
  workdir = tmp_path / "w"
  source = "shakespeare_rnn" if case == "unsupported" else "fashion_mnist_cnn"
  shutil.copytree(workdirs[source], workdir)
  args = [f"--workdir={workdir}"]
  if case == "num_examples":
    args.append("--num_examples=0")
  if case == "no_checkpoint":
    shutil.rmtree(workdir / "checkpoints")
    (workdir / "checkpoints").mkdir()
  before = snapshot(workdir)
  result = _explain(args)
  assert result.returncode == 2, result.stderr
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith("error: ")
  for word in words:
    assert word in message
  assert snapshot(workdir) == before
