"""Reading one image file into a model-ready uint8 array: formats, modes, EXIF, fast JPEG decode.

The "base" image of a file is what the datasets store and cache: uint8, H x W x C (C = 1 or 3),
already oriented, converted and resized, *before* augmentation. Two resize modes:

* ``"center-crop"`` (default for folders and for prediction): scale so the image covers
  ``round(H / 0.875) x round(W / 0.875)`` (the shorter side becomes ``size / 0.875``, e.g. 256 for
  224, like torchvision's ImageNet evaluation) and centre-crop to that. The eval transform then takes
  the central H x W; training crops (``crop``, ``rrc``) pick from the whole base image.
* ``"resize"``: stretch straight to H x W (aspect ratio not kept; Keras' ``image_dataset_from_directory``
  convention and the course's). Used for the built-in datasets, whose images are small and centred.

Mode conversion (to 3 channels; for 1 channel the RGB result goes through PIL's ITU-R 601-2 luma):

* transparency (RGBA, LA, PA, P with a transparent colour) is **composited on white**, so transparent
  backgrounds look like paper rather than black;
* CMYK, YCbCr, LAB, HSV: PIL's conversion to RGB; greyscale (L, 1) is replicated to 3 channels;
* 16-bit and 32-bit integer greyscale (``I;16*``, ``I``) are scaled from 0..65535 to 0..255 (an ``I``
  image whose values all fit in 0..255 is taken as 8-bit); float (``F``) images are taken as 0..1 when
  their maximum is at most 1, else as 0..255, and clipped.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
RESIZE_MODES = ("center-crop", "resize")
CROP_RATIO = 0.875  # eval crop / resize ratio (224 / 256), torchvision's ImageNet convention

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_AXES = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


class SkippedImageWarning(UserWarning):
    """An image file was left out (unreadable, truncated, too large); the message names it."""


class ImageReadError(Exception):
    """A file that cannot be used as an image; the message says why."""


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def base_size(image_size: tuple[int, int], resize: str) -> tuple[int, int]:
    """(H, W) of the stored base image for a model input of ``image_size``."""
    h, w = image_size
    if resize == "center-crop":
        return round(h / CROP_RATIO), round(w / CROP_RATIO)
    if resize == "resize":
        return h, w
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")


def probe(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int]:
    """Cheap scan-time check: open the header only (no pixel decode) and return (width, height).

    Raises ``ImageReadError`` for empty, unidentifiable or oversized files. Truncated pixel data is
    not detected here (that would need a full decode); it is caught when the image is loaded.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except ImageReadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageReadError(f"refused: too many pixels (decompression bomb?): {e}") from None
    except Exception as e:  # PIL raises many types for bad files; all mean "not usable"
        raise ImageReadError(f"not a readable image: {type(e).__name__}: {e}") from None
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise ImageReadError(f"refused: {width}x{height} = {width * height} pixels exceeds the limit {limit}")
    if width == 0 or height == 0:
        raise ImageReadError(f"image has zero size ({width}x{height})")
    return width, height


def _to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float greyscale -> 8-bit 'L' (see the module docstring)."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr = arr.astype(np.float64)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        arr = np.nan_to_num(arr * scale)
    else:
        arr = arr.astype(np.float64)
        if im.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_mode(im: Image.Image, in_chans: int) -> Image.Image:
    """Convert any PIL mode to 'RGB' (in_chans=3) or 'L' (in_chans=1)."""
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _to_8bit(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    target = "RGB" if in_chans == 3 else "L"
    if im.mode == target:
        return im
    if in_chans == 1 and im.mode not in ("RGB", "L", "1"):
        im = im.convert("RGB")  # e.g. CMYK -> RGB -> luma, not CMYK's K channel alone
    return im.convert(target)


def _cover_size(w: int, h: int, out_h: int, out_w: int) -> tuple[int, int]:
    """Smallest (w, h) with the same aspect ratio that covers out_w x out_h."""
    scale = max(out_w / w, out_h / h)
    return max(out_w, math.ceil(w * scale - 1e-6)), max(out_h, math.ceil(h * scale - 1e-6))


def fit(im: Image.Image, out_size: tuple[int, int], resize: str) -> Image.Image:
    """Resize a (converted) PIL image to ``out_size`` (H, W) by the resize mode."""
    out_h, out_w = out_size
    if resize == "resize":
        return (
            im.resize((out_w, out_h), Image.BILINEAR, reducing_gap=3.0) if im.size != (out_w, out_h) else im
        )
    w, h = im.size
    cw, ch = _cover_size(w, h, out_h, out_w)
    if (cw, ch) != (w, h):
        im = im.resize((cw, ch), Image.BILINEAR, reducing_gap=3.0)
    left, top = (cw - out_w) // 2, (ch - out_h) // 2
    return im.crop((left, top, left + out_w, top + out_h))


def load_base(
    path: str | os.PathLike,
    out_size: tuple[int, int],
    in_chans: int = 3,
    resize: str = "center-crop",
    draft: bool = True,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode ``path`` into a uint8 (H, W, C) base image of ``out_size``; ``ImageReadError`` if unusable.

    With ``draft`` a JPEG much larger than the target is decoded at 1/2, 1/4 or 1/8 scale by libjpeg
    (``Image.draft``): the DCT does the first downscaling almost for free, and the final resize still
    starts from at least the target resolution.
    """
    out_h, out_w = out_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
                if limit and w * h > limit:
                    raise ImageReadError(f"refused: {w}x{h} pixels exceeds the limit {limit}")
                if draft and im.format == "JPEG":
                    swapped = im.getexif().get(_EXIF_ORIENTATION, 1) in _SWAPS_AXES
                    dw, dh = (h, w) if swapped else (w, h)  # display orientation
                    need_w, need_h = (
                        (out_w, out_h) if resize == "resize" else _cover_size(dw, dh, out_h, out_w)
                    )
                    im.draft(
                        "L" if in_chans == 1 else "RGB", (need_h, need_w) if swapped else (need_w, need_h)
                    )
                im.seek(0)  # GIF / multi-page TIFF: the first frame
                im.load()  # full decode here, so truncated data fails inside this try
                im = ImageOps.exif_transpose(im)
                im = fit(to_mode(im, in_chans), out_size, resize)
                arr = np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy wants one)
    except ImageReadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageReadError(f"refused: too many pixels (decompression bomb?): {e}") from None
    except Exception as e:
        raise ImageReadError(f"cannot decode: {type(e).__name__}: {e}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)
