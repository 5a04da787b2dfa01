"""int8 quantization through qwix: post-training (PTQ) of a trained model, and quantization-aware
training (QAT) as the config option `quantization='int8_qat'`.

Both use the same rule, so a QAT run trains exactly the model that PTQ of its checkpoint makes:
every Dense and convolution kernel (a `dot_general`, `einsum` or `conv_general_dilated` with a
parameter operand) becomes int8, symmetric, with one float32 scale per output channel (absmax
calibration: scale = max|w| / 127.5, qwix's int8 bound). Activations stay float32: the int8 model
computes with its kernels dequantized (q * scale). Post-training quantization also stores every
embedding table (nn.Embed's and the learned position table, the 2-D params named 'embedding') as
int8 with one scale per row, read back as float32 on the way into the model (qwix intercepts no
table look-up); QAT leaves them float32. Biases, LayerNorm and BatchNorm stay float32.

The command-line tool: `python -m jaxmodels.quantize --workdir=DIR` (quantize/__main__.py).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
from typing import Any

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

QUANTIZED_DIR = "quantized"  # DIR/quantized/ beside DIR/checkpoints/
WEIGHTS_FILE = "weights.npz"
META_FILE = "meta.json"
RESULTS_FILE = "quantize.json"  # contract: DIR/quantize.json


class QuantizeError(ValueError):
  """A model, workdir or quantized file that cannot be quantized or read; says what is valid."""


def _families() -> dict[type, str]:
  """The model classes whose quantization is tested, with the experiments that build them."""
  from jaxmodels.models.cnn import CNN
  from jaxmodels.models.mlp import MLP
  from jaxmodels.models.transformer import GPT

  return {MLP: "mnist_mlp, digits_mlp", CNN: "fashion_mnist_cnn", GPT: "shakespeare_gpt"}


def check_supported(model: nn.Module, what: str = "this model") -> None:
  """Raises QuantizeError unless `model` is of a family whose int8 quantization is tested."""
  families = _families()
  cls = getattr(type(model), "_unquantized_type", type(model))
  valid = "; ".join(f"{c.__name__} ({names})" for c, names in families.items())
  if not issubclass(cls, tuple(families)):
    raise QuantizeError(
        f"{what} is a {cls.__name__}, which int8 quantization does not support. Supported "
        f"models (experiments): {valid}."
    )
  if getattr(model, "scan_layers", False):
    raise QuantizeError(
        f"{what} stacks its layers in one nn.scan (config.model.scan_layers=True), which int8 "
        "quantization does not support; train with --config.model.scan_layers=False."
    )


def rules() -> list[Any]:
  """The qwix rules of int8 quantization (the module docstring says what they do). The first
  keeps qwix off the embedding modules (nn.Embed named '*_embed'): a tied output head reads the
  table transposed (`attend`), which qwix cannot store as a kernel; `quantize_rows` stores it."""
  import qwix

  return [
      qwix.QuantizationRule(module_path=r"(.*/)?[^/]*_embed"),
      qwix.QuantizationRule(weight_qtype=jnp.int8),
  ]


def _ptq_provider() -> Any:
  """qwix's PTQ provider with int8-weight, float32-input convolutions like its Dense layers.

  qwix's own PTQ convolution quantizes its input to int8 too (it refuses a rule without), and
  that int8 x int8 convolution ran 15x slower than float32 on this 2-core CPU (Fashion-MNIST CNN
  eval, 2026-12-02): XLA:CPU has no fast int8 convolution. Private qwix names are used here
  (qwix 0.1.8: ptq.WithAux, ptq.create_quantized_param, conv_general.get_how_to_quantize).
  """
  import qwix
  from qwix._src.core import conv_general
  from qwix._src.providers import ptq
  from qwix._src.utils import flax_util

  class Provider(qwix.PtqProvider):
    def conv_general_dilated(
        self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
        dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
        preferred_element_type=None, out_sharding=None,
    ):  # fmt: skip
      conv = functools.partial(
          jax.lax.conv_general_dilated,
          window_strides=window_strides,
          padding=padding,
          lhs_dilation=lhs_dilation,
          rhs_dilation=rhs_dilation,
          dimension_numbers=dimension_numbers,
          feature_group_count=feature_group_count,
          batch_group_count=batch_group_count,
          precision=precision,
          preferred_element_type=preferred_element_type,
          out_sharding=out_sharding,
      )
      rule, _ = self._get_current_rule_and_op_id("conv_general_dilated")
      if rule is None or rule.weight_qtype is None:
        return conv(lhs, rhs)
      if not isinstance(rhs, ptq.WithAux):  # init: the float32 kernel becomes int8 + scales
        numbers = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        how = conv_general.get_how_to_quantize(
            dimension_numbers=numbers,
            for_lhs=False,
            qtype=rule.weight_qtype,
            calibration_method=rule.weight_calibration_method,
        )
        rhs = ptq.create_quantized_param(flax_util.find_param(rhs), rhs, how)
      return conv(lhs, qwix.dequantize(rhs.array).astype(lhs.dtype))

  return Provider(rules())


def library() -> str:
  """The quantization library and its version, as recorded with a quantized model."""
  import qwix

  return f"qwix {qwix.__version__}"


def for_training(model: nn.Module, config: ml_collections.ConfigDict) -> nn.Module:
  """`model` as config.quantization trains it: unchanged for "", with int8 fake quantization of
  the forward pass (straight-through gradients, float32 parameters) for "int8_qat"."""
  if not config.get("quantization", ""):  # config.check allows "" and "int8_qat"
    return model
  import qwix

  from jaxmodels.train import config as config_lib  # here: the engine imports this module

  try:
    check_supported(model, "config.quantization='int8_qat': the model")
  except QuantizeError as e:  # the experiments report a ConfigError as one paragraph
    raise config_lib.ConfigError(str(e)) from None
  return qwix.quantize_model(_plain_ops(model), qwix.QtProvider(rules()))


def ptq_model(model: nn.Module) -> nn.Module:
  """`model` running on int8 weights: applied to variables from `quantize_variables`."""
  check_supported(model)
  qmodel = _qwix_ptq(model)
  # The int8 embedding rows are dequantized as the params enter the model (no extra nesting);
  # mutable so that init (generate sizes its cache with one) can still create params.
  reading = nn.map_variables(type(qmodel), "params", trans_in_fn=_dequantize_rows, mutable=True)
  fields = {f.name: getattr(qmodel, f.name) for f in dataclasses.fields(qmodel) if f.init}
  return reading(**{k: v for k, v in fields.items() if k not in ("parent", "name")})


def _qwix_ptq(model: nn.Module) -> nn.Module:
  import qwix

  return qwix.quantize_model(_plain_ops(model), _ptq_provider())


def _is_embedding(path: Any, leaf: Any) -> bool:
  name = jax.tree_util.keystr(path[-1:])
  return name == "['embedding']" and getattr(leaf, "ndim", 0) == 2 and not _is_quantized(leaf)


def quantize_rows(params: Any) -> Any:
  """`params` with every embedding table int8, one absmax scale per row (qwix QArray)."""
  import qwix
  from qwix._src.providers import ptq  # WithAux: qwix's box of a quantized kernel

  def leaf(path, x):
    if isinstance(x, ptq.WithAux) or not _is_embedding(path, x):
      return x
    return qwix.quantize(x, jnp.int8, channelwise_axes=[0])

  return jax.tree_util.tree_map_with_path(leaf, params, is_leaf=_is_int8_leaf)


def _dequantize_rows(params: Any) -> Any:
  """The int8 embedding rows of `params` as float32 (qvalue * scale); kernels stay int8."""
  import qwix

  dequantize_bare = lambda x: qwix.dequantize(x) if _is_quantized(x) else x
  return jax.tree_util.tree_map(dequantize_bare, params, is_leaf=_is_int8_leaf)


def _is_int8_leaf(x: Any) -> bool:
  """A quantized kernel (qwix WithAux, left whole) or a bare int8 table (QArray)."""
  from qwix._src.providers import ptq  # WithAux: qwix's box of a quantized kernel

  return isinstance(x, ptq.WithAux) or _is_quantized(x)


def _plain_ops(model: nn.Module) -> nn.Module:
  """`model` calling jax.lax's ops itself, where qwix intercepts them: the CNN's faster
  convolution gradient (a jax.custom_vjp) hides its kernel from qwix."""
  return model.clone(fast_conv_grad=False) if hasattr(model, "fast_conv_grad") else model


def abstract_variables(model: nn.Module, model_args: tuple[Any, ...]) -> Any:
  """The shapes of the int8 variables of the float32 `model` for inputs like `model_args` (no
  computation): quantized kernels are qwix WithAux(QArray(qvalue int8, scale float32)) leaves,
  embedding tables QArray leaves."""
  shapes = _qwix_abstract(model, model_args)
  return {**shapes, "params": jax.eval_shape(quantize_rows, shapes["params"])}


def _qwix_abstract(model: nn.Module, model_args: tuple[Any, ...]) -> Any:
  init = functools.partial(_qwix_ptq(model).init, train=False)
  return nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0), *model_args))


def quantize_variables(
    model: nn.Module, variables: dict[str, Any], model_args: tuple[Any, ...]
) -> tuple[nn.Module, dict[str, Any]]:
  """(int8 model, its variables): the float32 `variables` of `model` with every weight that the
  rules match, and every embedding table, quantized; `model_args` is one batch of model inputs
  (only its shapes are read)."""
  import qwix

  qmodel = ptq_model(model)
  abstract = _qwix_abstract(model, model_args)
  params = jax.tree_util.tree_map(jnp.asarray, nn.meta.unbox(variables["params"]))  # host arrays
  params = quantize_rows(qwix.quantize_params(params, abstract["params"]))
  if not num_quantized(params):
    raise QuantizeError(
        f"no weight of this {type(model).__name__} matched the int8 rules (no Dense or "
        "convolution kernel): nothing to quantize."
    )
  return qmodel, {**variables, "params": params}


def _is_quantized(x: Any) -> bool:
  import qwix

  return isinstance(x, qwix.QArray)


def num_quantized(tree: Any) -> int:
  """How many int8 arrays (qwix QArray) `tree` holds."""
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=_is_quantized)
  return sum(_is_quantized(x) for x in leaves)


def dequantize(tree: Any) -> Any:
  """`tree` with each int8 array as float32 again (qvalue * scale): the weights the int8 model
  computes with. For checks and for reading; the int8 model never needs it."""
  import qwix
  from qwix._src.providers import ptq  # WithAux: qwix's box of a quantized param

  def leaf(x):
    if isinstance(x, ptq.WithAux):
      x = x.array
    return qwix.dequantize(x) if _is_quantized(x) else x

  return jax.tree_util.tree_map(
      leaf, tree, is_leaf=lambda x: isinstance(x, (ptq.WithAux, qwix.QArray))
  )


def named_arrays(tree: Any) -> dict[str, np.ndarray]:
  """Every array of `tree` by its path ("['params']['Dense_0']['kernel'].array.qvalue")."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def npz_bytes(tree: Any) -> bytes:
  """The arrays of `tree` as an uncompressed .npz: the format DIR/quantized/ stores."""
  buffer = io.BytesIO()
  np.savez(buffer, **named_arrays(tree))
  return buffer.getvalue()


