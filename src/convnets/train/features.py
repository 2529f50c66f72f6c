"""Frozen-base speed-up: run the frozen base once and train the head on the cached pooled features.

While the base is frozen, every epoch would push each image through the same fixed function; its
output (``forward_head(forward_features(x), pre_logits=True)``, the vector entering the last
Linear) can be computed once. With augmentation on, ``views`` augmented copies of each image are
extracted, so the head still sees variety. The head then trains on tensors: for a 1,280-wide
MobileNetV2 vector and two classes that is a few thousand multiply-adds per image instead of
hundreds of millions.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    keys_per_view: Sequence[Sequence],
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    collate_fn=None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
    desc: str = "features",
    progress: bool = True,
    on_skipped=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of every key of every view, ``(sum of len(keys), num_features)`` float32 on
    CPU, and their labels.

    A key is whatever ``dataset[key]`` takes: the data layer's ``(index, sample_seed)`` pairs make each
    augmented view reproducible. The global RNG is re-seeded with ``seed`` for the extraction (for
    datasets that augment from it) and restored afterwards, so training's random stream is unaffected.
    """
    was_training = model.training
    model.eval()
    saved_rng = torch.get_rng_state()
    torch.manual_seed(seed)
    loaders = [
        DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=list(keys),
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=device.type == "cuda",
        )
        for keys in keys_per_view
    ]
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    )
    bar = tqdm(
        total=sum(len(loader) for loader in loaders),
        desc=desc,
        leave=False,
        disable=not progress,
        unit="batch",
    )
    try:
        for loader in loaders:
            for batch in loader:
                x, y = batch[0], batch[1]
                if len(batch) > 2 and batch[2] and on_skipped is not None:
                    on_skipped(batch[2])
                x = x.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast:
                    f = model.forward_head(model.forward_features(x), pre_logits=True)
                feats.append(f.float().cpu())
                labels.append(y.cpu())
                bar.update()
    finally:
        bar.close()
        torch.set_rng_state(saved_rng)
        model.train(was_training)
    if not feats:
        return torch.empty(0, getattr(model, "num_features", 0)), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels).long()
