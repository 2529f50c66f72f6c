"""The mean/std a loaded model is fed (``model.pretrained_cfg``): explicit values, a named
normalisation, or the checkpoint's own, fitted to the model's number of input channels."""

from __future__ import annotations

from typing import Any

from ..models.base import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD

NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "inception": (INCEPTION_MEAN, INCEPTION_STD)}


def effective_normalization(
    source: tuple[tuple[float, ...], tuple[float, ...]],
    in_chans: int,
    mean: Any = None,
    std: Any = None,
    normalize: str | None = None,
) -> tuple[list[float], list[float]]:
    """mean/std the model should be fed: explicit values > ``normalize`` > the checkpoint's own."""
    if normalize is not None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
        source = NORMALIZATIONS[normalize]
    m = list(mean) if mean is not None else list(source[0])
    s = list(std) if std is not None else list(source[1])
    if len(m) != in_chans and len(m) == 3 and in_chans == 1:
        # filters summed over RGB see grey = R = G = B: one averaged statistic per channel
        m, s = [sum(m) / 3], [sum(s) / 3]
    elif len(m) != in_chans and len(m) in (1, 3):
        m = (m * in_chans)[:in_chans] if len(m) == 1 else [m[i % 3] for i in range(in_chans)]
        s = (s * in_chans)[:in_chans] if len(s) == 1 else [s[i % 3] for i in range(in_chans)]
    if len(m) != in_chans or len(s) != in_chans:
        raise ValueError(f"mean/std need {in_chans} values (one per input channel), got {m} / {s}")
    return [float(v) for v in m], [float(v) for v in s]
