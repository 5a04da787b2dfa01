"""Hugging Face GPT-2 <-> jaxmodels GPT (jaxmodels/models/transformer.py).

A Hugging Face GPT-2 directory holds config.json, the weights (model.safetensors, a sharded
model.safetensors.index.json, or pytorch_model.bin) and, for text, the byte-level BPE tokenizer
(tokenizer.json, or vocab.json + merges.txt). GPT-2 is our GPT with its architecture options
(`transformer.GPT2_OPTIONS`): Dense biases, LayerNorm epsilon from the config (1e-5), tanh GELU
('gelu_new'; 'gelu' is the exact one), learned positions, pre-LN blocks and a head tied to the
token embedding (or an untied, bias-free one when tie_word_embeddings is false). Its Conv1D
weights are stored (in, out) as our Dense kernels are; the fused c_attn [D, 3D] is our qkv
kernel [D, 3, heads, head_dim] flattened.

`load_huggingface(source)` takes a directory or 'hf:NAME[@REVISION]' (resolved with
`resolve_huggingface`: the Hub where there is internet, the local Hugging Face cache where not).
Every tensor is checked: missing or unexpected names and shape mismatches are one ConvertError
listing them. The causal-mask buffers older files hold (h.N.attn.bias, h.N.attn.masked_bias) and
a stored lm_head.weight of a tied model (transformers ignores it too) are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.models.convert.errors import ConvertError
from jaxmodels.models.transformer import GPT

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
_HUB_FILES = [
    "config.json",
    SAFETENSORS,
    SAFETENSORS_INDEX,
    "model-*.safetensors",
    *TOKENIZER_FILES,
    "tokenizer_config.json",
]
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_REQUIRED = ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")
_LIST_AT_MOST = 12
HUB_PROBE_TIMEOUT_S = 10.0
Params = dict[str, Any]


# ---------- sources


def resolve_huggingface(source: str) -> str:
  """The local directory of `source`: a directory is returned as it is; 'hf:NAME[@REVISION]'
  (e.g. 'hf:gpt2', 'hf:openai-community/gpt2@main') is fetched with huggingface_hub's
  snapshot_download (config, safetensors and tokenizer files only) when the Hub answers within
  HUB_PROBE_TIMEOUT_S, and read from the local Hugging Face cache when it does not (or with
  HF_HUB_OFFLINE=1). Where neither has it, a ConvertError names the files to place and where."""
  if not source.startswith("hf:"):
    return source
  name, _, revision = source[len("hf:") :].partition("@")
  if not name:
    raise ConvertError(f"{source!r} names no model: write hf:NAME, e.g. hf:gpt2.")
  try:
    import huggingface_hub
    from huggingface_hub import constants
  except ImportError as e:
    raise ConvertError(
        f"{source!r} needs huggingface_hub (pip install huggingface_hub), or pass a directory "
        f"holding the model's files ({_files_needed()})."
    ) from e
  offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)()
  reason = "HF_HUB_OFFLINE is set"
  if not offline:
    try:  # snapshot_download's own look-up has no timeout: probe with one
      huggingface_hub.HfApi().repo_info(
          name, revision=revision or None, timeout=HUB_PROBE_TIMEOUT_S
      )
    except Exception as e:  # network, proxy, missing or private repository: try the cache
      offline, reason = True, _first_line(e)
  try:
    return huggingface_hub.snapshot_download(
        name, revision=revision or None, allow_patterns=_HUB_FILES, local_files_only=offline
    )
  except (OSError, ValueError) as e:
    reason = f"{reason}, and the local cache does not hold it" if offline else _first_line(e)
    cache = os.path.join(constants.HF_HUB_CACHE, "models--" + name.replace("/", "--"))
    raise ConvertError(
        f"cannot get the Hugging Face model {name!r} ({reason}). Without internet, download "
        f"its files from https://huggingface.co/{name} ({_files_needed()}) into a directory "
        f"and pass that directory instead of {source!r}; or place them in the Hugging Face "
        f"cache as {cache}/snapshots/<commit>/ with {cache}/refs/{revision or 'main'} holding "
        "<commit> (HF_HOME or HF_HUB_CACHE move the cache)."
    ) from e


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _files_needed() -> str:
  return (
      f"config.json and {SAFETENSORS} (or {TORCH_BIN}); for text also tokenizer.json or "
      "vocab.json + merges.txt"
  )


# ---------- config


def read_config(directory: str) -> dict[str, Any]:
  """config.json of a Hugging Face model directory, as a dict."""
  path = os.path.join(directory, "config.json")
  if not os.path.isdir(directory):
    raise ConvertError(
        f"{directory} is not a directory: give a Hugging Face model directory "
        f"({_files_needed()}) or hf:NAME."
    )
  if not os.path.exists(path):
    raise ConvertError(f"{path} does not exist: a Hugging Face model directory holds it.")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise ConvertError(f"{path} is not valid JSON ({e}).") from e
  if not isinstance(config, dict):
    raise ConvertError(f"{path} holds a {type(config).__name__}, not a JSON object.")
  return config


def gpt_from_config(config: Mapping[str, Any], scan_layers: bool = False) -> GPT:
  """Our GPT with the architecture a GPT-2 config.json describes (dropout: resid_pdrop; our GPT
  has one rate). Keys GPT-2 has no default for must be present; a config our GPT cannot
  compute the same way (another model_type, unscaled or layer-scaled attention,
  cross-attention, another activation) is refused."""
  where = "config.json"
  if config.get("model_type", "gpt2") != "gpt2":
    raise ConvertError(
        f"{where}: model_type={config['model_type']!r}; only GPT-2 ('gpt2') converts to GPT."
    )
  missing = [k for k in _REQUIRED if k not in config]
  if missing:
    raise ConvertError(f"{where} lacks {', '.join(missing)}: a GPT-2 config gives {_REQUIRED}.")
  sizes = {k: config[k] for k in _REQUIRED}
  inner = config.get("n_inner")
  if inner is not None:
    sizes["n_inner"] = inner
  bad = {k: v for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
  if bad:
    raise ConvertError(f"{where}: {bad} must be positive integers.")
  if sizes["n_embd"] % sizes["n_head"]:
    raise ConvertError(
        f"{where}: n_embd={sizes['n_embd']} is not a multiple of n_head={sizes['n_head']}."
    )
  for key, want in (
      ("scale_attn_weights", True),
      ("scale_attn_by_inverse_layer_idx", False),
      ("add_cross_attention", False),
  ):
    if config.get(key, want) != want:
      raise ConvertError(f"{where}: {key}={config[key]!r}; GPT computes GPT-2 with {want}.")
  activation = config.get("activation_function", "gelu_new")
  if activation not in (*_TANH_GELU, "gelu"):
    raise ConvertError(
        f"{where}: activation_function={activation!r}; GPT has the tanh GELU "
        f"({', '.join(_TANH_GELU)}) and the exact one ('gelu')."
    )
  epsilon = config.get("layer_norm_epsilon", 1e-5)
  tie = config.get("tie_word_embeddings", True)
  if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or epsilon <= 0:
    raise ConvertError(f"{where}: layer_norm_epsilon={epsilon!r} must be a positive number.")
  if not isinstance(tie, bool):
    raise ConvertError(f"{where}: tie_word_embeddings={tie!r} must be true or false.")
  return GPT(
      vocab_size=sizes["vocab_size"],
      model_dim=sizes["n_embd"],
      num_layers=sizes["n_layer"],
      num_heads=sizes["n_head"],
      mlp_dim=sizes.get("n_inner", 4 * sizes["n_embd"]),
      max_len=sizes["n_positions"],
      dropout_rate=float(config.get("resid_pdrop", 0.0)),
      tie_embeddings=tie,
      scan_layers=scan_layers,
      use_bias=True,
      layer_norm_epsilon=float(epsilon),
      gelu_approximate=activation in _TANH_GELU,
  )


def gpt2_config(module: GPT) -> dict[str, Any]:
  """The GPT-2 config.json of `module`; a ConvertError names the options GPT-2 cannot express."""
  if not isinstance(module, GPT):
    raise ConvertError(
        f"save_huggingface writes GPT-2, which is a jaxmodels GPT; got {type(module).__name__}."
    )
  refused = []
  if not module.use_bias:
    refused.append("use_bias=False (GPT-2 has a bias on every Dense layer)")
  head_dim = module.model_dim // module.num_heads
  if module.model_dim % module.num_heads:
    refused.append(f"model_dim={module.model_dim} not a multiple of num_heads={module.num_heads}")
  elif module.head_dim not in (None, head_dim):
    refused.append(f"head_dim={module.head_dim} (GPT-2: model_dim / num_heads = {head_dim})")
  if refused:
    raise ConvertError(
        "GPT-2 cannot express this GPT: " + "; ".join(refused) + ". Only GPTs with GPT-2's "
        "architecture options export to Hugging Face GPT-2."
    )
  rate = float(module.dropout_rate)
  eos = 50256 if module.vocab_size > 50256 else None  # GPT-2's <|endoftext|>
  return {
      "architectures": ["GPT2LMHeadModel"],
      "model_type": "gpt2",
      "vocab_size": module.vocab_size,
      "n_positions": module.max_len,
      "n_embd": module.model_dim,
      "n_layer": module.num_layers,
      "n_head": module.num_heads,
      "n_inner": module.mlp_dim,
      "activation_function": "gelu_new" if module.gelu_approximate else "gelu",
      "layer_norm_epsilon": float(module.layer_norm_epsilon),
      "tie_word_embeddings": bool(module.tie_embeddings),
      "resid_pdrop": rate,
      "embd_pdrop": rate,
      "attn_pdrop": rate,
      "scale_attn_weights": True,
      "scale_attn_by_inverse_layer_idx": False,
      "reorder_and_upcast_attn": False,
      "add_cross_attention": False,
      "bos_token_id": eos,
      "eos_token_id": eos,
      "dtype": "float32",
  }


# ---------- tensor names and shapes


def _layout(module: GPT) -> list[tuple[str, tuple[str, ...], bool]]:
  """(Hugging Face name without 'transformer.', our unscanned param path, whether the HF tensor
  is our array transposed) for every tensor of `module`; HF shapes follow from ours."""
  pairs = [
      ("wte.weight", ("token_embed", "embedding")),
      ("wpe.weight", ("token_pos", "embedding")),
      ("ln_f.weight", ("ln_final", "scale")),
      ("ln_f.bias", ("ln_final", "bias")),
  ]
  per_layer = [
      ("ln_1", ("ln1",), {"weight": "scale", "bias": "bias"}),
      ("ln_2", ("ln2",), {"weight": "scale", "bias": "bias"}),
      ("attn.c_attn", ("self_attn", "qkv"), {"weight": "kernel", "bias": "bias"}),
      ("attn.c_proj", ("self_attn", "out"), {"weight": "kernel", "bias": "bias"}),
      ("mlp.c_fc", ("mlp", "fc1"), {"weight": "kernel", "bias": "bias"}),
      ("mlp.c_proj", ("mlp", "fc2"), {"weight": "kernel", "bias": "bias"}),
  ]
  for i in range(module.num_layers):
    for hf, ours, leaves in per_layer:
      for hf_leaf, our_leaf in leaves.items():
        pairs.append((f"h.{i}.{hf}.{hf_leaf}", (f"block{i}", *ours, our_leaf)))
  layout = [(hf, ours, False) for hf, ours in pairs]
  if not module.tie_embeddings:
    layout.append(("lm_head.weight", ("head", "kernel"), True))
  return layout


def _param_shapes(module: GPT) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our unscanned param paths and shapes for `module`, without computing anything."""
  plain = module.clone(scan_layers=False, decode=False, parent=None)
  shapes = jax.eval_shape(lambda: plain.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  flat = _flatten(nn.meta.unbox(shapes["params"]))
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _hf_shape(shape: tuple[int, ...], transposed: bool) -> tuple[int, ...]:
  """The Hugging Face shape of one of our arrays: kernels [in, *out] as 2-D (in, out), the qkv
  bias [3, heads, head_dim] flat, the rest as they are; reversed for a transposed tensor."""
  if len(shape) == 4:
    shape = (shape[0], int(np.prod(shape[1:])))
  elif len(shape) == 3:
    shape = (int(np.prod(shape)),)
  return tuple(reversed(shape)) if transposed else tuple(shape)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, (*prefix, key)))
    else:
      out[(*prefix, key)] = value
  return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> Params:
  tree: Params = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _check_names(
    what: str,
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    fix: str,
) -> None:
  """A ConvertError listing missing and unexpected names and shape mismatches, if any."""
  missing = [k for k in expected if k not in found]
  unexpected = [k for k in found if k not in expected]
  mismatched = [
      f"{k} {found[k]} (expected {expected[k]})"
      for k in expected
      if k in found and tuple(found[k]) != tuple(expected[k])
  ]
  problems = [
      f"{label} ({len(items)}): {_listing(items)}"
      for label, items in (
          ("missing", missing),
          ("unexpected", unexpected),
          ("shape mismatches", mismatched),
      )
      if items
  ]
  if problems:
    raise ConvertError(f"{what} does not match: " + "; ".join(problems) + f". {fix}")


