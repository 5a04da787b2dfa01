"""Hugging Face GPT-2 <-> GPT: the references are real transformers models with random weights."""

import copy
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.models import transformer
from jaxmodels.models.convert import (
    ConvertError,
    load_huggingface,
    load_tokenizer,
    save_huggingface,
)
from jaxmodels.models.mlp import MLP

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = [
    "the cat sat on the mat and the dog sat on the log",
    "a quick brown fox jumps over the lazy dog",
    "to be or not to be, that is the question",
    "all that glitters is not gold; the cat is not a dog",
] * 4
VARIANTS = {
    # GPT-2 as released: tied head, tanh GELU, n_inner = 4 * n_embd, epsilon 1e-5.
    "tied": dict(),
    # An untied head (lm_head.weight transposed), exact GELU, a narrow MLP, a large epsilon.
    "untied": dict(
        tie_word_embeddings=False, activation_function="gelu", n_inner=96, layer_norm_epsilon=1e-3
    ),
}


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  """A byte-level BPE vocabulary trained here: (directory with vocab.json, merges.txt and
  tokenizer.json, number of tokens)."""
  directory = str(tmp_path_factory.mktemp("bpe"))
  tok = tokenizers.ByteLevelBPETokenizer(add_prefix_space=False)
  tok.train_from_iterator(
      SENTENCES, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>"]
  )
  tok.save_model(directory)
  tok.save(os.path.join(directory, "tokenizer.json"))
  return directory, tok.get_vocab_size()


def _hf_config(vocab_size, **overrides):
  return transformers.GPT2Config(
      n_layer=2,
      n_embd=64,
      n_head=4,
      n_positions=64,
      vocab_size=vocab_size,
      bos_token_id=None,
      eos_token_id=None,
      **overrides,
  )


