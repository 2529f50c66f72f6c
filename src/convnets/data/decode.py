"""Reading one image file into a model-ready uint8 array: formats, modes, EXIF, fast JPEG decode.

The "base" image of a file is what the datasets store and cache: uint8, H x W x C (C = 1 or 3),
already oriented, converted and resized, *before* augmentation. Three resize modes (``convnets train
--resize crop|squash|letterbox`` names them by what they do; :func:`resize_mode` maps those names):

* ``"center-crop"`` (``crop``; default for folders and for prediction): scale so the image covers
  ``round(H / 0.875) x round(W / 0.875)`` (the shorter side becomes ``size / 0.875``, e.g. 256 for
  224, like torchvision's ImageNet evaluation) and centre-crop to that. The eval transform then takes
  the central H x W; training crops (``crop``, ``rrc``) pick from the whole base image. Cuts the sides
  of a non-square picture.
* ``"resize"`` (``squash``): stretch straight to H x W (aspect ratio not kept; Keras'
  ``image_dataset_from_directory`` convention and the course's). Used for the built-in datasets, whose
  images are small and centred.
* ``"letterbox"``: scale so the long side fits, keep the aspect ratio, and pad the rest evenly with
  :data:`LETTERBOX_FILL`, the ImageNet mean colour. Why that colour: it is zero after ImageNet
  normalisation and within 0.2 of zero after the inception ([-1, 1]) one, so the pad looks like the
  zero padding the convolutions already see at every border; and being a constant, the base image stays
  a function of the file alone (cacheable, identical in every torch-free reader, no circular
  dependency on dataset statistics that are computed from base images).

Bounded work per image: the geometry and the decode cost are decided from the header *before* the
pixels are decoded (:func:`needed_size`, :func:`check_decode_size`). JPEGs are decoded at the
smallest DCT scale that still covers the output (``Image.draft``); a file whose decode would need
more than :data:`MAX_DECODE_BYTES` (pixels x the mode's measured cost) is refused before anything is
allocated, with the size in the message; a big frame is box-reduced before its mode conversions;
and no mode ever builds an image larger than its output (a centre crop of an extreme aspect ratio
resizes only the region it keeps, ``Image.resize(box=...)``: an 80000 x 1 PNG used to become a
12,800,000 x 183 intermediate for a 160-pixel model).

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

from ..base.choices import RESIZE_CHOICES as RESIZE_CHOICES  # the resize modes' one home
from ..base.choices import RESIZE_MODES as RESIZE_MODES
from ..base.choices import resize_mode as resize_mode
from ..base.choices import resize_name as resize_name

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
CROP_RATIO = 0.875  # eval crop / resize ratio (224 / 256), torchvision's ImageNet convention
LETTERBOX_FILL = (124, 116, 104)  # round(255 * ImageNet mean): see the module docstring
# Peak bytes one decode may allocate: the decoded frame times its mode's conversion cost (below).
MAX_DECODE_BYTES = 160 * 2**20
# Bytes per decoded pixel alive at the peak of load_base, by PIL mode (the frame, which Pillow holds
# at 4 bytes a pixel for RGB, plus the decoder's buffers and the small reduced copy): measured peak
# RSS growth on 10-megapixel files (RGB 4.8, RGBA/LA 8.6, P 5.6 (9.6 with transparency), I;16 8.2,
# L 1.9, 1-bit 2.3, CMYK 5.2, I/F 5.9), rounded up.
_DECODE_COST = {
    **dict.fromkeys(("1", "L"), 3),
    **dict.fromkeys(("RGB", "YCbCr", "LAB", "HSV"), 6),
    **dict.fromkeys(("CMYK", "RGBA", "LA", "PA", "I;16", "I;16B", "I;16L", "I;16N"), 10),
    "P": 11,
}
_DEFAULT_DECODE_COST = 18  # I, F (32-bit) and anything rarer
# Centre-crop keeps today's pixels (resize to the cover size, then crop) while that intermediate is
# at most this many times the output; beyond, it resizes only the cropped region (same geometry,
# values within 1 of each other) so the work stays bounded whatever the aspect ratio.
_COVER_LIMIT = 16

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_AXES = {5, 6, 7, 8}
# EXIF orientation -> the transpose that shows the picture upright (ImageOps.exif_transpose's table;
# applied by value because the early-reduced frame no longer carries the EXIF block).
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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
    resize = resize_mode(resize)
    if resize == "center-crop":
        return round(h / CROP_RATIO), round(w / CROP_RATIO)
    return h, w


def letterbox_fill(mode: str) -> int | tuple[int, ...]:
    """:data:`LETTERBOX_FILL` in a PIL mode ('L': its ITU-R 601-2 luma, as PIL converts)."""
    if mode == "L":
        r, g, b = LETTERBOX_FILL
        return round((r * 299 + g * 587 + b * 114) / 1000)
    return LETTERBOX_FILL


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
    """16/32-bit integer and float greyscale -> 8-bit 'L' (see the module docstring), in place on one
    working array (a 20-megapixel 16-bit PNG used to take ~28 bytes a pixel here)."""
    if im.mode == "F":
        arr = np.array(im, dtype=np.float32)
        if arr.size and np.nanmax(arr) <= 1.0:
            arr *= 255.0
        np.nan_to_num(arr, copy=False)
        np.rint(arr, out=arr)
    else:
        arr = np.array(im, dtype=np.int64 if im.mode == "I" else np.uint32)
        if im.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            # rint(v / 257) in integers (65535 -> 255): (2v + 257) // 514, never a tie since 257 is odd
            arr *= 2
            arr += 257
            arr //= 514
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8), mode="L")


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


def letterbox_size(w: int, h: int, out_h: int, out_w: int) -> tuple[int, int]:
    """(w, h) of a w x h picture scaled to fit inside out_w x out_h (at least one pixel a side)."""
    scale = min(out_w / w, out_h / h)
    return min(out_w, max(1, round(w * scale))), min(out_h, max(1, round(h * scale)))


def needed_size(w: int, h: int, out_size: tuple[int, int], resize: str) -> tuple[int, int]:
    """(w, h) the whole w x h picture would have at the output's scale: what a JPEG draft must cover."""
    out_h, out_w = out_size
    if resize == "center-crop":
        scale = max(out_w / w, out_h / h)
        return math.ceil(w * scale - 1e-6), math.ceil(h * scale - 1e-6)
    if resize == "letterbox":
        return letterbox_size(w, h, out_h, out_w)
    return out_w, out_h


