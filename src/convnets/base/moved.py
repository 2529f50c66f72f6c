"""Old module paths keep importing: ``import convnets.evaluate`` (the layout before the pipeline
packages) loads ``convnets.deploy.evaluate`` under the old name, with a DeprecationWarning naming the
new home, so a user's script written against an earlier release still runs.

Written by hand because importlib has no alias mechanism; one finder, consulted only for the names
in MOVED_MODULES. Duck-typed rather than derived from ``importlib.abc``, whose import alone cost 8 ms
of `convnets --help` (``python -X importtime``).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from importlib.machinery import ModuleSpec
from types import ModuleType

MOVED_MODULES: dict[str, str] = {
    "convnets.runs": "convnets.base.runs",
    "convnets.predictions": "convnets.base.predictions",
    "convnets.atomic": "convnets.base.atomic",
    "convnets.plots": "convnets.base.plots",
    "convnets.runtime": "convnets.base.runtime",
    "convnets.errors": "convnets.base.errors",
    "convnets.backends": "convnets.base.choices",
    "convnets.calibration": "convnets.trust.calibration",
    "convnets.ood": "convnets.trust.ood",
    "convnets.analysis": "convnets.trust.analysis",
    "convnets.explain": "convnets.trust.explain",
    "convnets.inference": "convnets.accel.inference",
    "convnets.train.bf16_backward": "convnets.accel.bf16_backward",
    "convnets.train.fused_bn_act": "convnets.accel.fused_bn_act",
    "convnets.train.ckernels": "convnets.accel.ckernels",
    "convnets.predictor": "convnets.deploy.predictor",
    "convnets.evaluate": "convnets.deploy.evaluate",
    "convnets.export": "convnets.deploy.export",
    "convnets.exported": "convnets.deploy.engines",
    "convnets.quantize": "convnets.deploy.quantize",
    "convnets.experiments": "convnets.studies.experiments",
    "convnets.compare": "convnets.studies.compare",
    "convnets.pick": "convnets.studies.pick",
}


class _Alias:  # an importlib Loader
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        message = f"{spec.name} moved to {self.new}; import it from there"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)  # the module itself: one object under both names

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its new name


class MovedModuleFinder:  # an importlib MetaPathFinder
    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        return None if new is None else ModuleSpec(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())  # last: real modules always win
