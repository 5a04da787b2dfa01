"""The shapes of every benchmarked model, shared by the jax and the PyTorch side.

FULL is what the issue asks for; QUICK is tiny (seconds), for smoke tests of the machinery only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FULL: dict[str, dict[str, Any]] = {
    "gpt": dict(
        vocab_size=65,
        model_dim=384,
        num_layers=6,
        num_heads=6,
        mlp_dim=1536,
        context=256,
        batch_size=16,
    ),
    "resnet18": dict(image_shape=(32, 32, 3), num_classes=10, num_filters=64, batch_size=128),
    "lstm": dict(vocab_size=65, embed_dim=128, hidden_size=512, seq_len=128, batch_size=32),
    "mlp": dict(image_shape=(28, 28, 1), hidden_sizes=(128, 64), num_classes=10, batch_size=64),
}

QUICK: dict[str, dict[str, Any]] = {
    "gpt": dict(
        vocab_size=17, model_dim=16, num_layers=2, num_heads=2, mlp_dim=32, context=8, batch_size=4
    ),
    "resnet18": dict(image_shape=(8, 8, 3), num_classes=10, num_filters=4, batch_size=4),
    "lstm": dict(vocab_size=17, embed_dim=8, hidden_size=16, seq_len=6, batch_size=4),
    "mlp": dict(image_shape=(28, 28, 1), hidden_sizes=(128, 64), num_classes=10, batch_size=8),
}

MODELS = tuple(FULL)


def shapes(name: str, quick: bool) -> dict[str, Any]:
  """The shape dict of benchmark model `name` (one of MODELS)."""
  table = QUICK if quick else FULL
  if name not in table:
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
  return dict(table[name])


def make_batch(name: str, shape: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
  """A random batch in the engine's layout: images NHWC float32, token ids int32, int32 targets."""
  rng = np.random.default_rng(seed)
  n = shape["batch_size"]
  if "image_shape" in shape:
    return {
        "inputs": rng.standard_normal((n, *shape["image_shape"]), dtype=np.float32),
        "targets": rng.integers(0, shape["num_classes"], n, dtype=np.int32),
    }
  length = shape.get("context") or shape["seq_len"]
  seq = rng.integers(0, shape["vocab_size"], (n, length + 1), dtype=np.int32)
  return {"inputs": seq[:, :-1], "targets": seq[:, 1:]}
