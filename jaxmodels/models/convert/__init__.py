"""Pretrained weights in and out: torchvision ResNets (and their files) <-> jaxmodels variables.

Importing this package needs neither torch nor torchvision; they are imported only to read or
write `.pth` files and to resolve `torchvision:<arch>[:<weights>]` sources.
"""

from jaxmodels.models.convert.errors import ConvertError
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
    "infer_torchvision_arch",
    "load_torchvision",
    "resolve_torchvision",
    "save_torchvision",
    "torchvision_state_dict",
    "torchvision_weights_file",
]
