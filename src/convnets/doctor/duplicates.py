"""Exact and near duplicates, within a split and across splits (leakage).

Exact duplicates: the same decoded pixels; the data layer's ``data/duplicates.py`` finds them (train
runs its cross-split check before training) and this module re-exports its names.

Near duplicates (re-encoded, resized, slightly cropped copies) in two steps:

1. **Candidates** by perceptual hash: the 64-bit DCT pHash (the 8x8 lowest frequencies of a 32x32
   grey thumbnail, each bit "above the median"; the definition ``imagehash.phash`` uses). It is
   computed here with numpy/scipy on the stacked thumbnails the decode pass kept, because hashing
   10,000 thumbnails in one array call is much faster than 10,000 PIL -> imagehash calls, and every
   pair's Hamming distance is one XOR + popcount over a block of rows. A pair is a candidate within
   ``CANDIDATE_BITS`` bits (18 of 64). Measured on 1,191 real photos (alpaca + SIGNS train): JPEG
   re-encoding moved the hash by at most 8 bits, resizing by 2, a 5% crop split between opposite
   edges by at most 18 (none missed), 5% cut from one corner on both axes by more than 18 in 5 of
   1,191 (0.4% missed). Two unrelated pictures land within 18 bits with probability ~4e-4 (random
   bits); pictures sharing a colour gradient land there more often (95,000 candidate pairs among
   10,000 synthetic gradients-and-shapes pictures), so a plain NCC of 8x8 thumbnails >= ``SCREEN_NCC``
   (0.6) screens them first: at 8x8 a 5% crop moves the content by under half a pixel (copies
   measured >= 0.67), and most gradient-sharing pairs fall below it.
2. **Verification**, so that similar-looking distinct images are not flagged: the normalised
   cross-correlation (NCC) of the two grey thumbnails after *registration*: one image is
   cropped by up to 12% per axis (1% steps; the crop estimated per axis from row and column
   intensity profiles) and resampled onto the other, both directions tried. A pair is a near
   duplicate at NCC >= ``NEAR_THRESHOLD`` (0.95) at 64x64 with no 1/8 x 1/8 block differing by more
   than ``WORST_BLOCK_LIMIT``. Measured on 1,191 real photos (alpaca + SIGNS train; ``python
   bench/doctor.py --calibrate``): JPEG q40, half-size and 5%/10% cropped copies scored at least
   0.955. Distinct photos score below it except near-identical shots of one scene taken seconds
   apart (SIGNS has many: the same hand, a finger moved): those are near duplicates in the sense that
   matters here (one in train and its twin in val inflates the validation score), and the worst-block
   limit drops the ones where something visibly moved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..data.decode import cpu_count
from ..data.duplicates import DataLeakageWarning as DataLeakageWarning
from ..data.duplicates import exact_duplicates_across as exact_duplicates_across
from ..data.duplicates import exact_groups as exact_groups
from ..data.duplicates import warn_split_duplicates as warn_split_duplicates

CANDIDATE_BITS = 18  # pHash Hamming distance (of 64) for a pair to be verified
NEAR_THRESHOLD = 0.95  # registered NCC of 64x64 grey thumbnails for a verified near duplicate
WORST_BLOCK_LIMIT = 0.8  # ... and the largest standardised squared difference in any 1/8 x 1/8 block
MAX_CROP = 0.12  # largest crop per axis the registration tries (fraction of the side)
CROP_STEP = 0.01
SCREEN_NCC = 0.6  # plain NCC of 8x8 thumbnails a candidate needs before registration
COLOUR_LIMIT = 20.0  # mean absolute difference of 4x4 RGB thumbnails (0..255) a candidate may have
VERIFY_SIZE = 64  # thumbnail side for the final score
PREFILTER_SIZE = 32
PREFILTER_THRESHOLD = 0.9  # at 32x32: below this a pair is not scored at VERIFY_SIZE
_ROW_BLOCK = 1024  # rows of the Hamming matrix computed at once (1024 x N uint64)


@dataclass
class Match:
    """A verified near-duplicate pair (indices into the hashed rows) and its similarity."""

    a: int
    b: int
    similarity: float


# -- perceptual hash -----------------------------------------------------------------------------


def _pool(grey: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S) -> (N, size, size) float32 by block averaging (S a multiple of size)."""
    n, s, _ = grey.shape
    f = s // size
    return grey.astype(np.float32).reshape(n, size, f, size, f).mean(axis=(2, 4))


