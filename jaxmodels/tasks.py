"""Training objectives. A task knows what a model is fed from a batch and how to score its output.

The engine stays generic through this seam: it asks a task for the model inputs, the weight of a
batch (examples or tokens; never dependent on parameters), and sums of loss and metrics, and divides
by the global weight itself, so data-parallel losses equal one-device losses exactly.

Metric sums are {name: (sum, weight)}; a metric's value is sum(sums) / sum(weights) over batches.
`Task` is that contract; `DecodingTask` adds scoring decoded output in the final evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Batch = dict[str, jax.Array]
Sums = dict[str, tuple[jax.Array, jax.Array]]


class Task(Protocol):
  """What the engine asks of a training objective."""

  def model_args(self, batch: Batch) -> tuple[Any, ...]:
    """The model's positional inputs, taken from the batch."""
    ...

  def weights(self, batch: Batch) -> jax.Array:
    """The weight of each example or token of the batch; never dependent on parameters."""
    ...

  def losses(self, outputs: Any, batch: Batch) -> tuple[jax.Array, Sums]:
    """Weighted losses (summed, then divided by the global weight, to train on) and metric sums."""
    ...

  def finalize(self, metrics: dict[str, float]) -> dict[str, float]:
    """The reduced metrics with any derived from them (perplexity, error rates)."""
    ...


@runtime_checkable
class DecodingTask(Task, Protocol):
  """A task that can also decode in the final evaluation and score what it decoded."""

  @property
  def decodes(self) -> bool:
    """Whether this instance decodes (a decoding-capable task may be set up not to)."""
    ...

  def decode_metrics(self, model: nn.Module, variables: Any, batch: Batch) -> Sums:
    """Metric sums of the model's decoded output against the batch."""
    ...


def decodes(task: Task) -> bool:
  """Whether the final evaluation adds `task.decode_metrics` to the metrics."""
  return isinstance(task, DecodingTask) and task.decodes


def _example_weight(batch: Batch) -> jax.Array:
  n = batch["targets"].shape[0]
  return batch.get("mask", jnp.ones((n,), jnp.float32)).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Classification:
  """Cross-entropy on class labels (optionally smoothed), accuracy.

  With `flip_eval` the final evaluation also scores the mean of the class probabilities of each
  image and its left-right mirror (test-time flip; images [B, H, W, C]): flip_accuracy and
  flip_loss. It suits models trained on mirrored images too.
  """

  num_classes: int
  label_smoothing: float = 0.0
  inputs: tuple[str, ...] = ("inputs",)  # batch keys passed to the model, in order
  flip_eval: bool = False

  @property
  def decodes(self) -> bool:
    return self.flip_eval

  def decode_metrics(self, model: nn.Module, variables: Any, batch: Batch) -> Sums:
    """Loss (cross-entropy with the smoothed labels, as `losses`) and accuracy of the class
    probabilities averaged over each image and its mirror."""
    images, *rest = self.model_args(batch)
    both = [model.apply(variables, x, *rest, train=False) for x in (images, images[:, :, ::-1])]
    probs = sum(jax.nn.softmax(logits.astype(jnp.float32), -1) for logits in both) / 2
    targets, w = batch["targets"], self.weights(batch)
    labels = optax.smooth_labels(jax.nn.one_hot(targets, self.num_classes), self.label_smoothing)
    loss = -jnp.sum(labels * jnp.log(probs + 1e-12), -1)  # the cross-entropy `loss` reports
    correct = (jnp.argmax(probs, -1) == targets).astype(jnp.float32)
    return {
        "flip_loss": (jnp.sum(loss * w), jnp.sum(w)),
        "flip_accuracy": (jnp.sum(correct * w), jnp.sum(w)),
    }

  def model_args(self, batch: Batch) -> tuple[Any, ...]:
    return tuple(batch[k] for k in self.inputs)

  def weights(self, batch: Batch) -> jax.Array:
    return _example_weight(batch)

  def losses(self, logits: jax.Array, batch: Batch) -> tuple[jax.Array, Sums]:
    """Per-example loss [B] and metric sums."""
    logits = logits.astype(jnp.float32)
    labels = optax.smooth_labels(
        jax.nn.one_hot(batch["targets"], self.num_classes), self.label_smoothing
    )
    loss = optax.softmax_cross_entropy(logits, labels)
    w = self.weights(batch)
    correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    return loss * w, {
        "loss": (jnp.sum(loss * w), jnp.sum(w)),
        "accuracy": (jnp.sum(correct * w), jnp.sum(w)),
    }

  def finalize(self, metrics: dict[str, float]) -> dict[str, float]:
    return metrics


