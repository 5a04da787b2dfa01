"""Transformers: an encoder classifier, an encoder-decoder and a decoder-only GPT, with cached
greedy and beam-search decoding and sampling, and analytic FLOP counts.

Every block is pre-LayerNorm (x + f(LayerNorm(x))), with a final LayerNorm after the stack: the
residual path stays an identity, so training is stable without learning-rate warm-up tricks and
deep stacks keep well-scaled gradients (Xiong et al. 2020, GPT-2). Token 0 is padding for the
encoder and the encoder-decoder; attention never looks at padding keys.

Parameters carry logical axis names (nn.with_logical_partitioning: "vocab", "embed", "heads",
"kv", "mlp", "pos", "norm", and "layers" on scanned stacks), so `init` returns nn.Partitioned
boxes (`flax.linen.meta.unbox` gives the plain arrays; `apply` takes either) and
`nn.get_partition_spec` of them gives the logical specs. The residual stream, MLP hidden, heads
and logits are constrained by "batch", "length", "embed", "mlp", "heads", "kv", "vocab"; those
constraints act only under `nn.logical_axis_rules` and a mesh (`jax.set_mesh`).
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.models.attention import (
    RESIDUAL,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    causal_mask,
    combine_masks,
    key_padding_mask,
)
from jaxmodels.models.common import ModelOptionError, constrain, logits_dtype, sample_logits

Array = jax.Array
_EMBED_INIT = nn.initializers.normal(stddev=0.02)
_LOGITS = ("batch", "length", "vocab")


def _dense(
    features: int,
    names: tuple[str | None, str | None],
    kw: dict[str, Any],
    name: str | None = None,
    use_bias: bool = True,
) -> nn.Dense:
  """nn.Dense whose kernel has the logical axes `names` (in, out) and whose bias has (out,)."""
  return nn.Dense(
      features,
      use_bias=use_bias,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[1:]),
      **kw,
      name=name,
  )


def _layer_norm(kw: dict[str, Any], name: str | None = None, epsilon: float = 1e-6) -> nn.LayerNorm:
  """nn.LayerNorm whose scale and bias have the logical axis "norm"."""
  return nn.LayerNorm(
      epsilon=epsilon,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
      **kw,
      name=name,
  )


class MLPBlock(nn.Module):
  """Dense(mlp_dim) -> GELU (tanh approximation unless `gelu_approximate=False`) -> dropout ->
  Dense(back to input width)."""

  mlp_dim: int
  dropout_rate: float = 0.0
  use_bias: bool = True
  gelu_approximate: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    width = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _dense(self.mlp_dim, ("embed", "mlp"), kw, "fc1", self.use_bias)(x)
    x = constrain(nn.gelu(x, approximate=self.gelu_approximate), ("batch", "length", "mlp"))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return constrain(_dense(width, ("mlp", "embed"), kw, "fc2", self.use_bias)(x), RESIDUAL)


class EncoderBlock(nn.Module):
  """Pre-LN block: x + Dropout(SelfAttention(LN(x))), then x + Dropout(MLP(LN(x)))."""

  model_dim: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  head_dim: int | None = None
  implementation: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, train: bool = False) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _layer_norm(kw, "ln1")(x)
    h = MultiHeadAttention(
        self.num_heads,
        self.model_dim,
        self.head_dim,
        self.dropout_rate,
        fused_qkv=True,
        implementation=self.implementation,
        **kw,
        name="attn",
    )(h, mask=mask, train=train)
    x = constrain(x + nn.Dropout(self.dropout_rate, deterministic=not train)(h), RESIDUAL)
    h = MLPBlock(self.mlp_dim, self.dropout_rate, **kw, name="mlp")(
        _layer_norm(kw, "ln2")(x), train
    )
    return constrain(x + nn.Dropout(self.dropout_rate, deterministic=not train)(h), RESIDUAL)


class DecoderBlock(nn.Module):
  """Pre-LN block: causal self-attention, then cross-attention to `encoded` when given, then MLP.

  `self_mask` should contain the causal mask (outside decode mode); in decode mode the
  self-attention's cache supplies causality. `cross_mask` hides encoder padding. `use_bias`
  switches the biases of the attention and MLP Dense layers (LayerNorms keep theirs).
  """

  model_dim: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  head_dim: int | None = None
  decode: bool = False
  implementation: str | None = None
  use_bias: bool = True
  layer_norm_epsilon: float = 1e-6
  gelu_approximate: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: Array,
      self_mask: Array | None = None,
      encoded: Array | None = None,
      cross_mask: Array | None = None,
      train: bool = False,
  ) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    eps = self.layer_norm_epsilon
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    attention = functools.partial(
        MultiHeadAttention,
        self.num_heads,
        self.model_dim,
        self.head_dim,
        self.dropout_rate,
        use_bias=self.use_bias,
        implementation=self.implementation,
        **kw,
    )
    h = attention(decode=self.decode, fused_qkv=True, name="self_attn")(
        _layer_norm(kw, "ln1", eps)(x), mask=self_mask, train=train
    )
    x = constrain(x + drop(h), RESIDUAL)
    if encoded is not None:
      h = attention(name="cross_attn")(
          _layer_norm(kw, "ln_cross", eps)(x), encoded, mask=cross_mask, train=train
      )
      x = constrain(x + drop(h), RESIDUAL)
    h = MLPBlock(
        self.mlp_dim, self.dropout_rate, self.use_bias, self.gelu_approximate, **kw, name="mlp"
    )(_layer_norm(kw, "ln2", eps)(x), train)
    return constrain(x + drop(h), RESIDUAL)


_BLOCK_FIELDS = (
    "model_dim",
    "num_heads",
    "mlp_dim",
    "dropout_rate",
    "head_dim",
    "decode",
    "implementation",
    "use_bias",
    "layer_norm_epsilon",
    "gelu_approximate",
    "dtype",
    "param_dtype",
)


class _ScannedBlock(DecoderBlock):
  """A decoder block in nn.scan's (carry, output) form; the carry is the residual stream."""

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, train: bool) -> tuple[Array, None]:
    fields = {f: getattr(self, f) for f in _BLOCK_FIELDS}
    return DecoderBlock(**fields, name="block")(x, mask, None, None, train), None


