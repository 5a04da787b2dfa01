"""Pretrained weights in and out of jaxmodels' models.

torchvision ResNet-18/34/50 (resnet_torch): `load_torchvision(path, state dict or
'torchvision:<arch>[:<weights>]', arch)` -> (ResNet, variables); `save_torchvision(variables,
path, arch)` writes a state dict torchvision's `load_state_dict` accepts.
Hugging Face GPT-2 (gpt2_hf): `load_huggingface(directory or 'hf:NAME')` -> (GPT, variables);
`save_huggingface(module, variables, directory)` writes config.json + model.safetensors for
`transformers.GPT2LMHeadModel.from_pretrained`.

Importing this package needs neither torch, torchvision nor transformers: .safetensors files are
read with `safetensors`, and torch is imported only to read or write .pth/.bin files and to
resolve `torchvision:` sources.
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
from jaxmodels.models.convert.resnet_torch import (
    TORCHVISION_ARCHS,
    TORCHVISION_PREFIX,
    infer_torchvision_arch,
    load_torchvision,
    resolve_torchvision,
    save_torchvision,
    torchvision_state_dict,
    torchvision_weights_file,
)

__all__ = [
    "TORCHVISION_ARCHS",
    "TORCHVISION_PREFIX",
    "ConvertError",
    "gpt2_config",
    "gpt_from_config",
    "gpt_params",
    "hf_state_dict",
    "infer_torchvision_arch",
    "load_huggingface",
    "load_tokenizer",
    "load_torchvision",
    "read_state_dict",
    "resolve_huggingface",
    "resolve_torchvision",
    "save_huggingface",
    "save_torchvision",
    "torchvision_state_dict",
    "torchvision_weights_file",
]
