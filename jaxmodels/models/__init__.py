"""Pure-function flax.linen models: `model.init(rng, *inputs)` then `model.apply(variables, ...)`.

Every module takes `dtype` (compute) and `param_dtype`, and `train: bool` in `__call__`
(dropout draws from the 'dropout' rng; BatchNorm updates 'batch_stats' when training).
"""

import flax.linen as nn

from jaxmodels.models.attention import (
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    SinusoidalPositionalEncoding,
    causal_mask,
    dot_product_attention,
    padding_mask,
    sinusoidal_encoding,
)
from jaxmodels.models.cnn import CNN
from jaxmodels.models.common import HasFlops
from jaxmodels.models.mlp import MLP
from jaxmodels.models.resnet import (
    BasicBlock,
    BottleneckBlock,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
)
from jaxmodels.models.rnn import Recurrent, RNNClassifier, RNNLanguageModel, SimpleRNNCell, sample
from jaxmodels.models.transformer import (
    GPT,
    GPT_SIZES,
    EncoderDecoder,
    TransformerEncoder,
    beam_search_decode,
    generate,
    greedy_decode,
)

# LSTM and GRU cells are flax's; Recurrent(cell='lstm'|'gru'|'rnn') runs any of them over time.
LSTMCell = nn.OptimizedLSTMCell
GRUCell = nn.GRUCell

__all__ = [
    "BasicBlock",
    "BottleneckBlock",
    "CNN",
    "EncoderDecoder",
    "GPT",
    "GPT_SIZES",
    "GRUCell",
    "HasFlops",
    "LSTMCell",
    "LearnedPositionalEmbedding",
    "MLP",
    "MultiHeadAttention",
    "RNNClassifier",
    "RNNLanguageModel",
    "Recurrent",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "SimpleRNNCell",
    "SinusoidalPositionalEncoding",
    "TransformerEncoder",
    "beam_search_decode",
    "causal_mask",
    "dot_product_attention",
    "generate",
    "greedy_decode",
    "padding_mask",
    "sample",
    "sinusoidal_encoding",
]
