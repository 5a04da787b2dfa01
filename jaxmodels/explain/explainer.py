"""What is explained for each kind of model, from a loaded workdir to figures on disk.

Image classifiers (MLP, CNN, ResNet): integrated gradients and saliency of the predicted class's
logit over the input pixels, from a black image. Text classifiers (an nn.Embed feeding the rest):
integrated gradients over the token embeddings, from all-zero embeddings, summed over each
embedding to one number per token. Transformers (GPT, EncoderDecoder, TransformerEncoder): the
attention weights of every layer and head for one input, as MultiHeadAttention sows them.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

from etils import epath
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import tasks
from jaxmodels.explain import attributions, figures
from jaxmodels.models import transformer
from jaxmodels.predict import Trained

KINDS = ("image", "text", "attention")
TRANSFORMERS = (transformer.GPT, transformer.EncoderDecoder, transformer.TransformerEncoder)
MAX_ATTENTION_TOKENS = 64  # longer inputs are cut: a panel of 64 x 64 labelled cells stays legible
SUPPORTED = (
    "image classifiers (digits_mlp, mnist_mlp, fashion_mnist_cnn, fashion_mnist_resnet, "
    "cifar10_resnet), text classifiers with a token embedding (imdb_lstm) and Transformers "
    "(shakespeare_gpt, gpt3, cmudict_transformer)"
)


class UnsupportedModelError(ValueError):
  """The workdir's model is not one that jaxmodels.explain knows how to explain."""


@dataclasses.dataclass
class Explained:
  kind: str
  paths: list[epath.Path]
  notes: list[str]  # one line per check worth printing (completeness of integrated gradients)


def model_kind(trained: Trained, task: Any, batch: dict[str, np.ndarray]) -> str:
  """'image', 'text' or 'attention'; UnsupportedModelError naming what is supported otherwise."""
  model = trained.model
  if isinstance(model, TRANSFORMERS):
    return "attention"
  if isinstance(task, tasks.Classification):
    inputs = np.asarray(batch[task.inputs[0]])
    if np.issubdtype(inputs.dtype, np.floating) and inputs.ndim == 4:
      return "image"
    if np.issubdtype(inputs.dtype, np.integer) and inputs.ndim == 2:
      return "text"
  raise UnsupportedModelError(
      f"{trained.experiment.__name__} trains a {type(model).__name__} with a "
      f"{type(task).__name__} task, which jaxmodels.explain does not explain; it explains "
      f"{SUPPORTED}."
  )


def explain(
    trained: Trained, task: Any, batch: dict[str, np.ndarray], out_dir: epath.Path, steps: int
) -> Explained:
  """Computes the explanations of `batch` (the examples to explain, no padding rows), then writes
  the figures into `out_dir` (created only once everything is computed)."""
  kind = model_kind(trained, task, batch)
  if kind == "image":
    drawn, notes = _images(trained, task, batch, steps)
  elif kind == "text":
    drawn, notes = _texts(trained, task, batch, steps)
  else:
    drawn, notes = _attention(trained, task, batch), []
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, fig in drawn:
    path = out_dir / f"{name}.png"
    figures.save(fig, path)
    paths.append(path)
  return Explained(kind, paths, notes)


# ---------- classifiers: integrated gradients and saliency


def _class_logit_sum(logits_fn: Callable[[jax.Array], jax.Array], classes: np.ndarray):
  """x -> sum over examples of logit[example, classes[example]]: the gradient of this sum is
  each example's own, since the examples of a batch do not interact at evaluation."""
  index = jnp.asarray(classes)

  def f(x: jax.Array) -> jax.Array:
    logits = logits_fn(x)
    return jnp.sum(jnp.take_along_axis(logits, index[:, None], axis=1))

  return f


def _completeness_note(
    f_per_example: Callable[[jax.Array], jax.Array], x, baseline, ig, axes: tuple[int, ...]
) -> str:
  """How far each example's attributions are from summing to f(x) - f(baseline)."""
  gap = np.asarray(f_per_example(x) - f_per_example(baseline), np.float64)
  total = np.asarray(ig, np.float64).sum(axis=axes)
  error = np.abs(total - gap) / np.maximum(np.abs(gap), 1e-12)
  return (
      f"integrated gradients completeness: |sum(attributions) - (f(x) - f(baseline))| / "
      f"|f(x) - f(baseline)| at most {error.max():.2%} over {error.size} examples"
  )


def _label(names: list[str] | None, k: int) -> str:
  return names[k] if names and k < len(names) else str(k)


