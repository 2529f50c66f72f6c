"""Image files -> model input, without torch: the one loader that predict, evaluate, ensemble,
report, serve and doctor share.

* :func:`expand_paths` turns what a user typed (files and folders) into image files;
* :func:`read_images` decodes many in parallel threads, an unreadable one giving its error, not raising;
* :func:`read_image` decodes one file (or uploaded bytes) into the model's view: uint8 (H, W, C) at the
  run's ``image_size``, resized by the run's mode (see ``decode.py``), centre-cropped from the base;
* :func:`to_input` normalises a stack of views into the float32 NCHW array a model takes.

numpy and Pillow only, so an ONNX Runtime / OpenVINO path never imports torch; the torch side wraps
the same arrays with ``torch.from_numpy``.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .decode import ImageReadError, base_size, is_image_file, load_base

ImageSource = str | os.PathLike | bytes | BinaryIO


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Files as given (a missing one is kept, for the loader to report), folders expanded to their
    image files recursively and sorted, skipping hidden files and folders."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        p = Path(p)
        try:
            is_dir = p.is_dir()
        except OSError:  # e.g. a name too long for the file system: the loader reports it
            is_dir = False
        if is_dir:
            out += sorted(
                str(f)
                for f in p.rglob("*")
                if f.is_file()
                and is_image_file(f)
                and not any(s.startswith(".") for s in f.relative_to(p).parts)
            )
        else:
            out.append(str(p))
    return out


def center_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The central ``size`` (H, W) of an (H, W, C) array, with torchvision's offsets (its
    ``center_crop`` rounds ``(H - h) / 2`` the same way), so both paths see identical pixels."""
    h, w = arr.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return arr
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return arr[top : top + th, left : left + tw]


def read_image(
    source: ImageSource,
    image_size: tuple[int, int],
    in_chans: int = 3,
    resize: str = "center-crop",
    *,
    base: bool = False,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode a file path, bytes or binary stream into a uint8 (H, W, C) array at ``image_size``.

    ``base=True`` returns the larger base image (for ten-crop), not the central view.
    Raises :class:`ImageReadError` with the reason for anything that is not a usable image.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageReadError("empty file (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            if not path.is_file():
                raise ImageReadError("no such file" if not path.exists() else "not a file")
            if path.stat().st_size == 0:
                raise ImageReadError("empty file (0 bytes)")
        except OSError as e:  # a name too long for the file system, a permission on the folder
            reason = "file name too long" if e.errno == errno.ENAMETOOLONG else e.strerror or str(e)
            raise ImageReadError(f"cannot read: {reason}") from None
    try:
        arr = load_base(source, base_size(image_size, resize), in_chans, resize, max_pixels=max_pixels)
    except OSError as e:  # permission denied and the like
        raise ImageReadError(f"cannot read: {e.strerror or e}") from None
    return arr if base else center_crop(arr, image_size)


def read_images(
    sources: Sequence[ImageSource],
    image_size: tuple[int, int],
    in_chans: int = 3,
    resize: str = "center-crop",
    *,
    base: bool = False,
    max_pixels: int | None = None,
    workers: int | None = None,
) -> list[np.ndarray | ImageReadError]:
    """:func:`read_image` for each source, in order, decoded by ``workers`` threads (Pillow releases
    the GIL while decoding; default up to 8); a source that is not a usable image gives its
    :class:`ImageReadError` in its place, so one bad file never stops a batch."""

    def read(source: ImageSource) -> np.ndarray | ImageReadError:
        try:
            return read_image(source, image_size, in_chans, resize, base=base, max_pixels=max_pixels)
        except ImageReadError as e:
            return e

    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(sources) <= 1:
        return [read(s) for s in sources]
    with ThreadPoolExecutor(max_workers=min(workers, len(sources))) as pool:
        return list(pool.map(read, sources))


def to_input(
    views: Sequence[np.ndarray] | np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """uint8 (N, H, W, C) views -> normalised float32 (N, C, H, W): ``(x / 255 - mean) / std``."""
    x = np.asarray(views, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    x = x.transpose(0, 3, 1, 2) / np.float32(255)
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - m) / s)