def _embed(
    module: nn.Module,
    ids: Array,
    vocab: int,
    dim: int,
    max_len: int,
    name: str,
    offset: Array | int = 0,
) -> tuple[nn.Embed, Array]:
  kw = dict(dtype=module.dtype, param_dtype=module.param_dtype)
  embed = nn.Embed(vocab, dim, embedding_init=_embed_init(), **kw, name=f"{name}_embed")
  x = LearnedPositionalEmbedding(max_len, dim, **kw, name=f"{name}_pos")(embed(ids), offset=offset)
  return embed, constrain(x, RESIDUAL)


def _embed_init() -> nn.initializers.Initializer:
  return nn.with_logical_partitioning(_EMBED_INIT, ("vocab", "embed"))


class DecodePosition(nn.Module):
  """Decode-mode position counter in the 'cache' collection: returns the position of the first
  of `length` new tokens and advances by `length`. Creating the cache (init) returns 0."""

  @nn.compact
  def __call__(self, length: int) -> Array:
    ready = self.has_variable("cache", "position")
    pos = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
    if not ready:
      return jnp.zeros((), jnp.int32)
    offset = pos.value
    pos.value = offset + length
    return offset


class TransformerEncoder(nn.Module):
  """Encoder classifier: token + learned position embeddings, pre-LN encoder blocks, final LN,
  pooling over real tokens ('mean': masked mean; 'first': the first token), Dense to classes.

  `__call__(input_ids [B,T], attention_mask [B,T] (1 real, 0 pad; default input_ids != 0))`
  returns float32 logits [B, num_classes].
  """

  vocab_size: int
  num_classes: int
  model_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_len: int
  dropout_rate: float = 0.0
  pooling: str = "mean"
  head_dim: int | None = None
  implementation: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, input_ids: Array, attention_mask: Array | None = None, train: bool = False
  ) -> Array:
    if self.pooling not in ("mean", "first"):
      raise ModelOptionError(f"pooling must be 'mean' or 'first', got {self.pooling!r}")
    valid = (input_ids != 0) if attention_mask is None else attention_mask.astype(bool)
    _, x = _embed(self, input_ids, self.vocab_size, self.model_dim, self.max_len, "token")
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    mask = key_padding_mask(valid)
    for i in range(self.num_layers):
      x = EncoderBlock(
          self.model_dim,
          self.num_heads,
          self.mlp_dim,
          self.dropout_rate,
          head_dim=self.head_dim,
          implementation=self.implementation,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"block{i}",
      )(x, mask, train)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _layer_norm(kw, "ln_final")(x)
    if self.pooling == "mean":
      w = valid.astype(x.dtype)[..., None]
      pooled = jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    else:
      pooled = x[:, 0]
    logits = _dense(self.num_classes, ("embed", None), kw, "head")(pooled)
    return constrain(logits, ("batch", None)).astype(logits_dtype(self.dtype))

  @nn.nowrap
  def flops_per_example(self, input_shape: Sequence[int], *unused: Sequence[int]) -> float:
    """Forward FLOPs of ONE sequence of shape (T,); what counts is as for `GPT`."""
    return (
        self.num_layers * _self_attention_layer_flops(self, input_shape[0])
        + 2.0 * self.model_dim * self.num_classes
    )