def _images(trained: Trained, task: Any, batch: dict[str, np.ndarray], steps: int):
  model, variables, info = trained.model, trained.variables, trained.data.info
  x = jnp.asarray(batch[task.inputs[0]])
  logits_fn = lambda inputs: model.apply(variables, inputs, train=False)
  logits = np.asarray(logits_fn(x))
  probs = np.asarray(jax.nn.softmax(logits, -1))
  predicted = logits.argmax(-1)
  f = _class_logit_sum(logits_fn, predicted)
  baseline = jnp.broadcast_to(black_image(info, x.shape[-1]), x.shape)
  ig = jax.jit(functools.partial(attributions.integrated_gradients, f, steps=steps))(x, baseline)
  sal = jax.jit(functools.partial(attributions.saliency, f))(x)
  per_example = lambda inputs: jnp.take_along_axis(
      logits_fn(inputs), jnp.asarray(predicted)[:, None], axis=1
  )[:, 0]
  note = _completeness_note(per_example, x, baseline, ig, (1, 2, 3))
  names = info.get("label_names")
  titles = [
      f"pred {_label(names, int(p))} ({probs[i, p]:.2f})\ntrue {_label(names, int(t))}"
      for i, (p, t) in enumerate(zip(predicted, batch["targets"]))
  ]
  fig = figures.image_grid(
      display_image(np.asarray(x), info),
      np.asarray(ig).sum(-1),
      np.abs(np.asarray(sal)).max(-1),
      titles,
      f"{trained.experiment.__name__} step {trained.step}: attributions of the predicted class's "
      f"logit; integrated gradients from a black image, {steps} trapezoid steps",
  )
  return [("images", fig)], [note]


def black_image(info: dict[str, Any], channels: int) -> jax.Array:
  """The model input of an all-black image: (0 - mean) / std when the data is normalised."""
  if info.get("normalized"):
    mean, std = np.asarray(info["mean"], np.float32), np.asarray(info["std"], np.float32)
    return jnp.asarray(np.broadcast_to(-mean / std, (channels,)))
  return jnp.zeros((channels,), jnp.float32)


def display_image(x: np.ndarray, info: dict[str, Any]) -> np.ndarray:
  """[N, H, W] grey levels in [0, 1] of model inputs [N, H, W, C] (the channels averaged)."""
  if info.get("normalized"):
    x = x * np.asarray(info["std"], np.float32) + np.asarray(info["mean"], np.float32)
  else:  # synthetic or unnormalised inputs: stretch each image to [0, 1]
    low = x.min(axis=(1, 2, 3), keepdims=True)
    x = (x - low) / np.maximum(x.max(axis=(1, 2, 3), keepdims=True) - low, 1e-12)
  return np.clip(x.mean(-1), 0.0, 1.0)


def _texts(trained: Trained, task: Any, batch: dict[str, np.ndarray], steps: int):
  model, variables, info = trained.model, trained.variables, trained.data.info
  args = task.model_args({k: jnp.asarray(v) for k, v in batch.items()})
  ids = np.asarray(args[0])
  embedded_ids, embeddings = _embedding_of(model, variables, args, trained.experiment.__name__)
  if embedded_ids.shape == ids.shape:
    to_batch_major = lambda a: a
  elif embedded_ids.shape == ids.T.shape:  # a time-major model (RNNClassifier) embeds ids.T
    to_batch_major = lambda a: a.T
  else:
    raise UnsupportedModelError(
        f"the token embedding of {type(model).__name__} sees ids of shape {embedded_ids.shape}, "
        f"neither the batch's {ids.shape} nor its transpose; {SUPPORTED} are supported."
    )
  logits_fn = lambda e: _apply_with_embeddings(model, variables, args, e)
  logits = np.asarray(logits_fn(embeddings))
  probs = np.asarray(jax.nn.softmax(logits, -1))
  predicted = logits.argmax(-1)
  f = _class_logit_sum(logits_fn, predicted)
  baseline = jnp.zeros_like(embeddings)
  ig = jax.jit(functools.partial(attributions.integrated_gradients, f, steps=steps))(
      embeddings, baseline
  )
  per_token = to_batch_major(np.asarray(ig).sum(-1))  # [B, T]
  per_example = lambda e: jnp.take_along_axis(
      logits_fn(e), jnp.asarray(predicted)[:, None], axis=1
  )[:, 0]
  gap = np.asarray(per_example(embeddings) - per_example(baseline), np.float64)
  error = np.abs(per_token.sum(-1) - gap) / np.maximum(np.abs(gap), 1e-12)
  note = (
      f"integrated gradients completeness: |sum(attributions) - (f(x) - f(baseline))| / "
      f"|f(x) - f(baseline)| at most {error.max():.2%} over {error.size} examples"
  )
  vocab, names = info.get("vocab"), info.get("label_names")
  drawn = []
  for i in range(ids.shape[0]):
    real = ids[i] != 0  # token 0 is padding in every text dataset here
    tokens = [_label(vocab, int(t)) for t in ids[i][real]]
    p, t = int(predicted[i]), int(batch["targets"][i])
    title = (
        f"{trained.experiment.__name__} step {trained.step}, example {i}: predicted "
        f"{_label(names, p)} (p={probs[i, p]:.2f}), true {_label(names, t)}; integrated gradients "
        f"over the token embeddings (from zero embeddings, {steps} steps), red supports the "
        "predicted class"
    )
    drawn.append((f"tokens_{i}", figures.token_strip(tokens, per_token[i][real], title)))
  return drawn, [note]


