"""Start-up of the three commands people wait on, this checkout against another one (e.g. the code
before a refactor), interleaved in the same run:

    .venv/bin/python bench/startup.py --old-src /path/to/old/checkout/src [--reps 7]

* ``convnets --help``;
* cold ``convnets predict RUN image.png`` on an exported run (a LeNet-5 trained one epoch on digits here);
* ``convnets serve RUN``: launch to the first 200 from ``/readyz``.

Each repetition runs every command under both source trees in turn (alternating which goes first), so
load from the shared machine hits both alike. Prints Markdown; ``--json FILE`` keeps the raw times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import describe_machine
from serve import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def _env(src: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": src}


def _wall(cmd: list[str], src: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=_env(src), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _serve_ready(run: Path, src: str) -> float:
    port = free_port()
    cmd = [sys.executable, "-m", "convnets", "serve", str(run), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=_env(src), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return wait_ready(port, proc, timeout=120)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def make_run(work: Path) -> tuple[Path, Path]:
    """A trained, exported LeNet-5 run and one image to predict (made with this checkout)."""
    from PIL import Image

    run = work / "run"
    src = str(ROOT / "src")
    py = sys.executable
    subprocess.run(
        [py, "-m", "convnets", "train", "digits", "--model", "lenet5", "--epochs", "1", "--out", str(run)],
        env=_env(src),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    export = [py, "-m", "convnets", "export", str(run)]
    subprocess.run(export, env=_env(src), check=True, stdout=subprocess.DEVNULL)
    image = work / "digit.png"
    Image.new("L", (32, 32), 128).save(image)
    return run, image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old-src", required=True, help="the other checkout's src/ folder")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    srcs = {"this": str(ROOT / "src"), "old": str(Path(args.old_src).resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        run, image = make_run(Path(tmp))
        py = sys.executable
        commands = {
            "convnets --help": lambda src: _wall([py, "-m", "convnets", "--help"], src),
            "cold predict (exported run)": lambda src: _wall(
                [py, "-m", "convnets", "predict", str(run), str(image)], src
            ),
            "serve: launch to /readyz": lambda src: _serve_ready(run, src),
        }
        for measure in commands.values():  # warm the page cache and the engines' caches once per tree
            for src in srcs.values():
                measure(src)
        times = {c: {s: [] for s in srcs} for c in commands}
        for rep in range(args.reps):
            order = list(srcs.items()) if rep % 2 == 0 else list(reversed(srcs.items()))
            for name, measure in commands.items():
                for tree, src in order:
                    times[name][tree].append(measure(src))

    machine = describe_machine()
    flags = " ".join(machine["flags"])
    print(f"CPU: {machine['cpu']}, {machine['cores']} cores, flags {flags}; load average at the end")
    print(f"{os.getloadavg()[0]:.2f}. Command: `python bench/startup.py --old-src ... --reps {args.reps}`.")
    print()
    print("| command | this checkout, median s | other checkout, median s | this / other |")
    print("|---|---:|---:|---:|")
    for name, by_tree in times.items():
        this, old = statistics.median(by_tree["this"]), statistics.median(by_tree["old"])
        print(f"| {name} | {this:.3f} | {old:.3f} | {this / old:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "times": times}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