class EncoderDecoder(nn.Module):
  """Sequence-to-sequence transformer (token 0 = padding in source and target).

  `__call__(src_ids [B,S], tgt_ids [B,T])` -> float32 logits [B,T,tgt_vocab_size]; the decoder
  reads tgt_ids as given (shift outside: feed targets[:, :-1], predict targets[:, 1:]).
  `encode(src_ids)` and `decode(encoded, src_ids, tgt_ids)` are the two halves (call them with
  `apply(..., method='encode')`). With `use_cache=True` (the decode mode; `decode` is taken by the
  method) the decoder self-attention keeps a key/value cache and `decode` takes the next tokens
  only, as `greedy_decode` does.
  """

  src_vocab_size: int
  tgt_vocab_size: int
  model_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_len: int
  dropout_rate: float = 0.0
  head_dim: int | None = None
  use_cache: bool = False
  implementation: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    block = dict(
        dropout_rate=self.dropout_rate,
        head_dim=self.head_dim,
        implementation=self.implementation,
        **kw,
    )
    dim = self.model_dim
    self.src_embed = nn.Embed(self.src_vocab_size, dim, embedding_init=_embed_init(), **kw)
    self.src_pos = LearnedPositionalEmbedding(self.max_len, dim, **kw)
    self.tgt_embed = nn.Embed(self.tgt_vocab_size, dim, embedding_init=_embed_init(), **kw)
    self.tgt_pos = LearnedPositionalEmbedding(self.max_len, dim, **kw)
    self.encoder = [
        EncoderBlock(dim, self.num_heads, self.mlp_dim, **block) for _ in range(self.num_layers)
    ]
    self.decoder = [
        DecoderBlock(dim, self.num_heads, self.mlp_dim, decode=self.use_cache, **block)
        for _ in range(self.num_layers)
    ]
    self.encoder_ln = _layer_norm(kw)
    self.decoder_ln = _layer_norm(kw)
    self.head = _dense(self.tgt_vocab_size, ("embed", "vocab"), kw)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.position = DecodePosition()

  def __call__(self, src_ids: Array, tgt_ids: Array, train: bool = False) -> Array:
    return self.decode(self.encode(src_ids, train), src_ids, tgt_ids, train)

  def encode(self, src_ids: Array, train: bool = False) -> Array:
    """Encoder states [B,S,model_dim]; padding positions are never attended to."""
    x = constrain(self.src_pos(self.src_embed(src_ids)), RESIDUAL)
    x = self.dropout(x, deterministic=not train)
    mask = key_padding_mask(src_ids != 0)
    for block in self.encoder:
      x = block(x, mask, train)
    return self.encoder_ln(x)

  def decode(self, encoded: Array, src_ids: Array, tgt_ids: Array, train: bool = False) -> Array:
    """Decoder logits [B,T,tgt_vocab] for tgt_ids given the encoder states of src_ids.

    Without the cache the self-attention is causal and hides target padding; with it, tgt_ids
    are the tokens that follow those already cached (positions continue from the cache).
    """
    length = tgt_ids.shape[1]
    offset = self.position(length) if self.use_cache else 0
    x = constrain(self.tgt_pos(self.tgt_embed(tgt_ids), offset=offset), RESIDUAL)
    x = self.dropout(x, deterministic=not train)
    self_mask = None
    if not self.use_cache:
      self_mask = combine_masks(causal_mask(length), key_padding_mask(tgt_ids != 0))
    cross_mask = key_padding_mask(src_ids != 0)
    for block in self.decoder:
      x = block(x, self_mask, encoded, cross_mask, train)
    logits = constrain(self.head(self.decoder_ln(x)), _LOGITS)
    return logits.astype(logits_dtype(self.dtype))

  @nn.nowrap
  def flops_per_example(
      self, src_shape: Sequence[int], tgt_shape: Sequence[int] | None = None, *unused: Sequence[int]
  ) -> float:
    """Forward FLOPs of ONE (source (S,), target (T,)) pair, T = S when tgt_shape is None; what
    counts is as for `GPT`, plus the cross-attention."""
    src = src_shape[0]
    tgt = src if tgt_shape is None else tgt_shape[0]
    dim, inner = self.model_dim, _inner_features(self)
    encoder = _self_attention_layer_flops(self, src)
    decoder = (
        _attention_flops(tgt, tgt, dim, inner)
        + _attention_flops(tgt, src, dim, inner)
        + _mlp_flops(tgt, dim, self.mlp_dim)
    )
    return self.num_layers * (encoder + decoder) + 2.0 * tgt * dim * self.tgt_vocab_size


