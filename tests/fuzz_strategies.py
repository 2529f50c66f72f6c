"""Hypothesis strategies for hostile input: image files (random bytes, real headers with random sizes,
modes and damage) and /v1/predict requests (random bodies, content types, multipart shapes).

Shared by tests/test_fuzz.py (a short, derandomized run in the suite) and bench/fuzz.py (a longer one).
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from hypothesis import strategies as st
from PIL import Image

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")
MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr")
# Sizes a PNG header may claim. SAFE_SIZES cost little to decode and resize; HUGE_SIZES are past
# Pillow's bomb guard (89 M pixels) and must be refused; EXTREME_SIZES (80000 x 1 and the like: few
# pixels, but a resize to the model's short side would multiply them; the loader sizes the work first)
# are in the suite's run too, and bench/fuzz.py measures what each costs.
SAFE_SIZES = st.tuples(st.integers(1, 2048), st.integers(1, 2048))
HUGE_SIZES = st.tuples(st.integers(10**5, 2**31 - 1), st.integers(10**5, 2**31 - 1))
EXTREME_SIZES = st.one_of(
    st.tuples(st.integers(2049, 200_000), st.integers(1, 4)),
    st.tuples(st.integers(1, 4), st.integers(2049, 200_000)),
)


def encode(pixels: np.ndarray, mode: str, fmt: str) -> bytes | None:
    """``pixels`` saved as ``fmt`` in ``mode`` (None where Pillow cannot write that pair)."""
    image = Image.fromarray(pixels, "RGB")
    try:
        image = image.convert(mode) if mode not in ("I;16",) else image.convert("I").convert("I;16")
        buf = io.BytesIO()
        image.save(buf, fmt)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return buf.getvalue()


def set_png_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (its CRC fixed so decoders believe it)."""
    data = bytearray(png)
    ihdr = data.find(b"IHDR")
    if ihdr < 0:
        return png
    data[ihdr + 4 : ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[ihdr + 17 : ihdr + 21] = zlib.crc32(bytes(data[ihdr : ihdr + 17])).to_bytes(4, "big")
    return bytes(data)


@st.composite
def real_images(draw, max_side: int = 48) -> bytes:
    """A real encoded image of random size, mode and format."""
    w, h = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    fmt, mode = draw(st.sampled_from(FORMATS)), draw(st.sampled_from(MODES))
    data = encode(pixels, mode, fmt)
    if data is None:  # a pair Pillow cannot write: plain RGB PNG instead
        data = encode(pixels, "RGB", "PNG")
    return data


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` truncated, with bytes flipped, or with garbage appended."""
    how = draw(st.sampled_from(["as is", "truncate", "flip", "append"]))
    if how == "truncate" and len(data) > 1:
        return data[: draw(st.integers(1, len(data) - 1))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.integers(0, 255))
        return bytes(out)
    if how == "append":
        return data + draw(st.binary(max_size=64))
    return data


@st.composite
def lying_pngs(draw, sizes: st.SearchStrategy | None = None) -> bytes:
    """A small PNG whose header claims another size (``sizes``: (width, height) pairs)."""
    w, h = draw(sizes if sizes is not None else st.one_of(SAFE_SIZES, HUGE_SIZES))
    png = encode(np.zeros((4, 4, 3), np.uint8), draw(st.sampled_from(["RGB", "L", "P"])), "PNG")
    return set_png_size(png, w, h)


def image_files(extreme: bool = False) -> st.SearchStrategy[bytes]:
    """Any image-like bytes: noise, magic numbers with noise, real images (damaged or not), lying PNGs
    (``extreme``: also headers of extreme aspect ratio)."""
    magic = st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF", b"II*\x00"])
    return st.one_of(
        st.binary(max_size=512),
        st.tuples(magic, st.binary(max_size=256)).map(lambda t: t[0] + t[1]),
        real_images().flatmap(damaged),
        lying_pngs(st.one_of(SAFE_SIZES, HUGE_SIZES, *([EXTREME_SIZES] if extreme else []))),
    )


# --- /v1/predict requests ---------------------------------------------------------------------------

CONTENT_TYPES = (
    "image/png",
    "image/jpeg",
    "application/octet-stream",
    "multipart/form-data; boundary=XyZ",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "image/png; charset=utf-8",
    "",
)


@st.composite
def multipart_bodies(draw, boundary: str = "XyZ", extreme: bool = False) -> bytes:
    """A multipart body of 0-5 parts with random names, file names, part types and contents, some
    left out of order, unterminated or cut off."""
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(["file", "files", "image", "note", "", "file\r\nX: y"]))
        filename = draw(st.one_of(st.none(), st.text(max_size=20), st.just("a" * 300 + ".png")))
        ctype = draw(st.sampled_from(["image/png", "application/octet-stream", "text/plain", None]))
        content = draw(st.one_of(image_files(extreme), st.binary(max_size=128)))
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        head = f"Content-Disposition: {disposition}\r\n" + (f"Content-Type: {ctype}\r\n" if ctype else "")
        parts.append(
            f"--{boundary}\r\n".encode() + head.encode("utf-8", "surrogateescape") + b"\r\n" + content
        )
    body = b"\r\n".join(parts) + (f"\r\n--{boundary}--\r\n".encode() if draw(st.booleans()) else b"")
    if body and draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    return body


@st.composite
def requests(draw, extreme: bool = False) -> dict:
    """``TestClient.post`` keyword arguments for ``/v1/predict`` (with a random query)."""
    ctype = draw(st.one_of(st.sampled_from(CONTENT_TYPES), st.text(max_size=40)))
    body = draw(
        multipart_bodies(extreme=extreme)
        if ctype.startswith("multipart/form-data; boundary=XyZ")
        else st.one_of(image_files(extreme), st.binary(max_size=256), multipart_bodies(extreme=extreme))
    )
    top_k = draw(st.one_of(st.none(), st.integers(-3, 20).map(str), st.text(max_size=5)))
    headers = {"content-type": ctype} if ctype.isascii() and "\n" not in ctype and "\r" not in ctype else {}
    return {"url": "/v1/predict", "params": {} if top_k is None else {"top_k": top_k}, "content": body,
            "headers": headers}  # fmt: skip
