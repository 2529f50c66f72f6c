"""Test-time augmentation on uint8 views, in numpy: the same pixels as the PyTorch path
(:func:`convnets.deploy.predictor.tta_views`, torchvision's ``ten_crop``)."""

from __future__ import annotations

import numpy as np

from ...base.runs import RunConfig
from ...data.images import ImageSource, center_crop, read_image


def ten_crop(base: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    """torchvision's ``ten_crop``: the four corners and the centre, then the same of the mirror image."""
    h, w = size
    crops = []
    for img in (base, base[:, ::-1]):
        bh, bw = img.shape[:2]
        crops += [
            img[:h, :w],
            img[:h, bw - w :],
            img[bh - h :, :w],
            img[bh - h :, bw - w :],
            center_crop(img, size),
        ]
    return crops


def read_tta_views(source: ImageSource, config: RunConfig, tta: str = "none") -> list[np.ndarray]:
    """The uint8 (H, W, C) views of one image that ``tta`` averages over (one view without TTA):
    ten-crop cuts them from the larger base image the centre crop is taken from."""
    c = config
    if tta == "10crop":
        return ten_crop(read_image(source, c.image_size, c.in_chans, c.resize, base=True), c.image_size)
    view = read_image(source, c.image_size, c.in_chans, c.resize)
    return [view, view[:, ::-1]] if tta == "flip" else [view]