class GPT(nn.Module):
  """Decoder-only language model: token + learned position embeddings, pre-LN causal blocks,
  final LN, vocabulary head (tied to the token embedding when `tie_embeddings`).

  `__call__(input_ids [B,T], attention_mask [B,T] (1 real, 0 pad) or None, train)` -> float32
  logits [B,T,vocab_size]; the padding mask is combined with the causal mask. With `decode=True`
  the blocks keep key/value caches and positions continue from the cached length (see
  `generate`); attention_mask is not supported then.

  `remat` picks what each block keeps for the backward pass (nn.remat): "none" keeps every
  activation, "full" recomputes the block, "dots_saveable" and "dots_with_no_batch_dims_saveable"
  keep the matmul outputs (the latter only the weight matmuls, not the attention scores) and
  recompute the rest (jax.checkpoint_policies); True and False mean "full" and "none".
  `scan_layers=True` runs the blocks as one nn.scan over stacked parameters (params['blocks']
  with a leading layer axis, logical name "layers"): the compiled program holds one block, so
  deep models compile in the time of a shallow one. `dtype=jnp.bfloat16` with
  `param_dtype=jnp.float32` computes in bfloat16 on float32 master weights; attention softmax,
  LayerNorm statistics and the logits stay float32.

  GPT-2's architecture options: `tie_embeddings`, `use_bias` (attention and MLP Dense biases),
  `layer_norm_epsilon` (GPT-2: 1e-5) and `gelu_approximate` (tanh GELU, as GPT-2; False: exact
  erf). `GPT(**GPT_SIZES[name])` builds a published size.
  """

  vocab_size: int
  model_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_len: int
  dropout_rate: float = 0.0
  decode: bool = False
  tie_embeddings: bool = False
  remat: str | bool = "none"
  scan_layers: bool = False
  head_dim: int | None = None
  implementation: str | None = None
  use_bias: bool = True
  layer_norm_epsilon: float = 1e-6
  gelu_approximate: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, input_ids: Array, attention_mask: Array | None = None, train: bool = False
  ) -> Array:
    length = input_ids.shape[1]
    if self.decode and attention_mask is not None:
      raise ValueError("GPT(decode=True) does not take an attention_mask")
    offset = DecodePosition(name="position")(length) if self.decode else 0
    embed, x = _embed(
        self, input_ids, self.vocab_size, self.model_dim, self.max_len, "token", offset
    )
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    mask = None
    if not self.decode:
      valid = None if attention_mask is None else key_padding_mask(attention_mask.astype(bool))
      mask = combine_masks(causal_mask(length), valid)
    block = {f: getattr(self, f) for f in _BLOCK_FIELDS}
    if self.scan_layers:
      # Inside a scan the loop already keeps XLA from merging the recomputation away.
      cls = _rematerialised(_ScannedBlock, self.remat, static_argnums=(3,), prevent_cse=False)
      stack = nn.scan(
          cls,
          variable_axes={"params": 0, "cache": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast),
          length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, _ = stack(**block, name="blocks")(x, mask, train)
    else:
      block_cls = _rematerialised(DecoderBlock, self.remat, static_argnums=(5,))
      for i in range(self.num_layers):
        x = block_cls(**block, name=f"block{i}")(x, mask, None, None, train)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _layer_norm(kw, "ln_final", self.layer_norm_epsilon)(x)
    if self.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = _dense(self.vocab_size, ("embed", "vocab"), kw, "head", use_bias=False)(x)
    return constrain(logits, _LOGITS).astype(logits_dtype(self.dtype))

  @nn.nowrap
  def flops_per_example(self, input_shape: Sequence[int], *unused: Sequence[int]) -> float:
    """Forward FLOPs (2 * MACs) of ONE sequence of shape (T,).

    Counts the matmuls: attention projections, the full T x T scores and weighted values (causal
    masking is not subtracted), MLPs and the output head. Embedding look-ups, LayerNorm,
    softmax, biases and pooling are not counted.
    """
    seq_len = input_shape[0]
    return (
        self.num_layers * _self_attention_layer_flops(self, seq_len)
        + 2.0 * seq_len * self.model_dim * self.vocab_size
    )


REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _rematerialised(
    cls: type[nn.Module],
    remat: str | bool,
    static_argnums: tuple[int, ...],
    prevent_cse: bool = True,
) -> type[nn.Module]:
  """`cls` wrapped in nn.remat with the policy that `remat` names (see `GPT`)."""
  if isinstance(remat, bool):
    remat = "full" if remat else "none"
  if remat not in REMAT_POLICIES:
    raise ModelOptionError(
        f"remat must be one of {list(REMAT_POLICIES)} (or a bool), got {remat!r}"
    )
  if remat == "none":
    return cls
  return nn.remat(
      cls, static_argnums=static_argnums, policy=REMAT_POLICIES[remat], prevent_cse=prevent_cse
  )


# ---------- published sizes

# GPT-2 (Radford et al. 2019, as released): tied embeddings, Dense biases, LayerNorm epsilon
# 1e-5, tanh GELU. GPT-3 (Brown et al. 2020) uses the same architecture; its alternating
# locally banded sparse attention is not modelled here (every layer is dense).
GPT2_OPTIONS = dict(
    tie_embeddings=True, use_bias=True, layer_norm_epsilon=1e-5, gelu_approximate=True
)


def _size(num_layers: int, model_dim: int, num_heads: int, max_len: int) -> dict[str, Any]:
  return dict(
      vocab_size=50257,
      model_dim=model_dim,
      num_layers=num_layers,
      num_heads=num_heads,
      mlp_dim=4 * model_dim,
      max_len=max_len,
      **GPT2_OPTIONS,
  )


# GPT(**GPT_SIZES[name]). GPT-3 rows are Table 2.1 of the paper (n_layers, d_model, n_heads;
# d_head = d_model / n_heads) with two corrections that its n_params imply: 'gpt3-xl' lists 24
# heads of 128 (3072 != d_model 2048; 16 x 128 gives the stated 1.3B) and 'gpt3-13b' lists
# d_model 5140 (40 heads x 128 = 5120).
GPT_SIZES: dict[str, dict[str, Any]] = {
    "gpt2": _size(12, 768, 12, 1024),
    "gpt2-medium": _size(24, 1024, 16, 1024),
    "gpt2-large": _size(36, 1280, 20, 1024),
    "gpt2-xl": _size(48, 1600, 25, 1024),
    "gpt3-small": _size(12, 768, 12, 2048),
    "gpt3-medium": _size(24, 1024, 16, 2048),
    "gpt3-large": _size(24, 1536, 16, 2048),
    "gpt3-xl": _size(24, 2048, 16, 2048),
    "gpt3-2.7b": _size(32, 2560, 32, 2048),
    "gpt3-6.7b": _size(32, 4096, 32, 2048),
    "gpt3-13b": _size(40, 5120, 40, 2048),
    "gpt3-175b": _size(96, 12288, 96, 2048),
}


def gpt_size(name: str) -> dict[str, Any]:
  """The GPT keyword arguments of a published size (a copy of GPT_SIZES[name])."""
  if name not in GPT_SIZES:
    raise ModelOptionError(f"unknown GPT size {name!r}; valid sizes: {', '.join(GPT_SIZES)}")
  return dict(GPT_SIZES[name])


# ---------- decoding


def _empty_cache(model: nn.Module, *example_args: Array) -> Any:
  """Zero 'cache' collection for a decode-mode model, sized by the example arguments."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *example_args))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _without_cache(variables: Any) -> dict[str, Any]:
  return {k: v for k, v in variables.items() if k != "cache"}


def generate(
    model: GPT,
    variables: Any,
    prompt_ids: Array,
    max_new_tokens: int,
    rng: Array,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> Array:
  """Continues prompt_ids [B,P] by max_new_tokens sampled tokens: ids [B, P + max_new_tokens].

  The prompt fills a key/value cache in one pass, then each new token costs one cached step. The
  model never sees a position past its max_len (the positions it was trained on when max_len is
  the training context): once the window is full, its newest max_len // 2 tokens are read into a
  fresh cache and sampling goes on. Every window is the same jit (a [B, max_len] token buffer
  whose filled length and end are traced), so one compilation per (model, batch size, whether
  top_k is used) serves every prompt length, token count and window; rng, temperature and the
  value of top_k are traced. Needs P < model.max_len. Runs on the host: not for use under jit.
  """
  batch, length = prompt_ids.shape
  if length >= model.max_len:
    raise ValueError(f"prompt length {length} must be below the model's max_len={model.max_len}")
  if max_new_tokens <= 0:
    return jnp.asarray(prompt_ids, jnp.int32)
  k = None if top_k is None else jnp.int32(top_k)
  variables, keep = _without_cache(variables), model.max_len // 2
  out = np.asarray(prompt_ids, np.int32)
  buffer = np.zeros((batch, model.max_len), np.int32)
  buffer[:, :length] = out
  filled, window, temp = length, 0, jnp.float32(temperature)
  while True:
    end = min(model.max_len, filled + length + max_new_tokens - out.shape[1])
    key = rng if window == 0 else jax.random.fold_in(rng, window)
    buffer = np.asarray(_generate(model, variables, buffer, filled, end, key, temp, k))
    out = np.concatenate([out, buffer[:, filled:end]], axis=1)
    if out.shape[1] == length + max_new_tokens:
      return jnp.asarray(out)
    buffer = np.zeros_like(buffer)
    buffer[:, :keep] = out[:, -keep:]
    filled, window = keep, window + 1


def _set_cache_position(cache: Any, position: Array) -> Any:
  """The cache with every write index (attention's cache_index, the GPT's position) at
  `position`: later calls overwrite the slots from there on and never attend past themselves."""

  def set_leaf(path, leaf):
    name = getattr(path[-1], "key", None)
    return jnp.full_like(leaf, position) if name in ("cache_index", "position") else leaf

  return jax.tree_util.tree_map_with_path(set_leaf, cache)


@functools.partial(jax.jit, static_argnames=("model",))
def _generate(
    model: GPT,
    variables: Any,
    buffer: Array,
    filled: Array,
    end: Array,
    rng: Array,
    temperature: Array,
    top_k: Array | None,
) -> Array:
  """The buffer [B, max_len] with slots filled..end-1 sampled after its first `filled` tokens.

  The whole buffer goes through the model once (causal attention keeps the filler after
  `filled` out of every real position's output); the cache then rewinds to `filled`."""
  model = model.clone(decode=True)
  cache = _empty_cache(model, buffer)
  logits, state = model.apply({**variables, "cache": cache}, buffer, mutable=["cache"])
  last = jax.lax.dynamic_index_in_dim(logits, filled - 1, axis=1, keepdims=False)
  cache = _set_cache_position(state["cache"], filled)

  def step(t, carry):
    buffer, cache, logits = carry
    token = sample_logits(logits, jax.random.fold_in(rng, t), temperature, top_k)
    buffer = jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], t, axis=1)
    logits, state = model.apply({**variables, "cache": cache}, token[:, None], mutable=["cache"])
    return buffer, state["cache"], logits[:, -1]

  # The last slot's token is sampled outside the loop: feeding it would write past the cache.
  buffer, _, last = jax.lax.fori_loop(filled, end - 1, step, (buffer, cache, last))
  token = sample_logits(last, jax.random.fold_in(rng, end - 1), temperature, top_k)
  return jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], end - 1, axis=1)


