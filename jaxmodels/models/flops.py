"""Analytic FLOP counts for MFU: XLA's cost analysis counts a scan body once and skips conv
padding, so every model family has a count of its own and this picks the right one."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn

from jaxmodels.models import cnn, mlp, resnet, rnn, transformer


def forward_flops(model: nn.Module, inputs: Sequence[Any]) -> float | None:
  """Forward FLOPs (2 * MACs) of ONE example, given the batched inputs the model is called with.

  `inputs` are arrays or shape-bearing objects (jax.ShapeDtypeStruct) with a leading batch axis.
  Returns None for a model without a count.
  """
  shapes = [tuple(x.shape)[1:] for x in inputs]
  if isinstance(model, mlp.MLP):
    return mlp.mlp_flops(model, shapes[0])
  if isinstance(model, cnn.CNN):
    return cnn.cnn_flops(model, shapes[0])
  if isinstance(model, resnet.ResNet):
    return resnet.resnet_flops(model, shapes[0])
  if isinstance(model, (rnn.RNNClassifier, rnn.RNNLanguageModel)):
    return rnn.forward_flops(model, shapes[0][0])
  if isinstance(model, transformer.EncoderDecoder):
    return transformer.forward_flops(model, (shapes[0][0], shapes[1][0]))
  if isinstance(model, (transformer.GPT, transformer.TransformerEncoder)):
    return transformer.forward_flops(model, shapes[0][0])
  return None