def fit(im: Image.Image, out_size: tuple[int, int], resize: str) -> Image.Image:
    """Resize a (converted) PIL image to ``out_size`` (H, W) by the resize mode; nothing larger than
    the output is ever built, whatever the image's aspect ratio."""
    out_h, out_w = out_size
    w, h = im.size
    if resize == "resize":
        if im.size == (out_w, out_h):
            return im
        return im.resize((out_w, out_h), Image.BILINEAR, reducing_gap=3.0)
    if resize == "letterbox":
        nw, nh = letterbox_size(w, h, out_h, out_w)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
        if (nw, nh) == (out_w, out_h):
            return im
        canvas = Image.new(im.mode, (out_w, out_h), letterbox_fill(im.mode))
        canvas.paste(im, ((out_w - nw) // 2, (out_h - nh) // 2))
        return canvas
    if resize != "center-crop":
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    cw, ch = _cover_size(w, h, out_h, out_w)
    left, top = (cw - out_w) // 2, (ch - out_h) // 2
    if cw * ch > _COVER_LIMIT * out_w * out_h:
        # Resize only the part that survives the crop: the same mapping as below (output pixel x
        # reads source x' = (x + left + 0.5) * w / cw - 0.5), without the huge intermediate.
        sx, sy = w / cw, h / ch
        box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
        return im.resize((out_w, out_h), Image.BILINEAR, box=box, reducing_gap=3.0)
    if (cw, ch) != (w, h):
        im = im.resize((cw, ch), Image.BILINEAR, reducing_gap=3.0)
    return im.crop((left, top, left + out_w, top + out_h))


# Frames above this many pixels are box-reduced before their mode conversions (below it, today's
# pixels are kept exactly: Image.resize's own reducing_gap does the same reduction inside the resize).
EARLY_REDUCE_PIXELS = 2**22


def _need(im: Image.Image, w: int, h: int, out_size: tuple[int, int], resize: str) -> tuple[int, int]:
    """:func:`needed_size` of a w x h frame in its stored orientation (EXIF may swap the axes)."""
    swapped = im.getexif().get(_EXIF_ORIENTATION, 1) in _SWAPS_AXES
    need_w, need_h = needed_size(*((h, w) if swapped else (w, h)), out_size, resize)
    return (need_h, need_w) if swapped else (need_w, need_h)


def _shrink_early(im: Image.Image, need: tuple[int, int], in_chans: int) -> Image.Image:
    """A big decoded frame made small before anything copies it: palette / 1-bit / 16-bit frames are
    converted (they cannot be box-reduced), then the frame is reduced by the integer factor that
    keeps it at least 3x the size the output needs (Image.resize's ``reducing_gap``)."""
    w, h = im.size
    if w * h <= EARLY_REDUCE_PIXELS:
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode.startswith("I;16"):
        im = _to_8bit(im)
    factor = int(min(w / max(need[0], 1), h / max(need[1], 1)) / 3.0)
    return im.reduce(factor) if factor >= 2 else im


def check_decode_size(w: int, h: int, mode: str, max_decode_bytes: int | None = None) -> None:
    """Refuse, before any pixel is allocated, an image whose decode would cost over the budget."""
    budget = MAX_DECODE_BYTES if max_decode_bytes is None else max_decode_bytes
    cost = w * h * _DECODE_COST.get(mode, _DEFAULT_DECODE_COST)
    if budget and cost > budget:
        raise ImageReadError(
            f"refused: a {w}x{h} {mode} image needs about {cost / 2**20:.0f} MB to decode "
            f"(limit {budget / 2**20:.0f} MB); use a smaller image"
        )


def load_base(
    path: str | os.PathLike,
    out_size: tuple[int, int],
    in_chans: int = 3,
    resize: str = "center-crop",
    draft: bool = True,
    max_pixels: int | None = None,
    max_decode_bytes: int | None = None,
) -> np.ndarray:
    """Decode ``path`` into a uint8 (H, W, C) base image of ``out_size``; ``ImageReadError`` if unusable.

    ``max_decode_bytes``: the decode budget (default :data:`MAX_DECODE_BYTES`; 0 = none).

    With ``draft`` a JPEG much larger than the target is decoded at 1/2, 1/4 or 1/8 scale by libjpeg
    (``Image.draft``): the DCT does the first downscaling almost for free, and the final resize still
    starts from at least the target resolution.
    """
    resize = resize_mode(resize)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
                if limit and w * h > limit:
                    raise ImageReadError(f"refused: {w}x{h} pixels exceeds the limit {limit}")
                if draft and im.format == "JPEG":  # (a PNG's getexif() would decode the pixels)
                    im.draft("L" if in_chans == 1 else "RGB", _need(im, w, h, out_size, resize))
                # After the draft, im.size is what libjpeg will decode: the budget is decided here.
                check_decode_size(*im.size, im.mode, max_decode_bytes)
                im.seek(0)  # GIF / multi-page TIFF: the first frame
                im.load()  # full decode here, so truncated data fails inside this try
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                im = _shrink_early(im, _need(im, *im.size, out_size, resize), in_chans)
                if orientation in _ORIENT:  # (exif_transpose copies even when there is nothing to do)
                    im = im.transpose(_ORIENT[orientation])
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


# --- one full decode, for inspection (doctor's scan, exact-copy pixel hashes) ---------------------


def decode_rgb(path: str) -> tuple[dict, Image.Image]:
    """Decode one file fully (EXIF-oriented, converted to RGB as the data layer does) and return its
    header facts with the image. ``ImageReadError`` (the data layer's wording) if it cannot be used.

    The decode keeps to the data layer's budget (``decode.check_decode_size``), checked on the header
    before any pixel is allocated: a JPEG over it is decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``,
    libjpeg's own reduction; its pixel hash is then that of the reduced picture, the same for every
    copy of the file), anything else over it is reported as refused."""
    facts: dict = {"bytes": os.path.getsize(path)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                facts.update(format=im.format, mode=im.mode)
                im.seek(0)
                _fit_decode_budget(im)
                im.load()  # the full decode: truncated or corrupt data fails here
                im = ImageOps.exif_transpose(im)
                facts["width"], facts["height"] = im.size
                return facts, to_mode(im, 3)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageReadError(f"refused: too many pixels (decompression bomb?): {e}") from None
    except Exception as e:  # Pillow raises many types for bad files; all mean "not usable"
        raise ImageReadError(f"cannot decode: {type(e).__name__}: {e}") from None


def _fit_decode_budget(im: Image.Image) -> None:
    """Draft a JPEG down until its decode fits the budget; then refuse what still does not."""
    w, h = im.size
    if im.format == "JPEG":
        for factor in (1, 2, 4, 8):
            try:
                check_decode_size(w // factor, h // factor, im.mode)
            except ImageReadError:
                continue
            if factor > 1:
                im.draft(im.mode, (w // factor, h // factor))
            return
    check_decode_size(*im.size, im.mode)