def greedy_decode(
    model: EncoderDecoder,
    variables: Any,
    src_ids: Array,
    max_len: int,
    bos_id: int = 1,
    eos_id: int = 2,
) -> Array:
  """Greedy decoding with the key/value cache: ids [B, max_len], the tokens after BOS.

  The decoder starts from bos_id and picks the argmax token at every step, never the padding id
  0; the EOS token is kept and every token after it is 0. One jit with a lax.scan, compiled once
  per (model, src shape, max_len).
  """
  if max_len > model.max_len:
    raise ValueError(f"max_len={max_len} exceeds the model's max_len={model.max_len}")
  return _greedy_decode(
      model, _without_cache(variables), jnp.asarray(src_ids, jnp.int32), max_len, bos_id, eos_id
  )


@functools.partial(jax.jit, static_argnames=("model", "max_len", "bos_id", "eos_id"))
def _greedy_decode(
    model: EncoderDecoder, variables: Any, src_ids: Array, max_len: int, bos_id: int, eos_id: int
) -> Array:
  model = model.clone(use_cache=True)
  batch = src_ids.shape[0]
  encoded = model.apply(variables, src_ids, method="encode")
  cache = _empty_cache(model, src_ids, jnp.zeros((batch, max_len), jnp.int32))

  def step(carry, _):
    cache, token = carry
    logits, state = model.apply(
        {**variables, "cache": cache},
        encoded,
        src_ids,
        token[:, None],
        method="decode",
        mutable=["cache"],
    )
    token = jnp.argmax(logits[:, -1].at[:, 0].set(-jnp.inf), axis=-1).astype(jnp.int32)
    return (state["cache"], token), token

  start = jnp.full((batch,), bos_id, jnp.int32)
  _, tokens = jax.lax.scan(step, (cache, start), None, length=max_len)
  return mask_after_eos(tokens.T, eos_id)