def _is_embedding(context: Any) -> bool:
  return isinstance(context.module, nn.Embed) and context.method_name == "__call__"


def _embedding_of(model: nn.Module, variables: Any, args: tuple, name: str):
  """(ids the model's one nn.Embed saw, its output) for model inputs `args`."""
  seen = []

  def record(next_fun, call_args, kwargs, context):
    out = next_fun(*call_args, **kwargs)
    if _is_embedding(context):
      seen.append((np.asarray(call_args[0]), out))
    return out

  with nn.intercept_methods(record):
    model.apply(variables, *args, train=False)
  if len(seen) != 1:
    raise UnsupportedModelError(
        f"{name}'s {type(model).__name__} calls a token embedding (nn.Embed) {len(seen)} times; "
        f"text attributions need exactly one. jaxmodels.explain explains {SUPPORTED}."
    )
  return seen[0]


def _apply_with_embeddings(model: nn.Module, variables: Any, args: tuple, embeddings: jax.Array):
  """The model's logits with its nn.Embed output replaced by `embeddings`."""

  def replace(next_fun, call_args, kwargs, context):
    return embeddings if _is_embedding(context) else next_fun(*call_args, **kwargs)

  with nn.intercept_methods(replace):
    return model.apply(variables, *args, train=False)


# ---------- Transformers: attention maps


def attention_weights(model: nn.Module, variables: Any, args: tuple) -> dict[str, np.ndarray]:
  """{'<stack>_<attention>': weights [layers, heads, Tq, Tk]} of the first example of `args`,
  e.g. 'block_self_attn' for GPT, 'encoder_attn', 'decoder_self_attn', 'decoder_cross_attn'."""
  _, state = model.apply(variables, *args, train=False, mutable=["intermediates"])
  groups: dict[str, list[np.ndarray]] = {}
  for path, (weights, *_) in traverse_util.flatten_dict(state["intermediates"]).items():
    if path[-1] != "attention_weights":
      continue
    weights = np.asarray(weights)
    stack = path[0].rstrip("0123456789_").removesuffix("s")  # block0 -> block, blocks -> block
    name = f"{stack}_{path[-2]}"
    layers = weights[:, 0] if weights.ndim == 5 else weights[None, 0]  # scanned: layers first
    groups.setdefault(name, []).extend(layers)
  return {name: np.stack(layers) for name, layers in sorted(groups.items())}


def _attention(trained: Trained, task: Any, batch: dict[str, np.ndarray]):
  model, info = trained.model, trained.data.info
  args = [np.asarray(a)[:1] for a in task.model_args(batch)]
  if isinstance(model, transformer.GPT):
    args = [args[0][:, :MAX_ATTENTION_TOKENS]]
    vocabs = [info.get("vocab")]
  else:  # token 0 is padding for the encoder and the encoder-decoder: show real tokens only
    args = [a[:, : max(1, min(MAX_ATTENTION_TOKENS, int((a[0] != 0).sum())))] for a in args]
    vocabs = [info.get("src_vocab", info.get("vocab")), info.get("tgt_vocab")][: len(args)]
  tokens = [[_char(_label(v, int(t))) for t in a[0]] for a, v in zip(args, vocabs)]
  drawn = []
  for name, weights in attention_weights(model, trained.variables, tuple(args)).items():
    source = 0 if name.startswith("encoder") or len(args) == 1 else 1
    queries = tokens[source]
    keys = tokens[0] if "cross" in name or source == 0 else tokens[1]
    title = (
        f"{trained.experiment.__name__} step {trained.step}: {name} attention weights, "
        "one row per query (y) over the keys (x)"
    )
    drawn.append((f"attention_{name}", figures.attention_maps(weights, queries, keys, title)))
  return drawn


def _char(token: str) -> str:
  """A visible label for whitespace characters."""
  return {" ": "␣", "\n": "⏎", "\t": "⇥"}.get(token, token)