@dataclasses.dataclass
class Quantized:
  """An int8 model and its variables, as saved in DIR/quantized/."""

  model: nn.Module
  variables: dict[str, Any]
  meta: dict[str, Any]


def save(workdir: str, variables: dict[str, Any], meta: dict[str, Any]) -> int:
  """Writes DIR/quantized/{weights.npz, meta.json}, each file replaced whole; returns the
  weights' bytes. Never touches DIR/checkpoints/."""
  directory = epath.Path(workdir, QUANTIZED_DIR)
  directory.mkdir(parents=True, exist_ok=True)
  data = npz_bytes(variables)
  _replace(directory / WEIGHTS_FILE, data)
  _replace(directory / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
  return len(data)


def _replace(path: epath.Path, data: bytes) -> None:
  """Writes `path` through a temporary file locally (a reader never sees half of it), in one
  upload on gs://."""
  if "://" in str(path):
    path.write_bytes(data)
    return
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def load(workdir: str, model: nn.Module, model_args: tuple[Any, ...]) -> Quantized:
  """The int8 model of `model`'s family with the variables saved in DIR/quantized/ by
  `python -m jaxmodels.quantize`; `model_args` is one batch of inputs (shapes only)."""
  directory = epath.Path(workdir, QUANTIZED_DIR)
  weights = directory / WEIGHTS_FILE
  redo = f"run python -m jaxmodels.quantize --workdir={workdir} to write it"
  if not weights.exists():
    raise FileNotFoundError(f"{weights} does not exist: {redo}.")
  qmodel = ptq_model(model)
  abstract = abstract_variables(model, model_args)
  with weights.open("rb") as f:
    try:
      saved = dict(np.load(io.BytesIO(f.read())))
    except (ValueError, OSError) as e:
      raise QuantizeError(f"{weights} is not a readable .npz ({e}): {redo} again.") from None
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  arrays = []
  for path, want in leaves:
    name = jax.tree_util.keystr(path)
    got = saved.get(name)
    if got is None or got.shape != want.shape or got.dtype != want.dtype:
      found = "missing" if got is None else f"{got.dtype}{list(got.shape)}"
      raise QuantizeError(
          f"{weights} does not match this workdir's model: {name} should be "
          f"{want.dtype}{list(want.shape)}, found {found}. The model's config changed after "
          f"quantizing; {redo} again."
      )
    arrays.append(jnp.asarray(got))
  meta_path = directory / META_FILE
  meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
  return Quantized(qmodel, jax.tree_util.tree_unflatten(treedef, arrays), meta)
