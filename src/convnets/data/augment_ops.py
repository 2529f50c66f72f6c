"""The augmentation ops as torchvision v2 transforms (imported only when a run augments).

``augment.py`` holds the names, presets and parsing and builds the train/eval transforms; it imports
this module, and with it torchvision (whose package import pulls in ``torch._dynamo``: ~1 s of a
cold start on 2 cores), only when the spec names at least one op.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from .decode import letterbox_fill

_BILINEAR = InterpolationMode.BILINEAR


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


class RandomPlace(v2.Transform):
    """The letterbox counterpart of a random-resized crop: the whole canvas shrunk by a random
    factor s (area s^2 uniform-ish in [min_area, 1], side in [sqrt(min_area), 1]) and moved by a
    random shift within the room the shrinking frees, so the picture is never cut; the uncovered
    border is ``fill`` (the letterbox colour)."""

    def __init__(self, min_area: float = 0.25, fill: Any = 0) -> None:
        super().__init__()
        self.low = max(float(min_area), 1e-4) ** 0.5
        self.fill = fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        _, h, w = v2.functional.get_dimensions(flat_inputs[0])
        s = float(torch.empty(1).uniform_(self.low, 1.0))
        room_x, room_y = (1.0 - s) * w / 2.0, (1.0 - s) * h / 2.0
        tx = float(torch.empty(1).uniform_(-room_x, room_x)) if room_x > 0 else 0.0
        ty = float(torch.empty(1).uniform_(-room_y, room_y)) if room_y > 0 else 0.0
        return {"scale": s, "translate": [int(round(tx)), int(round(ty))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return v2.functional.affine(
            inpt,
            angle=0.0,
            translate=params["translate"],
            scale=params["scale"],
            shear=[0.0, 0.0],
            interpolation=_BILINEAR,
            fill=self.fill,
        )


def _require_float(inpt: torch.Tensor, name: str) -> None:
    if not inpt.is_floating_point():
        raise TypeError(f"{name} works on float images in [0, 1]; got {inpt.dtype}")


def _pca(sigma: float, in_chans: int, pca: Any) -> v2.Transform:
    if pca is None:
        raise ValueError(
            "augmentation op 'pca' needs colour statistics of the training set; "
            "they are computed by load_data / image_dataset_from_directory (pass pca=...)"
        )
    eigvals, eigvecs = pca
    return PCAColor(eigvals, eigvecs, sigma)


def _fill(in_chans: int) -> list[int]:
    """The letterbox pad colour (decode.LETTERBOX_FILL) for a uint8 image of ``in_chans`` channels."""
    value = letterbox_fill("L" if in_chans == 1 else "RGB")
    return list(value) if isinstance(value, tuple) else [value]


def build_op(
    name: str, p: float, size: tuple[int, int], in_chans: int, pca: Any, resize: str = "center-crop"
) -> v2.Transform:
    """One parsed op (``augment.OPS`` names it) as a v2 transform, for the run's resize mode."""
    letterbox = resize == "letterbox"
    fill = _fill(in_chans) if letterbox else 0
    if name == "rrc" and letterbox:
        return RandomPlace(p, fill)
    if name == "rotate" and letterbox:
        return v2.RandomRotation(p, interpolation=_BILINEAR, fill=fill)
    if name == "crop" and letterbox:
        return v2.RandomCrop(size, padding=int(p) or None, pad_if_needed=True, fill=fill)
    if name == "shear" and letterbox:
        return v2.RandomAffine(degrees=0, shear=(-p, p, -p, p), interpolation=_BILINEAR, fill=fill)
    if name == "hflip":
        return v2.RandomHorizontalFlip(p)
    if name == "vflip":
        return v2.RandomVerticalFlip(p)
    if name == "crop":
        return v2.RandomCrop(size, padding=int(p) or None, pad_if_needed=True)
    if name == "rrc":
        return v2.RandomResizedCrop(size, scale=(p, 1.0), interpolation=_BILINEAR, antialias=True)
    if name == "rotate":
        return v2.RandomRotation(p, interpolation=_BILINEAR)
    if name == "shear":
        return v2.RandomAffine(degrees=0, shear=(-p, p, -p, p), interpolation=_BILINEAR)
    if name == "elastic":
        return v2.ElasticTransform(alpha=p, sigma=5.0)
    if name == "jitter":
        return v2.ColorJitter(brightness=p, contrast=p, saturation=p if in_chans == 3 else 0)
    if name == "colorshift":
        return ColorShift(p)
    if name == "pca":
        return _pca(p, in_chans, pca)
    raise ValueError(f"unknown augmentation op {name!r}")


def compose(
    geometric: list[tuple[str, float]],
    colour: list[tuple[str, float]],
    size: tuple[int, int],
    in_chans: int,
    mean: list[float],
    std: list[float],
    pca: Any,
    resize: str = "center-crop",
    center_crop: bool = True,
) -> v2.Compose:
    """Geometric ops on the uint8 base (after a centre crop to ``size`` when ``center_crop``: none of
    them crops), then float, then colour ops, then normalisation. ``augment.py`` sorts the ops."""
    steps: list[v2.Transform] = []
    if center_crop:
        steps.append(v2.CenterCrop(size))
    steps += [build_op(n, p, size, in_chans, pca, resize) for n, p in geometric]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    steps += [build_op(n, p, size, in_chans, pca) for n, p in colour]
    steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)
