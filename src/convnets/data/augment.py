"""Augmentation: named ops, presets, and the train / eval transforms built on torchvision v2.

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
colorshift     per-channel offsets uniform in [-param, param] [0.1]       ColorShift (here)
pca [0.1]      AlexNet PCA colour augmentation, alpha ~ N(0, param)       PCAColor (here)
=============  =========================================================  ====================================

Geometric ops run first, in the order given, on the uint8 base image (cheap); if none of them is a
crop, a centre crop to H x W comes first. Then the image becomes float in [0, 1], the colour ops run in
the order given, and it is normalised. ``rotate``, ``shear`` and ``elastic`` fill uncovered corners
with black. The colour ops that add (``colorshift``, ``pca``) do not clip, exactly as the paper's
formula; ``jitter`` clips to [0, 1] as torchvision does.

Randomness comes only from torch's RNG, which the loaders seed per sample (see ``loaders.py``), so
a seed reproduces the same augmented epochs whatever the number of worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

PRESETS: dict[str, list[str]] = {
    "none": [],
    # The course's Keras augmenter is RandomFlip("horizontal") + RandomRotation(0.2); 0.2 there is a
    # fraction of a full turn (+-72 degrees). "light" keeps the flip and a milder +-15 degrees;
    # write "hflip,rotate:72" for the course's exact range.
    "light": ["hflip", "rotate:15"],
    "standard": ["rrc", "hflip", "jitter"],
    "strong": ["rrc", "hflip", "rotate", "shear", "elastic", "jitter", "pca"],
}


class ColorShift(v2.Transform):
    """Add an independent uniform offset in [-max_shift, max_shift] to each channel of a float image.

    torchvision has no per-channel additive shift (ColorJitter scales, and shifts hue), hence this
    small transform.
    """

    def __init__(self, max_shift: float = 0.1) -> None:
        super().__init__()
        if max_shift < 0:
            raise ValueError(f"colorshift: max shift must be >= 0, got {max_shift}")
        self.max_shift = float(max_shift)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        channels = v2.functional.get_dimensions(flat_inputs[0])[0]
        return {"offsets": (torch.rand(channels) * 2 - 1) * self.max_shift}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        _require_float(inpt, "colorshift")
        return inpt + params["offsets"].to(inpt.dtype)[:, None, None]


class PCAColor(v2.Transform):
    """AlexNet's PCA colour augmentation (Krizhevsky, Sutskever & Hinton 2012, section 4.1).

    To each pixel ``I_xy = [R, G, B]`` add ``[p1 p2 p3] [a1*l1, a2*l2, a3*l3]^T`` where ``p_i`` and
    ``l_i`` are the eigenvectors and eigenvalues of the 3x3 covariance of the training set's RGB
    values (here pixels in [0, 1]) and ``a_i ~ N(0, sigma)`` is drawn once per image. The same
    vector is added to every pixel, so the image's spatial structure is untouched. (Works for any
    channel count; with one channel it is a random brightness offset scaled by the variance.)
    """

    def __init__(self, eigvals: torch.Tensor, eigvecs: torch.Tensor, sigma: float = 0.1) -> None:
        super().__init__()
        self.eigvals = torch.as_tensor(eigvals, dtype=torch.float32)
        self.eigvecs = torch.as_tensor(eigvecs, dtype=torch.float32)  # columns are p_i
        if self.eigvecs.shape != (len(self.eigvals), len(self.eigvals)):
            raise ValueError("pca: eigvecs must be C x C with one column per eigenvalue")
        self.sigma = float(sigma)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        alpha = torch.randn(len(self.eigvals)) * self.sigma
        return {"delta": self.eigvecs @ (alpha * self.eigvals)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        _require_float(inpt, "pca")
        if inpt.shape[-3] != len(self.eigvals):
            raise ValueError(
                f"pca: statistics are for {len(self.eigvals)} channels, image has {inpt.shape[-3]}"
            )
        return inpt + params["delta"].to(inpt.dtype)[:, None, None]


def _require_float(inpt: torch.Tensor, name: str) -> None:
    if not inpt.is_floating_point():
        raise TypeError(f"{name} works on float images in [0, 1]; got {inpt.dtype}")


@dataclass(frozen=True)
class OpInfo:
    kind: str  # "geometric" or "colour"
    default: float
    build: Callable[[float, tuple[int, int], int, Any], v2.Transform]
    doc: str


_BILINEAR = InterpolationMode.BILINEAR


def _jitter(s: float, size: tuple[int, int], in_chans: int, pca: Any) -> v2.Transform:
    return v2.ColorJitter(brightness=s, contrast=s, saturation=s if in_chans == 3 else 0)


def _pca(sigma: float, size: tuple[int, int], in_chans: int, pca: Any) -> v2.Transform:
    if pca is None:
        raise ValueError(
            "augmentation op 'pca' needs colour statistics of the training set; "
            "they are computed by load_data / image_dataset_from_directory (pass pca=...)"
        )
    eigvals, eigvecs = pca
    return PCAColor(eigvals, eigvecs, sigma)


OPS: dict[str, OpInfo] = {
    "hflip": OpInfo("geometric", 0.5, lambda p, s, c, _: v2.RandomHorizontalFlip(p), "mirror left-right"),
    "vflip": OpInfo("geometric", 0.5, lambda p, s, c, _: v2.RandomVerticalFlip(p), "mirror top-bottom"),
    "crop": OpInfo(
        "geometric",
        0,
        lambda p, s, c, _: v2.RandomCrop(s, padding=int(p) or None, pad_if_needed=True),
        "random crop (param: padding)",
    ),
    "rrc": OpInfo(
        "geometric",
        0.25,
        lambda p, s, c, _: v2.RandomResizedCrop(s, scale=(p, 1.0), interpolation=_BILINEAR, antialias=True),
        "random-resized crop (param: min area scale)",
    ),
    "rotate": OpInfo(
        "geometric",
        15,
        lambda p, s, c, _: v2.RandomRotation(p, interpolation=_BILINEAR),
        "rotation (degrees)",
    ),
    "shear": OpInfo(
        "geometric",
        10,
        lambda p, s, c, _: v2.RandomAffine(degrees=0, shear=(-p, p, -p, p), interpolation=_BILINEAR),
        "shear (degrees)",
    ),
    "elastic": OpInfo(
        "geometric", 50, lambda p, s, c, _: v2.ElasticTransform(alpha=p, sigma=5.0), "local warping (alpha)"
    ),
    "jitter": OpInfo("colour", 0.2, _jitter, "brightness/contrast/saturation jitter"),
    "colorshift": OpInfo("colour", 0.1, lambda p, s, c, _: ColorShift(p), "per-channel offsets"),
    "pca": OpInfo("colour", 0.1, _pca, "AlexNet PCA colour (sigma)"),
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
        ops.append((key, value))
    return ops


def needs_pca(spec: Any) -> bool:
    return any(name == "pca" for name, _ in parse_ops(spec))


def build_train_transform(
    spec: Any,
    image_size: tuple[int, int],
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    pca: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> v2.Compose:
    """uint8 (C, H', W') base image -> augmented, normalised float (C, H, W)."""
    ops = parse_ops(spec)
    size = tuple(image_size)
    geometric = [(n, p) for n, p in ops if OPS[n].kind == "geometric"]
    colour = [(n, p) for n, p in ops if OPS[n].kind == "colour"]
    steps: list[v2.Transform] = []
    if not any(n in CROP_OPS for n, _ in geometric):
        steps.append(v2.CenterCrop(size))
    steps += [OPS[n].build(p, size, in_chans, pca) for n, p in geometric]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    steps += [OPS[n].build(p, size, in_chans, pca) for n, p in colour]
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def build_eval_transform(
    image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """uint8 base image -> centre H x W crop (no-op for ``resize="resize"`` bases), float, normalised."""
    return v2.Compose(
        [
            v2.CenterCrop(tuple(image_size)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