def _listing(items: list[str]) -> str:
  shown = ", ".join(items[:_LIST_AT_MOST])
  return (
      shown if len(items) <= _LIST_AT_MOST else f"{shown}, ... ({len(items) - _LIST_AT_MOST} more)"
  )


def _scanned(params: Params, num_layers: int) -> Params:
  """Unscanned params (block0, block1, ...) stacked into nn.scan's params['blocks']['block']."""
  blocks = [params[f"block{i}"] for i in range(num_layers)]
  rest = {k: v for k, v in params.items() if not re.fullmatch(r"block\d+", k)}
  return {**rest, "blocks": {"block": jax.tree.map(lambda *xs: np.stack(xs), *blocks)}}


def _unscanned(params: Mapping[str, Any], module: GPT) -> Params:
  if not module.scan_layers:
    return dict(params)
  if "blocks" not in params or "block" not in params["blocks"]:
    raise ConvertError(
        "the GPT has scan_layers=True but its params hold no 'blocks'/'block' stack: "
        f"top-level keys are {sorted(params)}."
    )
  rest = {k: v for k, v in params.items() if k != "blocks"}
  stacked = params["blocks"]["block"]
  for i in range(module.num_layers):
    rest[f"block{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return rest


# ---------- reading weights


def read_state_dict(directory: str) -> dict[str, np.ndarray]:
  """The tensors of a Hugging Face model directory by name, as float32 numpy arrays:
  model.safetensors, else the shards of model.safetensors.index.json, else pytorch_model.bin."""
  for name in WEIGHT_FILES:
    path = os.path.join(directory, name)
    if os.path.exists(path):
      break
  else:
    present = sorted(os.listdir(directory))
    raise ConvertError(
        f"{directory} holds no weights: expected {' or '.join(WEIGHT_FILES)} "
        f"(the directory has: {', '.join(present) or 'nothing'})."
    )
  if name == SAFETENSORS:
    tensors = _read_safetensors(path)
  elif name == SAFETENSORS_INDEX:
    tensors = _read_safetensors_shards(directory, path)
  else:
    tensors = _read_torch(path)
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def _read_safetensors(path: str) -> dict[str, Any]:
  import safetensors
  import safetensors.numpy

  try:
    try:
      return safetensors.numpy.load_file(path)
    except TypeError:  # a dtype numpy lacks (bfloat16): the flax reader has it
      import safetensors.flax

      return safetensors.flax.load_file(path)
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    raise ConvertError(
        f"{path} is not a readable safetensors file ({e}); download it again or re-save it "
        "with save_pretrained(dir, safe_serialization=True)."
    ) from e


def _read_safetensors_shards(directory: str, index_path: str) -> dict[str, Any]:
  try:
    with open(index_path, encoding="utf-8") as f:
      weight_map = json.load(f)["weight_map"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConvertError(f"{index_path} is not a safetensors index with a weight_map ({e}).") from e
  tensors = {}
  for shard in sorted(set(weight_map.values())):
    path = os.path.join(directory, shard)
    if not os.path.exists(path):
      raise ConvertError(f"{path} is missing: {index_path} maps weights to it.")
    tensors.update(_read_safetensors(path))
  return tensors


def _read_torch(path: str) -> dict[str, Any]:
  try:
    import torch
  except ImportError as e:
    raise ConvertError(
        f"reading {path} needs torch (pip install torch); or convert it to {SAFETENSORS}, "
        "which needs no torch."
    ) from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... on bad files
    raise ConvertError(f"{path} is not a readable PyTorch state dict ({e}).") from e
  if not isinstance(state, Mapping):
    raise ConvertError(f"{path} holds a {type(state).__name__}, not a state dict.")
  return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


# ---------- load and save


def load_huggingface(source: str, scan_layers: bool = False) -> tuple[GPT, dict[str, Any]]:
  """(GPT, variables {'params': ...}) of a Hugging Face GPT-2: a directory or 'hf:NAME'
  (see `resolve_huggingface`). `scan_layers=True` stacks the blocks for GPT(scan_layers=True).
  Every tensor name and shape is checked against the config; float32 parameters."""
  directory = resolve_huggingface(source)
  module = gpt_from_config(read_config(directory), scan_layers=scan_layers)
  tensors = read_state_dict(directory)
  return module, {"params": gpt_params(module, tensors, directory)}


def gpt_params(module: GPT, state_dict: Mapping[str, Any], where: str = "state dict") -> Params:
  """Our GPT params from a GPT-2 state dict (names with or without 'transformer.')."""
  tensors = {}
  for name, value in state_dict.items():
    key = name.removeprefix("transformer.")
    if _BUFFER.fullmatch(key) or (module.tie_embeddings and key == "lm_head.weight"):
      continue
    tensors[key] = np.asarray(value)
  shapes = _param_shapes(module)
  layout = _layout(module)
  expected = {hf: _hf_shape(shapes[ours], t) for hf, ours, t in layout}
  _check_names(
      f"the GPT-2 weights in {where}",
      {k: v.shape for k, v in tensors.items()},
      expected,
      "The weights must be those of the config.json next to them.",
  )
  flat = {}
  for hf, ours, transposed in layout:
    value = tensors[hf].T if transposed else tensors[hf]
    flat[ours] = jnp.asarray(value.reshape(shapes[ours]), module.param_dtype)
  params = _unflatten(flat)
  return _scanned(params, module.num_layers) if module.scan_layers else params


def hf_state_dict(module: GPT, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The GPT-2 state dict (names as GPT2LMHeadModel saves them, float32) of our variables; the
  params must be exactly those of `module`."""
  gpt2_config(module)  # refuses what GPT-2 cannot express
  if "params" not in variables:
    raise ConvertError(
        f"variables hold no 'params' collection (keys: {sorted(variables)}): pass "
        "{'params': ...} as model.init returns it."
    )
  params = _unscanned(nn.meta.unbox(variables["params"]), module)
  flat = _flatten(params)
  shapes = _param_shapes(module)
  _check_names(
      "the variables",
      {"/".join(k): tuple(np.shape(v)) for k, v in flat.items()},
      {"/".join(k): v for k, v in shapes.items()},
      "They must be the params of the GPT passed with them.",
  )
  state = {}
  for hf, ours, transposed in _layout(module):
    value = np.asarray(flat[ours], np.float32).reshape(_hf_shape(shapes[ours], False))
    name = hf if hf.startswith("lm_head.") else f"transformer.{hf}"
    state[name] = np.ascontiguousarray(value.T if transposed else value)
  return state


def save_huggingface(module: GPT, variables: Mapping[str, Any], directory: str) -> None:
  """Writes config.json and model.safetensors of our GPT into `directory` (created if needed),
  loadable by `transformers.GPT2LMHeadModel.from_pretrained(directory)`. A GPT that GPT-2 cannot
  express, or variables that are not that GPT's, raise ConvertError before anything is written."""
  import safetensors.numpy

  config = gpt2_config(module)
  state = hf_state_dict(module, variables)
  os.makedirs(directory, exist_ok=True)
  safetensors.numpy.save_file(
      state, os.path.join(directory, SAFETENSORS), metadata={"format": "pt"}
  )
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")


# ---------- tokenizer


def load_tokenizer(directory: str, vocab_size: int | None = None) -> Any:
  """The GPT-2 byte-level BPE tokenizer of a model directory as a `tokenizers.Tokenizer`, read
  offline from tokenizer.json, else vocab.json + merges.txt. With `vocab_size`, a tokenizer of
  another size (the model's embedding rows) is a ConvertError."""
  try:
    import tokenizers
  except ImportError as e:
    raise ConvertError(
        "reading a GPT-2 tokenizer needs `tokenizers` (pip install tokenizers)."
    ) from e
  paths = {name: os.path.join(directory, name) for name in TOKENIZER_FILES}
  try:
    if os.path.exists(paths["tokenizer.json"]):
      tokenizer = tokenizers.Tokenizer.from_file(paths["tokenizer.json"])
    elif os.path.exists(paths["vocab.json"]) and os.path.exists(paths["merges.txt"]):
      tokenizer = _byte_level_bpe(tokenizers, paths["vocab.json"], paths["merges.txt"])
    else:
      raise ConvertError(
          f"{directory} holds no tokenizer: text generation needs tokenizer.json, or "
          "vocab.json and merges.txt, the GPT-2 BPE files of the model."
      )
  except ConvertError:
    raise
  except Exception as e:  # tokenizers raises plain Exceptions on malformed files
    raise ConvertError(f"the tokenizer files in {directory} cannot be read ({e}).") from e
  size = tokenizer.get_vocab_size(with_added_tokens=True)
  if vocab_size is not None and size != vocab_size:
    raise ConvertError(
        f"vocabulary mismatch: the tokenizer in {directory} has {size} tokens but the model's "
        f"vocab_size is {vocab_size}; the tokenizer files must be the model's own."
    )
  return tokenizer


def _byte_level_bpe(tokenizers: Any, vocab: str, merges: str) -> Any:
  """GPT-2's tokenizer from vocab.json + merges.txt: byte-level pre-tokenizer without a prefix
  space, byte-level decoder, <|endoftext|> a special token when the vocabulary has it."""
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab, merges))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  if tokenizer.token_to_id("<|endoftext|>") is not None:
    tokenizer.add_special_tokens(["<|endoftext|>"])
  return tokenizer
