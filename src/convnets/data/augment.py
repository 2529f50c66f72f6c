"""Augmentation: named ops, presets, and the train / eval transforms (ops on torchvision v2, augment_ops.py).

An augmentation *spec* is any of

* a preset name: ``"none"``, ``"light"``, ``"standard"``, ``"strong"`` (see ``PRESETS``);
* a comma-separated string or a list of ops, each ``name`` or ``name:param`` -- presets may appear
  inside and are expanded: ``"light,vflip"``, ``["hflip", "rotate:15", "pca:0.1"]``;
* a dict ``{name: param}`` (``None`` or ``True`` = the op's default parameter).

Ops (parameter and its default in brackets):

=============  =========================================================  ====================================
op             what                                                       built on
=============  =========================================================  ====================================
hflip [0.5]    mirror left-right with probability p                       v2.RandomHorizontalFlip
vflip [0.5]    mirror top-bottom with probability p                       v2.RandomVerticalFlip
crop [0]       random H x W crop of the base image (param: zero padding)  v2.RandomCrop
rrc [0.25]     random-resized crop, area scale in [param, 1]              v2.RandomResizedCrop
rotate [15]    rotation by a uniform angle in [-param, param] degrees     v2.RandomRotation
shear [10]     shear by up to param degrees along x and y                 v2.RandomAffine
elastic [50]   local warping, displacement strength alpha (sigma 5)       v2.ElasticTransform
jitter [0.2]   brightness, contrast (and saturation for RGB) +-param      v2.ColorJitter
colorshift     per-channel offsets uniform in [-param, param] [0.1]       ColorShift (augment_ops)
pca [0.1]      AlexNet PCA colour augmentation, alpha ~ N(0, param)       PCAColor (augment_ops)
mixup [0.4]    blend pairs of images and their labels, lambda ~ Beta(a, a)  v2.MixUp (on the batch)
cutmix [1.0]   paste a box of another image, labels by area, Beta(a, a)   v2.CutMix (on the batch)
=============  =========================================================  ====================================

Geometric ops run first, in the order given, on the uint8 base image (cheap); if none of them is a
crop, a centre crop to H x W comes first. Then the image becomes float in [0, 1], the colour ops run in
the order given, and it is normalised. ``rotate``, ``shear`` and ``elastic`` fill uncovered corners
with black. The colour ops that add (``colorshift``, ``pca``) do not clip, exactly as the paper's
formula; ``jitter`` clips to [0, 1] as torchvision does.

The resize mode (``decode.py``) changes some ops, so that training sees the geometry evaluation
uses: in ``letterbox`` mode ``rrc:p`` is a random scale of the whole canvas by a factor in
[sqrt(p), 1] and a shift within the room that frees (``augment_ops.RandomPlace``), so the picture
is never cut, and ``rotate``/``shear``/``crop`` padding/``rrc`` fill uncovered areas with the
letterbox colour instead of black. In ``center-crop`` and ``resize`` (squash) modes ``rrc`` is
torchvision's random-resized crop of the base image (in squash mode: a random region stretched to
the input, the mode's own geometry).

``mixup`` and ``cutmix`` are *batch* ops: the data layer ignores them (``sample_ops``); the trainer
applies them to each training batch after the per-image ops (``train/mixing.py``) and trains on the
mixed, soft labels. Both given: each batch uses one of them, chosen at random. They are never part of
a preset.

Randomness comes only from torch's RNG, which the loaders seed per sample (see ``loaders.py``), so
a seed reproduces the same augmented epochs whatever the number of worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

PRESETS: dict[str, list[str]] = {
    "none": [],
    # The course's Keras augmenter is RandomFlip("horizontal") + RandomRotation(0.2); 0.2 there is a
    # fraction of a full turn (+-72 degrees). "light" keeps the flip and a milder +-15 degrees;
    # write "hflip,rotate:72" for the course's exact range.
    "light": ["hflip", "rotate:15"],
    "standard": ["rrc", "hflip", "jitter"],
    "strong": ["rrc", "hflip", "rotate", "shear", "elastic", "jitter", "pca"],
}


@dataclass(frozen=True)
class OpInfo:
    kind: str  # "geometric" or "colour"
    default: float
    doc: str


# The ops themselves (torchvision v2 transforms) are built by augment_ops.build_op.
OPS: dict[str, OpInfo] = {
    "hflip": OpInfo("geometric", 0.5, "mirror left-right"),
    "vflip": OpInfo("geometric", 0.5, "mirror top-bottom"),
    "crop": OpInfo("geometric", 0, "random crop (param: padding)"),
    "rrc": OpInfo("geometric", 0.25, "random-resized crop (param: min area scale)"),
    "rotate": OpInfo("geometric", 15, "rotation (degrees)"),
    "shear": OpInfo("geometric", 10, "shear (degrees)"),
    "elastic": OpInfo("geometric", 50, "local warping (alpha)"),
    "jitter": OpInfo("colour", 0.2, "brightness/contrast/saturation jitter"),
    "colorshift": OpInfo("colour", 0.1, "per-channel offsets"),
    "pca": OpInfo("colour", 0.1, "AlexNet PCA colour (sigma)"),
    # Batch ops (the trainer's, train/mixing.py); alphas as fastai's MixUp(0.4) and CutMix(1.0).
    "mixup": OpInfo("batch", 0.4, "MixUp on the batch (Beta alpha)"),
    "cutmix": OpInfo("batch", 1.0, "CutMix on the batch (Beta alpha)"),
}
CROP_OPS = frozenset({"crop", "rrc"})


def parse_ops(spec: str | Sequence[str] | Mapping[str, Any] | None) -> list[tuple[str, float]]:
    """Normalise an augmentation spec to ``[(op, param), ...]``; ``ValueError`` names a bad entry."""
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        items: list[tuple[str, Any]] = list(spec.items())
    else:
        if isinstance(spec, str):
            spec = [part for part in spec.split(",") if part.strip()]
        items = []
        for entry in spec:
            if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
                items.append(entry)  # already parsed: (name, param)
                continue
            if not isinstance(entry, str):
                raise ValueError(f"augmentation op must be a string like 'rotate:15', got {entry!r}")
            name, _, param = entry.strip().partition(":")
            items.append((name.strip(), param.strip() or None))
    ops: list[tuple[str, float]] = []
    for name, param in items:
        key = name.lower()
        if key in PRESETS:
            if param not in (None, True):
                raise ValueError(f"preset {name!r} takes no parameter")
            ops.extend(parse_ops(PRESETS[key]))
            continue
        if key not in OPS:
            raise ValueError(
                f"unknown augmentation {name!r}; presets: {', '.join(PRESETS)}; ops: {', '.join(OPS)}"
            )
        if param is None or param is True:
            value = float(OPS[key].default)
        else:
            try:
                value = float(param)
            except (TypeError, ValueError):
                raise ValueError(
                    f"augmentation {name!r}: parameter must be a number, got {param!r}"
                ) from None
        if value < 0:
            raise ValueError(f"augmentation {name!r}: parameter must be >= 0, got {value}")
        if key in ("hflip", "vflip", "rrc") and value > 1:
            raise ValueError(f"augmentation {name!r}: parameter must be in [0, 1], got {value}")
        if OPS[key].kind == "batch" and value == 0:
            raise ValueError(f"augmentation {name!r}: the Beta distribution's alpha must be > 0")
        ops.append((key, value))
    return ops


def sample_ops(spec: Any) -> list[tuple[str, float]]:
    """The per-image ops of a spec (what the data layer applies)."""
    return [(n, p) for n, p in parse_ops(spec) if OPS[n].kind != "batch"]


def batch_ops(spec: Any) -> list[tuple[str, float]]:
    """The batch ops of a spec (``mixup``, ``cutmix``: what the trainer applies)."""
    return [(n, p) for n, p in parse_ops(spec) if OPS[n].kind == "batch"]


def needs_pca(spec: Any) -> bool:
    return any(name == "pca" for name, _ in parse_ops(spec))


def build_train_transform(
    spec: Any,
    image_size: tuple[int, int],
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    pca: tuple[torch.Tensor, torch.Tensor] | None = None,
    resize: str = "center-crop",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (C, H', W') base image -> augmented, normalised float (C, H, W); ``resize`` is the
    run's resize mode (see the module docstring); batch ops are skipped."""
    ops = sample_ops(spec)
    if not ops:  # no augmentation: the eval transform, without importing torchvision
        return build_eval_transform(image_size, mean, std)
    from .augment_ops import compose  # start-up: torchvision (~1 s) only when a run augments

    geometric = [(n, p) for n, p in ops if OPS[n].kind == "geometric"]
    colour = [(n, p) for n, p in ops if OPS[n].kind == "colour"]
    center_crop = not any(n in CROP_OPS for n, _ in geometric)
    return compose(
        geometric, colour, tuple(image_size), in_chans, list(mean), list(std), pca, resize, center_crop
    )


def build_eval_transform(
    image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 base image -> centre H x W crop (no-op for ``resize``/``letterbox`` bases, which are
    already H x W), float, normalised."""
    return CenterCropNormalize(image_size, mean, std)


class CenterCropNormalize:
    """uint8 (C, H', W') -> centre H x W crop, float in [0, 1], normalised: what v2.CenterCrop +
    ToDtype(scale=True) + Normalize compute (the same crop offsets and zero padding of a smaller image),
    in plain torch so that a run without augmentation never imports torchvision."""

    def __init__(self, image_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = (int(image_size[0]), int(image_size[1]))
        self.mean = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(list(std), dtype=torch.float32)[:, None, None]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        height, width = image.shape[-2:]
        if height < h or width < w:  # as torchvision: pad with zeros to the size, then crop
            ph, pw = max(h - height, 0), max(w - width, 0)
            pad = (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2)
            image = torch.nn.functional.pad(image, pad)
            height, width = image.shape[-2:]
        top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))
        image = image[..., top : top + h, left : left + w]
        return (image.float().div_(255.0) - self.mean) / self.std

    def __repr__(self) -> str:
        return f"CenterCropNormalize(size={self.size})"
