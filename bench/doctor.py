"""`convnets doctor`'s duplicate pass: speed on 10,000 images, and the near-duplicate calibration.

Speed (default): a synthetic class-per-folder set of N JPEGs (100-300 px, train/ + test/) with
planted copies of four kinds (exact, re-encoded JPEG, resized, 5% cropped) copied from train/ into
test/, then ``diagnose(labels=False)``: one decode per file, pixel hash, pHash, candidate pairs,
verification. Reported: wall time per phase, images/s, planted copies found, false groups. The peer
is what people reach for instead: ``imagehash.phash`` on every file (PIL open + hash, in the same
thread pool size) -- only the hashing, no pair search, no verification, no exact check -- with the
repetitions interleaved (doctor, imagehash, doctor, imagehash).

``--calibrate``: real photos (../shared/data alpaca + SIGNS train) and copies of each, scores of
copies against their originals and of all distinct candidate pairs: what the thresholds in
``convnets/doctor/duplicates.py`` rest on.

    python bench/doctor.py [--images 10000] [--reps 2] [--write]
    python bench/doctor.py --calibrate [--write]

``--write`` replaces the "Doctor" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))
SHARED = Path(os.environ.get("CONVNETS_SHARED_DATA", BENCH.parent.parent / "shared" / "data"))
SECTION = "## Doctor (data checks)"


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        "?",
    )
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    cores = len(os.sched_getaffinity(0))
    return f"{cpu}, {cores} cores ({', '.join(isa) or 'no AVX-512'}), Python {platform.python_version()}"


def make_set(root: Path, n: int, seed: int = 0) -> dict[str, str]:
    """n JPEGs 100-300 px in 10 classes (9:1 train/test) plus n/100 planted copies in test/; returns
    {copy path: original path}."""
    from PIL import Image

    from convnets.doctor.synthetic import COPY_KINDS, make_copy, random_picture

    rng = np.random.default_rng(seed)
    classes = 10
    jobs = []
    for i in range(n):
        split = "test" if i % 10 == 9 else "train"
        c = (i // 10) % classes
        size = (int(rng.integers(100, 301)), int(rng.integers(100, 301)))
        jobs.append((root / split / f"c{c}" / f"{i:05d}.jpg", size, c / classes, int(rng.integers(1 << 30))))

    def make(job) -> None:
        path, size, hue, s = job
        path.parent.mkdir(parents=True, exist_ok=True)
        random_picture(np.random.default_rng(s), size, hue).save(path, "JPEG", quality=90)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(make, jobs))
    planted = {}
    train = [j[0] for j in jobs if j[0].parts[-3] == "train"]
    for k, idx in enumerate(rng.choice(len(train), n // 100, replace=False)):
        original = train[idx]
        kind = COPY_KINDS[k % len(COPY_KINDS)]
        copy, ext = make_copy(Image.open(original).convert("RGB"), kind, rng)
        dest = root / "test" / original.parent.name / f"copy_{kind}_{original.stem}{ext}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if kind == "exact":
            dest = dest.with_suffix(".jpg")
            dest.write_bytes(original.read_bytes())
        else:
            copy.save(dest, "JPEG", quality=90) if ext == ".jpg" else copy.save(dest)
        planted[str(dest)] = str(original)
    return planted


def run_doctor(root: Path) -> tuple[float, dict, object]:
    from convnets.doctor import diagnose

    t = time.perf_counter()
    report = diagnose(root, labels=False, progress=False)
    return time.perf_counter() - t, report.timings, report


def run_imagehash(files: list[str]) -> float:
    import imagehash
    from PIL import Image

    from convnets.data.decode import cpu_count

    def one(path: str):
        with Image.open(path) as im:
            return imagehash.phash(im)

    t = time.perf_counter()
    with ThreadPoolExecutor(min(8, 2 * cpu_count())) as pool:
        list(pool.map(one, files, chunksize=16))
    return time.perf_counter() - t


def speed(args) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="doctor_bench_"))
    t = time.perf_counter()
    planted = make_set(tmp, args.images)
    print(
        f"generated {args.images} + {len(planted)} images in {time.perf_counter() - t:.1f} s", file=sys.stderr
    )
    files = [str(p) for p in tmp.rglob("*.*")]
    load0 = os.getloadavg()[0]
    doctor_s, imagehash_s, timings, report = [], [], None, None
    for _ in range(args.reps):
        seconds, timings, report = run_doctor(tmp)
        doctor_s.append(seconds)
        imagehash_s.append(run_imagehash(files))
        print(f"doctor {seconds:.1f} s {timings}; imagehash {imagehash_s[-1]:.1f} s", file=sys.stderr)
    load1 = os.getloadavg()[0]
    if args.keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    group_of = {f.path: id(g) for g in report.duplicates for f in g.files}
    found = sum(1 for c, o in planted.items() if c in group_of and group_of[c] == group_of.get(o))
    truth = {**{f: f for f in files}, **planted}
    false = [g for g in report.duplicates if len({truth[f.path] for f in g.files}) > 1]
    for g in false:
        print(
            f"distinct pictures grouped ({g.kind} {g.similarity}):",
            *[f.path for f in g.files],
            file=sys.stderr,
        )
    false_groups = len(false)
    kinds: dict[str, list[int]] = {}
    for c, o in planted.items():
        kind = Path(c).name.split("_")[1]
        kinds.setdefault(kind, [0, 0])
        kinds[kind][1] += 1
        kinds[kind][0] += c in group_of and group_of[c] == group_of.get(o)
    best = min(doctor_s)
    lines = [
        f"Duplicate pass (`diagnose(labels=False)`: one decode per file, pixel hash, pHash, candidate pairs, "
        f"verification) on {len(files):,} synthetic JPEGs (100-300 px, 10 classes, train/ + test/) with "
        f"{len(planted)} planted copies in test/. "
        f"`python bench/doctor.py --images {args.images} --reps {args.reps}`. Machine: {machine()}; "
        f"1-min load average {load0:.1f} at start, {load1:.1f} at the end (shared machine).",
        "",
        "| what | wall s (min of reps; all reps) | images/s |",
        "|---|---|---|",
        f"| convnets doctor duplicate pass | {best:.1f} ({', '.join(f'{s:.1f}' for s in doctor_s)}) | "
        f"{len(files) / best:,.0f} |",
        f"| imagehash.phash per file (hash only, no pairs, no verification) | {min(imagehash_s):.1f} "
        f"({', '.join(f'{s:.1f}' for s in imagehash_s)}) | {len(files) / min(imagehash_s):,.0f} |",
        "",
        "Phases of the last doctor rep (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()) + ".",
        f"Planted copies found: {found}/{len(planted)} ("
        + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in kinds.items())
        + f"); groups joining distinct pictures: {false_groups}. Goal: under 60 s on 2 cores: "
        + ("met." if best < 60 else "missed."),
    ]
    return "\n".join(lines)


def calibrate(args) -> str:
    from convnets.doctor import duplicates as d
    from convnets.doctor.scan import decode_rgb, thumbnails
    from convnets.doctor.synthetic import make_copy

    files = sorted((SHARED / "alpaca").glob("*/*.jpg")) + sorted((SHARED / "signs" / "train").glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no photos under {SHARED}: --calibrate needs ../shared/data")
    rng = np.random.default_rng(0)

    def corner(im):
        w, h = im.size
        return im.crop((int(0.05 * w), int(0.05 * h), w, h))

    kinds = {
        "JPEG q40-70": lambda im: make_copy(im, "jpeg", rng)[0],
        "resized x0.5-1.5": lambda im: make_copy(im, "resized", rng)[0],
        "5% cropped (split between edges)": lambda im: make_copy(im, "cropped", rng)[0],
        "5% cropped from one corner": corner,
    }
    orig = [thumbnails(decode_rgb(str(f))[1]) for f in files]
    n = len(orig)
    copies = {kind: [] for kind in kinds}
    for f in files:
        im = decode_rgb(str(f))[1]
        for kind, make in kinds.items():
            copies[kind].append(thumbnails(make(im)))
    grey, rgb = np.stack([g for g, _ in orig]), np.stack([c for _, c in orig])
    hashes = d.phash(grey)
    rows = [
        f"Near-duplicate calibration on {n} real photos (alpaca + SIGNS train, `python bench/doctor.py "
        f"--calibrate`): each photo against a copy of it, through every test doctor applies (pHash <= "
        f"{d.CANDIDATE_BITS} bits, 8x8 NCC >= {d.SCREEN_NCC}, 4x4 colour difference <= {d.COLOUR_LIMIT}, "
        f"registered similarity >= {d.NEAR_THRESHOLD}, worst block <= {d.WORST_BLOCK_LIMIT}).",
        "",
        "| copy | pHash bits p99 / max | similarity min / p1 | worst block p99 / max | found |",
        "|---|---|---|---|---|",
    ]
    pairs = np.stack([np.arange(n), np.arange(n) + n], axis=1)
    for kind, thumbs in copies.items():
        g2, c2 = np.stack([g for g, _ in thumbs]), np.stack([c for _, c in thumbs])
        both_g, both_c = np.concatenate([grey, g2]), np.concatenate([rgb, c2])
        bits = np.bitwise_count(hashes ^ d.phash(g2))
        sim, worst = d.similarity(both_g, pairs)
        ok = (bits <= d.CANDIDATE_BITS) & d._screen(both_g, pairs, both_c)
        ok &= (sim >= d.NEAR_THRESHOLD) & (worst <= d.WORST_BLOCK_LIMIT)
        rows.append(
            f"| {kind} | {np.percentile(bits, 99):.0f} / {bits.max()} | {sim.min():.3f} / "
            f"{np.percentile(sim, 1):.3f} | {np.percentile(worst, 99):.2f} / {worst.max():.2f} | "
            f"{ok.sum()}/{n} ({ok.mean():.1%}) |"
        )
    t = time.perf_counter()
    matches = d.near_duplicates(grey, rgb)
    seconds = time.perf_counter() - t
    exact = sum(m.similarity > 0.9999 for m in matches)
    rows += [
        "",
        f"Distinct photos: {len(d.hamming_candidates(hashes)):,} pHash candidate pairs of "
        f"{n * (n - 1) // 2:,}; `near_duplicates` took {seconds:.1f} s and flagged {len(matches) - exact} "
        f"pairs besides {exact} exact copies (SIGNS holds many shots of one hand seconds apart).",
    ]
    return "\n".join(rows)


def write_section(text: str, key: str) -> None:
    path = BENCH / "RESULTS.md"
    old = path.read_text()
    marker = f"<!-- doctor:{key} -->"
    block = f"{marker}\n{text}\n{marker}"
    if SECTION not in old:
        old = old.rstrip() + f"\n\n{SECTION}\n\n"
    if marker in old:
        old = re.sub(re.escape(marker) + r".*?" + re.escape(marker), lambda _m: block, old, flags=re.S)
    else:
        start = old.index(SECTION) + len(SECTION)
        nxt = old.find("\n## ", start)
        end = len(old) if nxt < 0 else nxt
        old = old[:end].rstrip() + "\n\n" + block + "\n" + old[end:]
    path.write_text(old)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--calibrate", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the generated folder (its path is printed)")
    p.add_argument(
        "--write", action="store_true", help="replace this part of the Doctor section of RESULTS.md"
    )
    args = p.parse_args()
    text = calibrate(args) if args.calibrate else speed(args)
    print(text)
    if args.write:
        write_section(text, "calibration" if args.calibrate else "speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
