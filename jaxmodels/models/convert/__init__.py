"""Pretrained weights in and out of jaxmodels' models.

Hugging Face GPT-2 (gpt2_hf): `load_huggingface(directory or 'hf:NAME')` -> (GPT, variables);
`save_huggingface(module, variables, directory)` writes config.json + model.safetensors for
`transformers.GPT2LMHeadModel.from_pretrained`. Importing this package needs neither torch nor
transformers: .safetensors files are read with `safetensors`, and torch is imported only to read a
pytorch_model.bin.
"""

from jaxmodels.models.convert.errors import ConvertError
from jaxmodels.models.convert.gpt2_hf import (
    gpt2_config,
    gpt_from_config,
    gpt_params,
    hf_state_dict,
    load_huggingface,
    load_tokenizer,
    read_state_dict,
    resolve_huggingface,
    save_huggingface,
)

__all__ = [
    "ConvertError",
    "gpt2_config",
    "gpt_from_config",
    "gpt_params",
    "hf_state_dict",
    "load_huggingface",
    "load_tokenizer",
    "read_state_dict",
    "resolve_huggingface",
    "save_huggingface",
]
