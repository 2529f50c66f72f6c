"""MixUp and CutMix on the training batch (``--augment ...,mixup`` / ``...,cutmix``).

torchvision v2's ``MixUp`` / ``CutMix`` mix each image with its neighbour in the batch (the batch
rolled by one) and return soft labels: one-hot rows blended by the mixing weight (by the pasted
box's area for CutMix). The trainer's ``nn.CrossEntropyLoss`` takes those probabilities as targets,
with ``--label-smoothing`` (applied on top of the mixed labels) and ``--balance loss``'s class
weights (PyTorch's probability-target form: ``-sum_c w_c q_c log p_c`` averaged over the batch).

Randomness: each batch's draw (mixing weight, box, which op) comes from a generator seeded by
(run seed, rank, epoch, batch index), inside ``torch.random.fork_rng`` so it neither reads nor moves
the global RNG. A run resumed from ``last.pt`` (which records the epoch and the batch reached) so
mixes every later batch exactly as the uninterrupted run did.

Training accuracy with mixing is measured against each mixed image's *dominant* label (the class
with the larger share of its soft label); validation never mixes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.augment import batch_ops


class BatchMixer:
    """``(images, labels) -> (mixed images, soft labels)`` for the parsed batch ops of a spec."""

    def __init__(self, ops: list[tuple[str, float]], num_classes: int, seed: int, rank: int = 0) -> None:
        from torchvision.transforms import v2  # start-up: torchvision on first use

        if not ops:
            raise ValueError("BatchMixer needs at least one of mixup, cutmix")
        built = []
        for name, alpha in ops:
            if name == "mixup":
                built.append(v2.MixUp(alpha=alpha, num_classes=num_classes))
            elif name == "cutmix":
                built.append(v2.CutMix(alpha=alpha, num_classes=num_classes))
            else:
                raise ValueError(f"unknown batch augmentation {name!r}")
        self.ops = list(ops)
        self.transform = built[0] if len(built) == 1 else v2.RandomChoice(built)
        self.seed, self.rank = int(seed), int(rank)

    def batch_seed(self, epoch: int, index: int) -> int:
        return (self.seed * 1_000_003 + self.rank * 10_007 + epoch) * 1_000_033 + index

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, epoch: int, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.batch_seed(epoch, index) % 2**63)
            return self.transform(x, y)

    def __repr__(self) -> str:
        return f"BatchMixer({', '.join(f'{n}:{a:g}' for n, a in self.ops)})"


def batch_mixer(augment: Any, num_classes: int, seed: int, rank: int = 0) -> BatchMixer | None:
    """The mixer for an augmentation spec, or None when it names no batch op."""

    ops = batch_ops(augment)
    return BatchMixer(ops, num_classes, seed, rank) if ops else None


def mixed_targets(
    mixer: BatchMixer | None, x: torch.Tensor, y: torch.Tensor, epoch: int, index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inputs, loss target, label for the accuracy)``: unchanged without a mixer; with one, the
    mixed images, their soft labels and each one's dominant label."""
    if mixer is None:
        return x, y, y
    mixed, soft = mixer(x, y, epoch, index)
    return mixed, soft, soft.argmax(1)
