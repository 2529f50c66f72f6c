"""Training: ``convnets.train(...)``, the :class:`Trainer` loop, transfer learning, checkpoints, DDP.

``train(data, model=..., out=..., **options) -> RunResult`` is what ``convnets train`` calls.
"""

from .api import train
from .checkpoint import atomic_torch_save, atomic_write, load_checkpoint
from .options import TrainConfigError, TrainOptions
from .trainer import NonFiniteLossError, RunResult, Trainer, TrainingInterrupted
from .transfer import Phase, apply_phase, choose_regime, plan_phases, set_bn_modes

__all__ = [
    "NonFiniteLossError",
    "Phase",
    "RunResult",
    "TrainConfigError",
    "TrainOptions",
    "Trainer",
    "TrainingInterrupted",
    "apply_phase",
    "atomic_torch_save",
    "atomic_write",
    "choose_regime",
    "load_checkpoint",
    "plan_phases",
    "set_bn_modes",
    "train",
]
