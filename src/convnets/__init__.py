"""convnets: build, train, transfer-learn and analyse convolutional image classifiers."""

__version__ = "0.1.0"

from .models import create_model, get_model_cfg, list_models  # noqa: E402

__all__ = ["__version__", "create_model", "get_model_cfg", "list_models"]