def phash(grey: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hashes (uint64, one per row) of (N, S, S) grey thumbnails."""
    from scipy.fft import dctn  # start-up: scipy on first use

    if len(grey) == 0:
        return np.zeros(0, np.uint64)
    low = dctn(_pool(grey, 32), norm="ortho", axes=(1, 2))[:, :8, :8].reshape(len(grey), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def hamming_candidates(hashes: np.ndarray, max_bits: int = CANDIDATE_BITS) -> np.ndarray:
    """(P, 2) index pairs i < j whose hashes differ in at most ``max_bits`` bits (blocked all-pairs:
    10,000 hashes are 50 M XOR+popcounts, well under a second)."""
    n = len(hashes)
    pairs = []
    for start in range(0, n, _ROW_BLOCK):
        block = hashes[start : start + _ROW_BLOCK]
        dist = np.bitwise_count(block[:, None] ^ hashes[None, :])
        i, j = np.nonzero(dist <= max_bits)
        i = i + start
        keep = j > i
        pairs.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


# -- verification --------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _crop_grid(size: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resampling of every crop on the grid (including no crop) back to ``size`` samples:
    (K, size, size) matrices ``out = M[k] @ x``, and the same side by side as one (size, K * size)
    matrix, so that resampling many profiles under every crop is one BLAS call."""
    steps = np.arange(0, MAX_CROP + 1e-9, step)
    crops = [(lo, cut) for lo in steps for cut in steps if lo + cut <= MAX_CROP + 1e-9]
    lo = np.array([c[0] for c in crops])[:, None]
    keep = 1 - np.array([c[0] + c[1] for c in crops])[:, None]
    x = np.clip(lo * size + (np.arange(size)[None, :] + 0.5) * keep - 0.5, 0, size - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, size - 1)
    f = (x - i0).astype(np.float32)
    k = len(crops)
    mats = np.zeros((k, size, size), np.float32)  # mats[k, out, in]
    rows = np.arange(size)[None, :].repeat(k, 0)
    ks = np.arange(k)[:, None].repeat(size, 1)
    np.add.at(mats, (ks, rows, i0), 1 - f)
    np.add.at(mats, (ks, rows, i1), f)
    return mats, np.ascontiguousarray(mats.transpose(2, 0, 1).reshape(size, k * size))


def _znorm(v: np.ndarray) -> np.ndarray:
    v = v - v.mean(axis=-1, keepdims=True)
    return v / (np.sqrt(np.einsum("...i,...i->...", v, v))[..., None] + 1e-6)


@dataclass
class _Level:
    """Thumbnails at one size, with their column and row intensity profiles."""

    img: np.ndarray  # (N, S, S) float32
    cols: np.ndarray  # (N, S): mean over rows
    rows: np.ndarray  # (N, S): mean over columns

    @classmethod
    def of(cls, grey: np.ndarray, size: int) -> _Level:
        img = _pool(grey, size)
        return cls(img, img.mean(axis=1), img.mean(axis=2))


def _registered_ncc(
    lv: _Level, big: np.ndarray, small: np.ndarray, step: float, blocks: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """For index arrays ``big``/``small``: NCC of each ``small`` image with the crop of its ``big``
    image that best explains it, and (``blocks``) the worst block's difference (see below)."""
    n, size = len(big), lv.img.shape[-1]
    mats, side_by_side = _crop_grid(size, step)
    k = len(mats)

    def best_crop(profile: np.ndarray, target: np.ndarray) -> np.ndarray:
        # every crop of each (S,) intensity profile resampled, (P, K, S); the best match to the target's
        resampled = (profile @ side_by_side).reshape(n, k, size)
        return np.argmax(np.einsum("pks,ps->pk", _znorm(resampled), _znorm(target)), axis=1)

    kx = best_crop(lv.cols[big], lv.cols[small])
    ky = best_crop(lv.rows[big], lv.rows[small])
    warped = mats[ky] @ lv.img[big] @ mats[kx].transpose(0, 2, 1)
    zw, zs = _znorm(warped.reshape(n, -1)), _znorm(lv.img[small].reshape(n, -1))
    ncc = np.einsum("pi,pi->p", zw, zs)
    if not blocks:
        return ncc, None
    # The worst 1/8 x 1/8 block: mean squared difference of the standardised images there (the
    # whole-image mean is 2 * (1 - ncc)). A copy differs a little everywhere; two photos of one
    # scene differ a lot somewhere (a moved finger), which a whole-image score averages away.
    b = size // 8
    sq = ((zw - zs) ** 2).reshape(n, 8, b, 8, b)
    worst = np.einsum("pibjc->pij", sq).reshape(n, 64).max(axis=1) * (size * size / (b * b))
    return ncc, worst


def _similarity_at(
    lv: _Level, pairs: np.ndarray, step: float, blocks: bool, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Both directions (either image may be the crop of the other); the better one counts. Chunks
    run on a thread pool (numpy releases the GIL in BLAS and ufuncs)."""
    out = np.empty(len(pairs), np.float32)
    worst = np.zeros(len(pairs), np.float32)

    def work(s: int) -> None:
        a, b = pairs[s : s + chunk, 0], pairs[s : s + chunk, 1]
        (n1, w1), (n2, w2) = _registered_ncc(lv, a, b, step, blocks), _registered_ncc(lv, b, a, step, blocks)
        first = n1 >= n2
        out[s : s + chunk] = np.where(first, n1, n2)
        if blocks:
            worst[s : s + chunk] = np.where(first, w1, w2)

    starts = range(0, len(pairs), chunk)
    if len(starts) > 1:
        with ThreadPoolExecutor(max_workers=cpu_count()) as pool:
            list(pool.map(work, starts))
    else:
        for s in starts:
            work(s)
    return out, worst


def similarity(grey: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (P, 2) index pairs into (N, S, S) grey thumbnails: the registered NCC (see the module
    docstring), in [-1, 1], and the worst block's mean squared difference of the standardised pair
    (0 = identical; only computed for pairs that pass the cheap stage, else 0).

    Scored at 32x32 with 2% crop steps first (a fraction of the cost; copies scored at least 0.92
    there), and at ``VERIFY_SIZE`` only for the pairs that could pass: homogeneous sets (hand signs
    on one background) give tens of thousands of hash candidates, most settled by the cheap stage.
    """
    pairs = np.asarray(pairs, dtype=np.intp).reshape(-1, 2)
    out, worst = _similarity_at(_Level.of(grey, PREFILTER_SIZE), pairs, 2 * CROP_STEP, blocks=False)
    close = np.nonzero(out >= PREFILTER_THRESHOLD)[0]
    if len(close):
        out[close], worst[close] = _similarity_at(
            _Level.of(grey, VERIFY_SIZE), pairs[close], CROP_STEP, blocks=True
        )
    return out, worst


def _screen(grey: np.ndarray, pairs: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
    """Cheap tests a candidate pair must pass before registration:

    * plain NCC of 8x8 grey thumbnails >= ``SCREEN_NCC``: at 8x8 a 5% crop moves the content by
      under half a pixel, so copies pass (the lowest measured: 0.67, 5% off one corner), while most
      pairs that merely share a colour gradient do not;
    * with ``rgb`` (N, S, S, 3) thumbnails: mean absolute difference of 4x4 RGB thumbnails <=
      ``COLOUR_LIMIT`` (0..255). The grey checks cannot tell a red picture from a blue one with the
      same layout; copies measured at most 16 (5% off one corner), distinct look-alikes from 25 up.
    """
    tiny = _znorm(_pool(grey, 8).reshape(len(grey), 64))
    colour = None
    if rgb is not None:
        n, s = rgb.shape[:2]
        colour = rgb.astype(np.float32).reshape(n, 4, s // 4, 4, s // 4, 3).mean(axis=(2, 4)).reshape(n, 48)
    keep = np.empty(len(pairs), bool)
    step = 65536
    for s in range(0, len(pairs), step):
        a, b = pairs[s : s + step, 0], pairs[s : s + step, 1]
        ok = np.einsum("pi,pi->p", tiny[a], tiny[b]) >= SCREEN_NCC
        if colour is not None:
            ok &= np.abs(colour[a] - colour[b]).mean(axis=1) <= COLOUR_LIMIT
        keep[s : s + step] = ok
    return keep


def near_duplicates(
    grey: np.ndarray,
    rgb: np.ndarray | None = None,
    threshold: float = NEAR_THRESHOLD,
    candidate_bits: int = CANDIDATE_BITS,
    hashes: np.ndarray | None = None,
) -> list[Match]:
    """Verified near-duplicate pairs among (N, S, S) grey thumbnails (pass one row per exact group;
    ``rgb``, the same rows' colour thumbnails, adds the colour screen)."""
    if hashes is None:
        hashes = phash(grey)
    pairs = hamming_candidates(hashes, candidate_bits)
    pairs = pairs[_screen(grey, pairs, rgb)]
    if len(pairs) == 0:
        return []
    sims, worst = similarity(grey, pairs)
    keep = (sims >= threshold) & (worst <= WORST_BLOCK_LIMIT)
    return [Match(int(i), int(j), float(s)) for (i, j), s in zip(pairs[keep], sims[keep])]


def components(n: int, edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected groups (two or more members) of ``n`` nodes joined by ``edges`` (union-find)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]