def _randomise(model, seed):
  """Every parameter random (LayerNorm scales around 1), so a swapped or dropped tensor shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = 0.1 * torch.randn(p.shape, generator=gen)
      is_scale = name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
      p.copy_(1.0 + noise if is_scale else noise)
  return model.eval()


def _save_hf(directory, config, seed=0, safe=True, tokenizer_dir=None):
  model = _randomise(transformers.GPT2LMHeadModel(config), seed)
  if safe:
    model.save_pretrained(directory, safe_serialization=True)
  else:
    os.makedirs(directory, exist_ok=True)
    config.save_pretrained(directory)
    torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))
  if tokenizer_dir is not None:
    for name in ("vocab.json", "merges.txt"):
      shutil.copy(os.path.join(tokenizer_dir, name), directory)
  return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory, bpe):
  """Saves each variant once: variant -> (torch GPT2LMHeadModel, its directory, which holds
  model.safetensors, config.json, vocab.json and merges.txt)."""
  models = {}

  def get(variant):
    if variant not in models:
      directory = str(tmp_path_factory.mktemp(f"hf_{variant}"))
      config = _hf_config(bpe[1], **VARIANTS[variant])
      models[variant] = _save_hf(directory, config, tokenizer_dir=bpe[0]), directory
    return models[variant]

  return get


@pytest.fixture(params=list(VARIANTS))
def hf_dir(request, saved):
  return saved(request.param)


@pytest.fixture
def gpt2_dir(saved):
  return saved("tied")


def _ids_and_mask(vocab_size):
  ids = np.random.RandomState(0).randint(0, vocab_size, (3, 16))
  mask = np.ones_like(ids)
  mask[1, 11:] = 0  # right padding
  mask[2, :4] = 0  # left padding
  return ids, mask


def _hf_logits(model, ids, mask=None):
  with torch.no_grad():
    mask = None if mask is None else torch.tensor(mask)
    return model(torch.tensor(ids), attention_mask=mask).logits.numpy()


def _assert_logits_equal(module, variables, model, ids, mask):
  ours = np.asarray(module.apply(variables, jnp.asarray(ids), jnp.asarray(mask)))
  theirs = _hf_logits(model, ids, mask)
  real = mask.astype(bool)  # padded positions' outputs are not defined the same way
  np.testing.assert_allclose(ours[real], theirs[real], rtol=1e-4, atol=1e-4)


# ---------- import


def test_imported_logits_equal_transformers(hf_dir):
  model, directory = hf_dir
  module, variables = load_huggingface(directory)
  assert module.layer_norm_epsilon == model.config.layer_norm_epsilon
  assert module.tie_embeddings == model.config.tie_word_embeddings
  ids, mask = _ids_and_mask(module.vocab_size)
  _assert_logits_equal(module, variables, model, ids, mask)


def test_reading_safetensors_and_the_tokenizer_imports_no_torch(gpt2_dir):
  code = (
      "import sys; from jaxmodels.models import convert; "
      f"convert.load_huggingface({gpt2_dir[1]!r}); convert.load_tokenizer({gpt2_dir[1]!r}); "
      "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  result = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "[]"


def test_import_from_pytorch_model_bin_equals_transformers(tmp_path, bpe):
  model = _save_hf(str(tmp_path), _hf_config(bpe[1], **VARIANTS["untied"]), seed=3, safe=False)
  assert not os.path.exists(tmp_path / "model.safetensors")
  module, variables = load_huggingface(str(tmp_path))
  ids, mask = _ids_and_mask(module.vocab_size)
  _assert_logits_equal(module, variables, model, ids, mask)


def test_original_gpt2_names_buffers_and_a_stored_tied_head_load(gpt2_dir, tmp_path):
  from safetensors.numpy import load_file, save_file

  model, directory = gpt2_dir
  directory = _copy(directory, tmp_path)
  path = os.path.join(directory, "model.safetensors")
  # As openai-community/gpt2 stores them: no 'transformer.' prefix, causal-mask buffers.
  tensors = {k.removeprefix("transformer."): v for k, v in load_file(path).items()}
  tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
  tensors["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
  tensors["lm_head.weight"] = tensors["wte.weight"]
  save_file(tensors, path, metadata={"format": "pt"})
  module, variables = load_huggingface(directory)
  ids, mask = _ids_and_mask(module.vocab_size)
  _assert_logits_equal(module, variables, model, ids, mask)


def test_sharded_and_bfloat16_safetensors_load(gpt2_dir, tmp_path):
  model, directory = gpt2_dir
  _, reference = load_huggingface(directory)
  model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="40KB")
  assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
  _, sharded = load_huggingface(str(tmp_path / "sharded"))
  jax.tree.map(np.testing.assert_array_equal, sharded, reference)
  copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  _, bf16 = load_huggingface(str(tmp_path / "bf16"))
  rounded = jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16), np.float32), reference)
  jax.tree.map(np.testing.assert_array_equal, bf16, rounded)


def test_import_into_scanned_layers_gives_the_same_logits(hf_dir):
  model, directory = hf_dir
  module, variables = load_huggingface(directory, scan_layers=True)
  assert module.scan_layers and "blocks" in variables["params"]
  ids, mask = _ids_and_mask(module.vocab_size)
  _assert_logits_equal(module, variables, model, ids, mask)


def test_greedy_generation_equals_transformers_generate(hf_dir):
  model, directory = hf_dir
  module, variables = load_huggingface(directory)
  prompt = np.random.RandomState(1).randint(0, module.vocab_size, (2, 5))
  with torch.no_grad():
    theirs = model.generate(
        torch.tensor(prompt),
        attention_mask=torch.ones(prompt.shape, dtype=torch.long),
        max_new_tokens=20,
        do_sample=False,
        pad_token_id=0,
    ).numpy()
  ours = transformer.generate(module, variables, prompt, 20, jax.random.key(0), temperature=0.0)
  assert theirs.shape == (2, 25)
  np.testing.assert_array_equal(np.asarray(ours), theirs)


# ---------- export


def _gpt(scan_layers=False, **options):
  return transformer.GPT(
      vocab_size=97,
      model_dim=32,
      num_layers=2,
      num_heads=4,
      mlp_dim=80,
      max_len=32,
      scan_layers=scan_layers,
      **{**transformer.GPT2_OPTIONS, **options},
  )


def _random_gpt(**options):
  """A GPT and random variables of its shapes (LayerNorm scales around 1), drawn with numpy: no
  zero bias or unit scale hides a misplaced tensor, and nothing is compiled."""
  module = _gpt(**options)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    noise = 0.1 * rng.standard_normal(leaf.shape, np.float32)
    return noise + 1.0 if path[-1].key == "scale" else noise

  return module, jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes))


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(tie_embeddings=False, gelu_approximate=False, layer_norm_epsilon=1e-3),
        dict(scan_layers=True),
    ],
    ids=["gpt2", "untied_exact_gelu", "scanned"],
)
def test_exported_gpt_loads_in_transformers_with_equal_logits(tmp_path, options):
  module, variables = _random_gpt(**options)
  save_huggingface(module, variables, str(tmp_path))
  model, info = transformers.GPT2LMHeadModel.from_pretrained(
      str(tmp_path), output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"], info
  ids, mask = _ids_and_mask(module.vocab_size)
  _assert_logits_equal(module, variables, model.eval(), ids, mask)
  again, reloaded = load_huggingface(str(tmp_path), scan_layers=module.scan_layers)
  assert again == module
  jax.tree.map(np.testing.assert_array_equal, reloaded, variables)


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(use_bias=False), ["use_bias=False"]),
        (dict(head_dim=16), ["head_dim=16", "8"]),
    ],
)
def test_export_refuses_what_gpt2_cannot_express(tmp_path, options, words):
  target = tmp_path / "out"
  with pytest.raises(ConvertError, match="GPT-2 cannot express") as e:
    save_huggingface(_gpt(**options), {"params": {}}, str(target))
  assert all(w in str(e.value) for w in words), e.value
  assert not target.exists()


def test_export_refuses_another_model_and_variables_of_another_gpt(tmp_path):
  with pytest.raises(ConvertError, match="MLP"):
    save_huggingface(MLP(hidden_sizes=(4,), num_classes=2), {"params": {}}, str(tmp_path / "a"))
  module, three_layers = _random_gpt()
  three_layers["params"]["block2"] = three_layers["params"]["block1"]
  three_layers["params"]["token_pos"]["embedding"] = jnp.zeros((16, 32))
  with pytest.raises(ConvertError) as e:
    save_huggingface(module, three_layers, str(tmp_path / "b"))
  assert "unexpected (12): block2/" in str(e.value), e.value
  assert "token_pos/embedding (16, 32) (expected (32, 32))" in str(e.value), e.value
  assert not (tmp_path / "b").exists()


# ---------- bad input


def _copy(directory, tmp_path):
  target = str(tmp_path / "copy")
  shutil.copytree(directory, target)
  return target


def _edit_config(directory, **changes):
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    config = json.load(f)
  for key, value in changes.items():
    if value is None:
      config.pop(key)
    else:
      config[key] = value
  with open(path, "w") as f:
    json.dump(config, f)


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(n_head=None), ["lacks n_head"]),
        (dict(model_type="bert"), ["model_type='bert'", "gpt2"]),
        (dict(activation_function="relu"), ["activation_function='relu'", "gelu_new"]),
        (dict(n_layer="2"), ["positive integers", "n_layer"]),
        (dict(scale_attn_by_inverse_layer_idx=True), ["scale_attn_by_inverse_layer_idx"]),
        (dict(n_layer=3), ["missing (12): h.2.ln_1.weight"]),
        (dict(n_positions=32), ["shape mismatches (1): wpe.weight (64, 64) (expected (32, 64))"]),
    ],
    ids=["no_n_head", "bert", "relu", "string", "layer_scaled", "deeper", "shorter"],
)
def test_a_config_that_disagrees_is_refused(gpt2_dir, tmp_path, changes, words):
  directory = _copy(gpt2_dir[1], tmp_path)
  _edit_config(directory, **changes)
  with pytest.raises(ConvertError) as e:
    load_huggingface(directory)
  assert all(w in str(e.value) for w in words), e.value


def test_unexpected_and_missing_tensors_are_listed(gpt2_dir, tmp_path):
  from safetensors.numpy import load_file, save_file

  directory = _copy(gpt2_dir[1], tmp_path)
  path = os.path.join(directory, "model.safetensors")
  tensors = load_file(path)
  del tensors["transformer.h.1.mlp.c_fc.bias"]
  tensors["transformer.h.0.attn.extra"] = np.zeros(3, np.float32)
  save_file(tensors, path, metadata={"format": "pt"})
  with pytest.raises(ConvertError) as e:
    load_huggingface(directory)
  message = str(e.value)
  assert "missing (1): h.1.mlp.c_fc.bias" in message, message
  assert "unexpected (1): h.0.attn.extra" in message, message


def test_missing_and_corrupt_files_are_clear_errors(gpt2_dir, tmp_path):
  with pytest.raises(ConvertError, match="is not a directory"):
    load_huggingface(str(tmp_path / "nowhere"))
  directory = _copy(gpt2_dir[1], tmp_path)
  weights = os.path.join(directory, "model.safetensors")
  with open(weights, "rb") as f:
    data = f.read()
  with open(weights, "wb") as f:
    f.write(data[: len(data) // 2])  # truncated download
  with pytest.raises(ConvertError, match="not a readable safetensors file"):
    load_huggingface(directory)
  with open(weights, "wb") as f:
    f.write(b"not a safetensors file at all")
  with pytest.raises(ConvertError, match="not a readable safetensors file"):
    load_huggingface(directory)
  os.remove(weights)
  with pytest.raises(ConvertError, match="holds no weights: expected model.safetensors"):
    load_huggingface(directory)
  with open(os.path.join(directory, "pytorch_model.bin"), "wb") as f:
    f.write(b"garbage")
  with pytest.raises(ConvertError, match="not a readable PyTorch state dict"):
    load_huggingface(directory)
  os.remove(os.path.join(directory, "config.json"))
  with pytest.raises(ConvertError, match="config.json does not exist"):
    load_huggingface(directory)


# ---------- named sources


def _offline(monkeypatch, cache):
  from huggingface_hub import constants

  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def test_hf_name_offline_reads_the_cache_layout_the_error_describes(
    gpt2_dir, tmp_path, monkeypatch
):
  _offline(monkeypatch, tmp_path / "hub")
  with pytest.raises(ConvertError) as e:
    load_huggingface("hf:someone/tiny-gpt2")
  cache = str(tmp_path / "hub" / "models--someone--tiny-gpt2")
  for words in ("config.json", "model.safetensors", f"{cache}/snapshots/<commit>/", "refs/main"):
    assert words in str(e.value), e.value
  os.makedirs(os.path.join(cache, "refs"))
  shutil.copytree(gpt2_dir[1], os.path.join(cache, "snapshots", "abc123"))
  with open(os.path.join(cache, "refs", "main"), "w") as f:
    f.write("abc123")
  module, variables = load_huggingface("hf:someone/tiny-gpt2")
  ids, mask = _ids_and_mask(module.vocab_size)
  _assert_logits_equal(module, variables, gpt2_dir[0], ids, mask)


def test_hf_name_that_no_hub_or_cache_has_fails_within_the_probe_timeout(tmp_path, monkeypatch):
  import time

  from huggingface_hub import constants

  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  start = time.monotonic()
  with pytest.raises(ConvertError, match="cannot get the Hugging Face model"):
    load_huggingface("hf:jaxmodels-tests/no-such-model-f3a9")  # online: not on the Hub
  assert time.monotonic() - start < 30


# ---------- tokenizer and generation


def test_tokenizer_files_encode_as_transformers_does(bpe, tmp_path):
  directory, size = bpe
  only_bpe = tmp_path / "vocab_merges"
  only_bpe.mkdir()
  for name in ("vocab.json", "merges.txt"):
    shutil.copy(os.path.join(directory, name), only_bpe)
  reference = transformers.GPT2Tokenizer.from_pretrained(str(only_bpe))
  text = "the lazy cat, not the dog!"
  for source in (directory, str(only_bpe)):
    tokenizer = load_tokenizer(source, vocab_size=size)
    ids = tokenizer.encode(text).ids
    assert ids == reference.encode(text), source
    assert tokenizer.decode(ids) == text
  with pytest.raises(ConvertError, match="vocabulary mismatch"):
    load_tokenizer(directory, vocab_size=size + 1)
  with pytest.raises(ConvertError, match="holds no tokenizer"):
    load_tokenizer(str(tmp_path))


def run_predict(args, env=None):
  full_env = dict(os.environ, JAXMODELS_HOST_DEVICES="1", **(env or {}))
  full_env.pop("XLA_FLAGS", None)
  return subprocess.run(
      [sys.executable, "-m", "jaxmodels.predict", *args],
      cwd=ROOT,
      env=full_env,
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_predict_init_from_generates_what_transformers_generates(gpt2_dir):
  model, directory = gpt2_dir
  prompt = "the cat sat"
  result = run_predict(
      [f"--init_from={directory}", f"--prompt={prompt}", "--num_tokens=12", "--temperature=0"]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  reference = transformers.GPT2Tokenizer.from_pretrained(directory)  # vocab.json + merges.txt
  ids = torch.tensor([reference.encode(prompt)])
  with torch.no_grad():
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, pad_token_id=0
    )
  assert result.stdout.rstrip("\n") == reference.decode(out[0].tolist())
  assert result.stdout.startswith(prompt)


def test_predict_init_from_samples_with_the_tokenizer_json(gpt2_dir, bpe, tmp_path):
  from jaxmodels import predict

  directory = _copy(gpt2_dir[1], tmp_path)
  for name in ("vocab.json", "merges.txt"):
    os.remove(os.path.join(directory, name))
  shutil.copy(os.path.join(bpe[0], "tokenizer.json"), directory)
  texts = [predict.sample_pretrained(directory, "a quick", 70, seed, 1.0, 20) for seed in (0, 0, 1)]
  assert texts[0] == texts[1] != texts[2]  # 70 tokens run past max_len=64: the window slides
  assert all(t.startswith("a quick") and len(t) > len("a quick") for t in texts)


@pytest.mark.parametrize(
    "case, words",
    [
        ("workdir", ["--init_from and --workdir are exclusive"]),
        ("no_tokenizer", ["holds no tokenizer", "vocab.json and merges.txt"]),
        ("vocab_mismatch", ["vocabulary mismatch", "vocab_size is"]),
        ("corrupt", ["not a readable safetensors file"]),
        ("offline_name", ["hf:gpt2", "config.json", "model.safetensors", "models--gpt2"]),
    ],
)
def test_predict_init_from_bad_input_exits_2(gpt2_dir, bpe, tmp_path, case, words):
  directory = _copy(gpt2_dir[1], tmp_path)
  args = [f"--init_from={directory}", "--prompt=the", "--num_tokens=3"]
  env = None
  if case == "workdir":
    args.append(f"--workdir={tmp_path}")
  elif case == "no_tokenizer":
    os.remove(os.path.join(directory, "vocab.json"))
  elif case == "vocab_mismatch":
    _save_hf(directory, _hf_config(bpe[1] + 5))
  elif case == "corrupt":
    with open(os.path.join(directory, "model.safetensors"), "r+b") as f:
      f.truncate(100)
  else:
    args[0] = "--init_from=hf:gpt2"
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
  result = run_predict(args, env)
  assert result.returncode == 2, (result.stdout, result.stderr[-3000:])
  assert result.stderr.startswith("error: "), result.stderr[-3000:]
  assert all(w in result.stderr for w in words), result.stderr[-3000:]