def _token_losses(
    logits: jax.Array, targets: jax.Array, weight: jax.Array, label_smoothing: float = 0.0
) -> tuple[jax.Array, Sums]:
  """Per-token losses to train on and metric sums. With label smoothing e the loss is the
  cross-entropy against (1 - e) one-hot + e / vocab, and `cross_entropy` reports the plain one."""
  logits = logits.astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weight
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weight
  total = jnp.sum(weight)
  sums = {"token_accuracy": (jnp.sum(correct), total)}
  loss = nll
  if label_smoothing:
    uniform = -jnp.mean(jax.nn.log_softmax(logits), axis=-1) * weight
    loss = (1.0 - label_smoothing) * nll + label_smoothing * uniform
    sums["cross_entropy"] = (jnp.sum(nll), total)
  return loss, dict(sums, loss=(jnp.sum(loss), total))


@dataclasses.dataclass(frozen=True)
class LanguageModel:
  """Next-token cross-entropy; targets are the inputs shifted by one. Reports perplexity."""

  pad_id: int | None = None  # targets equal to it carry no weight

  def model_args(self, batch: Batch) -> tuple[Any, ...]:
    return (batch["inputs"],)

  def weights(self, batch: Batch) -> jax.Array:
    w = jnp.ones(batch["targets"].shape, jnp.float32)
    if self.pad_id is not None:
      w = w * (batch["targets"] != self.pad_id)
    if "mask" in batch:
      w = w * batch["mask"][:, None]
    return w

  def losses(self, logits: jax.Array, batch: Batch) -> tuple[jax.Array, Sums]:
    return _token_losses(logits, batch["targets"], self.weights(batch))

  def finalize(self, metrics: dict[str, float]) -> dict[str, float]:
    return dict(metrics, perplexity=float(jnp.exp(metrics["loss"])))


@dataclasses.dataclass(frozen=True)
class Seq2Seq:
  """Teacher forcing: the decoder reads targets[:, :-1] and predicts targets[:, 1:] (0 = padding).

  With `label_smoothing` the loss trained on (and reported as `loss`) is smoothed as in
  Classification; `cross_entropy` then reports the plain one, and perplexity is computed from it.

  Evaluation can also decode (`decode_fn(model, variables, inputs, max_len) -> ids`: greedy or
  beam search) and report exact-match (whole sequence right) and token accuracy of the decoded
  sequence. `token_classes` (id -> class id) adds a looser exact match that accepts any token of
  the target's class, reported as exact_match_{classes_name} and word_error_rate_{classes_name}
  (cmudict: a phoneme right whatever its stress digit).
  """

  decode_fn: Callable[..., jax.Array] | None = None
  label_smoothing: float = 0.0
  token_classes: tuple[int, ...] | None = None
  classes_name: str = "classes"

  @property
  def decodes(self) -> bool:
    return self.decode_fn is not None

  def model_args(self, batch: Batch) -> tuple[Any, ...]:
    return batch["inputs"], batch["targets"][:, :-1]

  def weights(self, batch: Batch) -> jax.Array:
    w = (batch["targets"][:, 1:] != 0).astype(jnp.float32)
    return w * batch["mask"][:, None] if "mask" in batch else w

  def losses(self, logits: jax.Array, batch: Batch) -> tuple[jax.Array, Sums]:
    targets, w = batch["targets"][:, 1:], self.weights(batch)
    return _token_losses(logits, targets, w, self.label_smoothing)

  def decode_metrics(self, model: nn.Module, variables: Any, batch: Batch) -> Sums:
    """Exact match and token accuracy of the decoded ids against targets[:, 1:]."""
    want = batch["targets"][:, 1:]
    got = self.decode_fn(model, variables, batch["inputs"], want.shape[1])
    real = (want != 0).astype(jnp.float32)
    same = (got == want).astype(jnp.float32)
    ex = _example_weight(batch)
    exact = jnp.all((got == want) | (want == 0), axis=-1).astype(jnp.float32) * ex
    tokens = real * ex[:, None]
    sums = {
        "exact_match": (jnp.sum(exact), jnp.sum(ex)),
        "decoded_token_accuracy": (jnp.sum(same * tokens), jnp.sum(tokens)),
    }
    if self.token_classes is not None:
      classes = jnp.asarray(self.token_classes, jnp.int32)
      close = jnp.all((classes[got] == classes[want]) | (want == 0), axis=-1) * ex
      sums[f"exact_match_{self.classes_name}"] = (jnp.sum(close), jnp.sum(ex))
    return sums

  def finalize(self, metrics: dict[str, float]) -> dict[str, float]:
    nll = metrics.get("cross_entropy", metrics["loss"])
    out = dict(metrics, perplexity=float(jnp.exp(nll)))
    for key in [k for k in out if k.startswith("exact_match")]:
      out[key.replace("exact_match", "word_error_rate")] = 1.0 - out[key]
    return out
