"""What the model families share: the protocol of a model that counts its own FLOPs."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class HasFlops(Protocol):
  """A model with an analytic forward FLOP count, which MFU uses instead of XLA's cost analysis
  (that counts a scan body once and skips convolution padding)."""

  def flops_per_example(self, *input_shapes: Sequence[int]) -> float:
    """Forward FLOPs (2 * multiply-accumulates) of ONE example, given the shape of each input the
    model is called with, without the batch axis."""
    ...


def dense_flops(in_features: int, out_features: int) -> float:
  """FLOPs of one Dense layer on one example: 2 * MACs (bias not counted)."""
  return 2.0 * in_features * out_features