def beam_search_decode(
    model: EncoderDecoder,
    variables: Any,
    src_ids: Array,
    max_len: int,
    beam_size: int = 4,
    length_penalty: float = 0.0,
    bos_id: int = 1,
    eos_id: int = 2,
) -> Array:
  """Beam search with the key/value cache: ids [B, max_len] of each source's best hypothesis,
  laid out as `greedy_decode`'s (EOS kept, zeros after it).

  Each step extends every live hypothesis by every token but padding 0 and keeps the beam_size
  best of all candidates and finished hypotheses. A hypothesis of n tokens (EOS counted) ranks by
  log p / ((5 + n) / 6) ** length_penalty (Wu et al. 2016); 0 ranks by log p, and beam_size=1
  is greedy decoding. One jit with a lax.scan, compiled once per (model, src shape, max_len,
  beam_size); length_penalty is traced.
  """
  if max_len > model.max_len:
    raise ValueError(f"max_len={max_len} exceeds the model's max_len={model.max_len}")
  if beam_size < 1:
    raise ValueError(f"beam_size={beam_size} must be at least 1 (1 is greedy decoding)")
  return _beam_search(
      model,
      _without_cache(variables),
      jnp.asarray(src_ids, jnp.int32),
      jnp.float32(length_penalty),
      max_len,
      beam_size,
      bos_id,
      eos_id,
  )


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam_size", "bos_id", "eos_id"))
def _beam_search(
    model: EncoderDecoder,
    variables: Any,
    src_ids: Array,
    alpha: Array,
    max_len: int,
    beam_size: int,
    bos_id: int,
    eos_id: int,
) -> Array:
  model = model.clone(use_cache=True)
  batch, k = src_ids.shape[0], beam_size
  src = jnp.repeat(src_ids, k, axis=0)  # row b * k + j is beam j of source b
  encoded = model.apply(variables, src, method="encode")
  cache = _empty_cache(model, src, jnp.zeros((batch * k, max_len), jnp.int32))
  penalty = lambda n: ((5.0 + n) / 6.0) ** alpha

  def step(carry, t):
    cache, token, seqs, scores, lengths, done = carry
    logits, state = model.apply(
        {**variables, "cache": cache},
        encoded,
        src,
        token[:, None],
        method="decode",
        mutable=["cache"],
    )
    logp = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)).reshape(batch, k, -1)
    logp = logp.at[:, :, 0].set(-jnp.inf)
    # A finished hypothesis has one continuation, padding, at no cost: it competes unchanged.
    stay = jnp.full_like(logp, -jnp.inf).at[:, :, 0].set(0.0)
    logp = jnp.where(done[:, :, None], stay, logp)
    vocab = logp.shape[-1]
    total = scores[:, :, None] + logp
    new_len = jnp.where(done, lengths, t + 1)  # of each beam's candidates
    rank = total / penalty(new_len.astype(jnp.float32))[:, :, None]
    _, pick = jax.lax.top_k(rank.reshape(batch, k * vocab), k)
    beam, tok = pick // vocab, (pick % vocab).astype(jnp.int32)
    take = lambda x: jnp.take_along_axis(x, beam.reshape(beam.shape + (1,) * (x.ndim - 2)), 1)
    seqs = take(seqs).at[:, :, t].set(tok)
    scores = jnp.take_along_axis(total.reshape(batch, k * vocab), pick, 1)
    lengths = take(new_len)
    done = take(done) | (tok == eos_id)
    rows = (jnp.arange(batch)[:, None] * k + beam).reshape(-1)
    cache = jax.tree.map(
        lambda x: x[rows] if x.ndim and x.shape[0] == batch * k else x, state["cache"]
    )
    return (cache, tok.reshape(-1), seqs, scores, lengths, done), None

  scores = jnp.full((batch, k), -jnp.inf).at[:, 0].set(0.0)  # one start, not k copies of it
  init = (
      cache,
      jnp.full((batch * k,), bos_id, jnp.int32),
      jnp.zeros((batch, k, max_len), jnp.int32),
      scores,
      jnp.zeros((batch, k), jnp.int32),
      jnp.zeros((batch, k), bool),
  )
  (_, _, seqs, scores, lengths, _), _ = jax.lax.scan(step, init, jnp.arange(max_len))
  best = jnp.argmax(scores / penalty(lengths.astype(jnp.float32)), axis=1)
  return mask_after_eos(seqs[jnp.arange(batch), best], eos_id)


def mask_after_eos(ids: Array, eos_id: int) -> Array:
  """Sets every token after the first eos_id of each row to 0 (the EOS itself stays)."""
  is_eos = ids == eos_id
  after = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
  return jnp.where(after, 0, ids)


# ---------- FLOPs


def _attention_flops(q_len: int, kv_len: int, dim: int, inner: int) -> float:
  """Q, K, V and output projections plus scores and weighted values (2 * MACs)."""
  projections = 2.0 * dim * inner * (2 * q_len + 2 * kv_len)
  return projections + 2.0 * 2.0 * q_len * kv_len * inner


def _mlp_flops(length: int, dim: int, mlp_dim: int) -> float:
  return 2.0 * 2.0 * length * dim * mlp_dim


def _inner_features(model: nn.Module) -> int:
  return model.num_heads * (model.head_dim or model.model_dim // model.num_heads)


def _self_attention_layer_flops(model: nn.Module, length: int) -> float:
  """One encoder or decoder-only block: self-attention and MLP."""
  dim = model.model_dim
  return _attention_flops(length, length, dim, _inner_features(model)) + _mlp_flops(
      length, dim, model.mlp_dim
  )
