"""The case-study architectures, one family per module."""

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
