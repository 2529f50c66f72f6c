"""The case-study architectures, one family per module."""

# Each family registers its builders with @register_model when imported: the package imports its
# families (as torchvision's does), the registry imports none of them.
from . import alexnet, cifar_resnet, efficientnet, inception, lenet, mobilenet, resnet, vgg  # noqa: F401
from .base import AuxOutputs, ConvNet, ModelCfg
from .registry import create_model, get_model_cfg, list_models, register_model

__all__ = [
    "AuxOutputs",
    "ConvNet",
    "ModelCfg",
    "create_model",
    "get_model_cfg",
    "list_models",
    "register_model",
]
