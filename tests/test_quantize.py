"""int8 quantization (qwix): per-channel weights within half a scale, outputs close to float32,
the workdir tool's files and sizes, predict on the int8 model, QAT, and bad input."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import fashion_mnist_cnn, imdb_lstm
from jaxmodels import predict, quantize
from jaxmodels.models import transformer
from jaxmodels.models.cnn import CNN
from jaxmodels.models.mlp import MLP
from jaxmodels.models.rnn import RNNClassifier
from jaxmodels.quantize import __main__ as quantize_cli
from jaxmodels.train import config as config_lib, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = np.random.default_rng(0).standard_normal((4, 12, 12, 1)).astype(np.float32)
FASHION = np.random.default_rng(1).standard_normal((4, 28, 28, 1)).astype(np.float32)
TOKENS = np.random.default_rng(0).integers(0, 84, (2, 16)).astype(np.int32)
TINY_GPT = transformer.GPT(
    vocab_size=84, model_dim=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=16
)
MODELS = {
    "mlp": (MLP(hidden_sizes=(32,)), IMAGES),
    "cnn": (CNN(features=(8, 16), dense_features=32), IMAGES),
    "gpt": (TINY_GPT, TOKENS),
}


def _float_variables(model, x):
  return jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x))(x)


def _kernels(params):
  """(float kernel, qwix WithAux) pairs of every quantized param, by path."""
  from qwix._src.providers import ptq

  from jaxmodels.quantize import abstract_variables  # noqa: F401  (qwix is imported by it)

  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      params, is_leaf=lambda x: isinstance(x, ptq.WithAux)
  )[0]:
    if isinstance(leaf, ptq.WithAux):
      flat[jax.tree_util.keystr(path)] = leaf
  return flat


@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt"])
def test_int8_weights_dequantize_within_half_a_per_channel_scale(name):
  model, x = MODELS[name]
  variables = _float_variables(model, x)
  _, qvars = quantize.quantize_variables(model, variables, (x,))
  floats = {
      jax.tree_util.keystr(p): np.asarray(v)
      for p, v in jax.tree_util.tree_flatten_with_path(quantize.nn.meta.unbox(variables["params"]))[
          0
      ]
  }
  kernels = _kernels(qvars["params"])
  assert kernels, "no weight was quantized"
  for path, boxed in kernels.items():
    w, q = floats[path], boxed.array
    assert q.qvalue.dtype == jnp.int8
    # One scale per output channel (the last axis; the qkv kernel's last three): absmax / 127.5,
    # qwix's symmetric int8 bound (127 + 0.5, so that the top bucket is a whole one).
    channel_axes = 3 if w.ndim == 4 and name == "gpt" else 1
    reduce = tuple(range(w.ndim - channel_axes))
    want = np.max(np.abs(w), axis=reduce, keepdims=True) / 127.5
    np.testing.assert_allclose(np.asarray(q.scale), want, rtol=1e-6, err_msg=path)
    error = np.abs(np.asarray(quantize.dequantize(boxed)) - w)
    # Half a step, and float32 rounding of w / scale (the top value sits on the bound itself).
    assert np.all(error <= np.asarray(q.scale) * (0.5 + 1e-4)), path
    assert np.any(error > 0), path  # the weights really went through int8


@pytest.mark.parametrize("tied", [False, True])
def test_gpt_embedding_tables_are_int8_per_row_and_the_model_reads_them(tied):
  model = TINY_GPT.clone(tie_embeddings=tied)
  variables = _float_variables(model, TOKENS)
  qmodel, qvars = quantize.quantize_variables(model, variables, (TOKENS,))
  floats = quantize.nn.meta.unbox(variables["params"])
  for module in ("token_embed", "token_pos"):
    w, q = np.asarray(floats[module]["embedding"]), qvars["params"][module]["embedding"]
    assert q.qvalue.dtype == jnp.int8 and q.qvalue.shape == w.shape
    want = np.max(np.abs(w), axis=1, keepdims=True) / 127.5  # one scale per row
    np.testing.assert_allclose(np.asarray(q.scale), want, rtol=1e-6, err_msg=module)
    error = np.abs(np.asarray(quantize.dequantize(q)) - w)
    assert np.all(error <= np.asarray(q.scale) * (0.5 + 1e-4)) and np.any(error > 0), module
  deq = {**variables, "params": quantize.dequantize(qvars["params"])}
  ref = model.apply(deq, TOKENS)
  np.testing.assert_allclose(qmodel.apply(qvars, TOKENS), ref, atol=1e-4 * np.max(np.abs(ref)))


@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt"])
def test_int8_outputs_are_close_to_float32(name):
  model, x = MODELS[name]
  variables = _float_variables(model, x)
  qmodel, qvars = quantize.quantize_variables(model, variables, (x,))
  ref = np.asarray(model.apply(variables, x))
  out = np.asarray(qmodel.apply(qvars, x))
  scale = np.max(np.abs(ref))
  assert np.max(np.abs(out - ref)) < 0.03 * scale
  assert np.max(np.abs(out - ref)) > 0  # int8 arithmetic, not the float32 model
  if name != "cnn":  # weights only: exactly the float model on the dequantized weights
    deq = {**variables, "params": quantize.dequantize(qvars["params"])}
    np.testing.assert_allclose(out, model.apply(deq, x), atol=1e-4 * scale)


def test_quantized_gpt_samples_like_the_float_model_on_its_dequantized_weights():
  variables = _float_variables(TINY_GPT, TOKENS)
  qmodel, qvars = quantize.quantize_variables(TINY_GPT, variables, (TOKENS,))
  deq = {**variables, "params": quantize.dequantize(qvars["params"])}
  prompt, rng = TOKENS[:1, :4], jax.random.PRNGKey(1)
  greedy = transformer.generate(TINY_GPT, deq, prompt, 8, rng, temperature=0.0)
  np.testing.assert_array_equal(transformer.generate(qmodel, qvars, prompt, 8, rng, 0.0), greedy)


def test_unsupported_models_are_named_with_the_supported_ones():
  with pytest.raises(quantize.QuantizeError, match=r"RNNClassifier.*MLP.*CNN.*GPT"):
    quantize.check_supported(RNNClassifier(vocab_size=10, num_classes=2))
  scanned = TINY_GPT.clone(scan_layers=True)
  with pytest.raises(quantize.QuantizeError, match="scan_layers=False"):
    quantize.check_supported(scanned)


def _tiny_config(**overrides):
  config = fashion_mnist_cnn.get_config()
  config.synthetic_data = True
  config.batch_size = 16
  config.model.features = (4,)
  config.model.dense_features = 64  # weights large enough that the .npz headers are small
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 2
  config.progress_bar = False
  config.schedule = "constant"
  config.parallelism = "none"
  config.update(overrides)
  return config


def _snapshot(directory):
  out = {}
  for dirpath, _, files in os.walk(directory):
    for f in files:
      with open(os.path.join(dirpath, f), "rb") as fh:
        out[os.path.relpath(os.path.join(dirpath, f), directory)] = hashlib.sha256(
            fh.read()
        ).hexdigest()
  return out


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
  """A tiny CNN trained a few steps on synthetic data, then quantized: (workdir, results,
  hashes of its checkpoints before quantizing)."""
  workdir = str(tmp_path_factory.mktemp("cnn"))
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), workdir)
  before = _snapshot(os.path.join(workdir, "checkpoints"))
  results = quantize_cli.run(workdir, "test")
  return workdir, results, before


def test_quantize_writes_the_int8_model_and_quantize_json(quantized):
  workdir, results, before = quantized
  saved = json.loads(open(os.path.join(workdir, "quantize.json")).read())
  assert saved == json.loads(json.dumps(results))
  for kind in ("float32", "int8"):
    assert {"loss", "accuracy", "bytes", "examples_per_s"} <= set(saved[kind])
  assert {"split", "step", "library", "size_ratio", "checkpoint", "quantized_dir"} <= set(saved)
  assert saved["step"] == 4 and saved["split"] == "test" and saved["library"].startswith("qwix")
  assert abs(saved["int8"]["accuracy"] - saved["float32"]["accuracy"]) <= 0.05
  weights = os.path.join(workdir, "quantized", "weights.npz")
  assert saved["int8"]["bytes"] == os.path.getsize(weights)
  assert saved["size_ratio"] == saved["float32"]["bytes"] / saved["int8"]["bytes"] >= 3.5
  with np.load(weights) as npz:
    assert any(npz[k].dtype == np.int8 for k in npz.files)
  assert _snapshot(os.path.join(workdir, "checkpoints")) == before  # only read
  assert "float32" in quantize_cli.table(results) and "x smaller" in quantize_cli.table(results)


def test_predict_loads_the_quantized_model(quantized):
  workdir, results, _ = quantized
  int8, float32 = predict.load_quantized(workdir), predict.load(workdir)
  assert int8.step == float32.step == results["step"]
  assert quantize.num_quantized(int8.variables) == results["quantized_arrays"]
  qmodel, qvars = quantize.quantize_variables(float32.model, float32.variables, (FASHION[:2],))
  np.testing.assert_array_equal(  # the saved int8 weights are the ones quantized from the ckpt
      predict.predict_classes(int8, FASHION)[0],
      np.asarray(jax.nn.softmax(qmodel.apply(qvars, FASHION), -1)),
  )


def _cli(module, *args):
  env = dict(os.environ, JAXMODELS_HOST_DEVICES="1")
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
      [sys.executable, "-m", module, *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_predict_cli_with_quantized(quantized):
  workdir, _, _ = quantized
  result = _cli("jaxmodels.predict", f"--workdir={workdir}", "--quantized", "--num_examples=3")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.count("predicted") == 3


def test_quantize_refuses_a_workdir_without_checkpoints(quantized, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(quantized[0], workdir)
  shutil.rmtree(os.path.join(workdir, "quantized"))
  os.remove(os.path.join(workdir, "quantize.json"))
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  os.makedirs(os.path.join(workdir, "checkpoints"))
  before = _snapshot(workdir)
  result = _cli("jaxmodels.quantize", f"--workdir={workdir}")
  assert result.returncode == 2
  assert "holds no checkpoint" in result.stderr and "train first" in result.stderr
  assert "Traceback" not in result.stderr
  assert _snapshot(workdir) == before
  assert not os.path.exists(os.path.join(workdir, "quantized"))
  assert not os.path.exists(os.path.join(workdir, "quantize.json"))


def test_quantize_refuses_an_unsupported_model_and_writes_nothing(quantized, tmp_path):
  workdir = str(tmp_path / "lstm")
  shutil.copytree(quantized[0], workdir)
  config = imdb_lstm.get_config()
  config.synthetic_data = True
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  with open(os.path.join(workdir, "run.json"), "w") as f:
    json.dump({"experiment": "experiments.imdb_lstm"}, f)
  before = _snapshot(workdir)
  result = _cli("jaxmodels.quantize", f"--workdir={workdir}")
  assert result.returncode == 2
  assert "RNNClassifier" in result.stderr and "Supported models" in result.stderr
  assert "Traceback" not in result.stderr
  assert _snapshot(workdir) == before  # quantized/ and quantize.json of before are untouched


def test_qat_trains_the_model_that_ptq_makes(tmp_path):
  config = _tiny_config(quantization="int8_qat", num_train_steps=8, augment=False)
  config.model.dropout_rate = 0.0  # the loss curve of 8 steps then shows the training alone
  model = fashion_mnist_cnn.get_model(config, {"num_classes": 10})
  variables = _float_variables(model, IMAGES)
  qat = quantize.for_training(model, config)
  qmodel, qvars = quantize.quantize_variables(model, variables, (IMAGES,))
  # The QAT forward pass computes what the int8 model computes, on float32 parameters.
  np.testing.assert_allclose(
      qat.apply(variables, IMAGES), qmodel.apply(qvars, IMAGES), rtol=1e-5, atol=1e-5
  )
  assert not np.allclose(qat.apply(variables, IMAGES), model.apply(variables, IMAGES), atol=1e-6)
  summary = loop.train_and_evaluate(fashion_mnist_cnn, config, str(tmp_path))
  first = json.loads(open(tmp_path / "metrics.jsonl").readline())
  assert summary["steps"] == 8 and summary["train_loss"] < first["loss"]
  results = quantize_cli.run(str(tmp_path), "test")  # its checkpoint quantizes like any other
  assert results["int8"]["accuracy"] == pytest.approx(summary["test_accuracy"], abs=0.05)


def test_quantization_config_values_are_checked():
  config = _tiny_config(quantization="int4")
  with pytest.raises(config_lib.ConfigError, match=r"quantization.*'int4'.*int8_qat"):
    config_lib.check(config, 1)
  lstm = imdb_lstm.get_config()
  lstm.quantization = "int8_qat"
  model = imdb_lstm.get_model(lstm, {"vocab_size": 10, "num_classes": 2, "seq_len": 8})
  with pytest.raises(config_lib.ConfigError, match="int8_qat.*RNNClassifier"):
    quantize.for_training(model, lstm)


def test_a_run_saved_before_the_quantization_key_existed_resumes():
  config = _tiny_config()
  saved = json.loads(config_lib.to_json(config))
  del saved["quantization"]
  assert config_lib.differing_keys(saved, config) == []
  config.quantization = "int8_qat"
  assert config_lib.differing_keys(saved, config) == ["quantization"]
