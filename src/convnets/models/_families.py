"""Imports every family module so their ``@register_model`` decorators run."""

import importlib

FAMILIES = ["lenet", "alexnet", "vgg", "resnet", "cifar_resnet", "inception", "mobilenet", "efficientnet"]

for _family in FAMILIES:  # a missing module is a bug (a typo in FAMILIES): fail loudly
    importlib.import_module(f"{__package__}.{_family}")
