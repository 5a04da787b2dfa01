"""Published GPT sizes: parameter counts from shapes alone (jax.eval_shape, nothing allocated)
equal Hugging Face's GPT-2 checkpoints exactly and the GPT-3 paper's Table 2.1 within 3%; the
gpt3 experiment builds them from --config.model.size."""

import math

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from experiments import gpt3
from jaxmodels.models.transformer import GPT, GPT_SIZES, gpt_size
from jaxmodels.train.config import ConfigError

# Parameter counts of Hugging Face's gpt2, gpt2-medium, gpt2-large and gpt2-xl (tied head).
HUGGING_FACE = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}
# GPT-3 paper (Brown et al. 2020, Table 2.1): the stated n_params, and what these shapes give.
PAPER = {
    "gpt3-small": (125e6, 125_226_240),
    "gpt3-medium": (350e6, 355_871_744),
    "gpt3-large": (760e6, 760_300_032),
    "gpt3-xl": (1.3e9, 1_315_723_264),
    "gpt3-2.7b": (2.7e9, 2_651_553_280),
    "gpt3-6.7b": (6.7e9, 6_658_404_352),
    "gpt3-13b": (13e9, 12_853_386_240),
    "gpt3-175b": (175e9, 174_604_259_328),
}


def abstract_params(model):
  ids = jnp.zeros((1, 8), jnp.int32)
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), ids))["params"]


def count(model):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(model)))


def test_the_sizes_are_the_contract_names():
  assert list(GPT_SIZES) == list(HUGGING_FACE) + list(PAPER)


@pytest.mark.parametrize("name", sorted(HUGGING_FACE))
def test_gpt2_parameter_counts_equal_hugging_face(name):
  assert count(GPT(**GPT_SIZES[name], scan_layers=True)) == HUGGING_FACE[name]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_gpt3_parameter_counts_are_within_3_percent_of_the_paper(name):
  stated, computed = PAPER[name]
  assert count(GPT(**GPT_SIZES[name], scan_layers=True)) == computed
  assert abs(computed / stated - 1) < 0.03


def test_scanned_and_unrolled_layers_have_the_same_parameters():
  unrolled = GPT(**GPT_SIZES["gpt2"])
  assert count(unrolled) == HUGGING_FACE["gpt2"]
  scanned = traverse_util.flatten_dict(abstract_params(GPT(**GPT_SIZES["gpt2"], scan_layers=True)))
  assert scanned[("blocks", "block", "self_attn", "qkv", "kernel")].shape == (12, 768, 3, 12, 64)
  assert ("head",) not in {k[:1] for k in scanned}  # tied to the token embedding


def test_sizes_use_gpt2_architecture_options():
  for name, size in GPT_SIZES.items():
    assert size["vocab_size"] == 50257, name
    assert size["mlp_dim"] == 4 * size["model_dim"], name
    assert size["model_dim"] % size["num_heads"] == 0, name
    assert size["max_len"] == (1024 if name.startswith("gpt2") else 2048), name
    assert size["tie_embeddings"] and size["use_bias"] and size["gelu_approximate"], name
    assert size["layer_norm_epsilon"] == 1e-5, name


def test_an_unknown_size_names_the_valid_ones():
  with pytest.raises(ValueError, match="gpt3-175b") as error:
    gpt_size("gpt3-1t")
  assert "gpt3-1t" in str(error.value) and "gpt2-medium" in str(error.value)
  size = gpt_size("gpt2")
  size["num_layers"] = 1
  assert GPT_SIZES["gpt2"]["num_layers"] == 12


def gpt3_config(**model):
  config = gpt3.get_config()
  config.update(dict(synthetic_data=True))
  config.model.update(model)
  return config


def test_the_gpt3_experiment_fills_a_named_size():
  config = gpt3_config(size="gpt3-xl", scan_layers=True, remat="full", dtype="bfloat16")
  data = gpt3.get_data(config)
  assert data.info["vocab_size"] == 50257 and data.info["block_size"] == 2048
  model = gpt3.get_model(config, data.info)
  for key, value in GPT_SIZES["gpt3-xl"].items():
    assert getattr(model, key) == value, key
  assert model.scan_layers and model.remat == "full"
  assert model.dtype == jnp.bfloat16 and model.param_dtype == jnp.float32
  small = gpt3.get_model(gpt3_config(), {"vocab_size": 84})
  assert (small.num_layers, small.model_dim, small.max_len) == (4, 128, 128)


@pytest.mark.parametrize(
    "model,match",
    [
        (dict(size="gpt4"), "gpt3-175b"),
        (dict(dtype="float16"), "bfloat16"),
        (dict(remat="some"), "dots_saveable"),
    ],
)
def test_the_gpt3_experiment_names_what_is_valid(model, match):
  with pytest.raises(ConfigError, match=match):
    gpt3.get_model(gpt3_config(**model), {"vocab_size": 84})


def test_the_gpt3_context_is_at_most_max_len():
  config = gpt3_config()
  config.block_size = 256
  with pytest.raises(ConfigError, match="max_len=128"):
    gpt3.get_data(config)
