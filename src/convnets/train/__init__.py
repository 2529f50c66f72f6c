"""Training: ``convnets.train(...)``, the :class:`Trainer` loop, transfer learning, checkpoints, DDP.

``train(data, model=..., out=..., **options) -> RunResult`` is what ``convnets train`` calls.
"""

from __future__ import annotations

from ..base.lazy import lazy_exports

# Lazy (PEP 562), like convnets.data: `convnets.train.options` (TrainOptions, the option lists) is
# torch-free, and the CLI builds its parser from it without importing torch through this __init__.
_EXPORTS = {
    "NonFiniteLossError": "trainer",
    "Phase": "transfer",
    "RunResult": "trainer",
    "TrainConfigError": "options",
    "TrainOptions": "options",
    "Trainer": "trainer",
    "TrainingInterrupted": "trainer",
    "apply_phase": "transfer",
    "atomic_torch_save": "checkpoint",
    "choose_regime": "transfer",
    "load_training_state": "checkpoint",
    "plan_phases": "transfer",
    "set_bn_modes": "transfer",
    "train": "api",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
