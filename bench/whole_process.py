# ruff: noqa: E501 - long Markdown prose lines in the printed report
"""Whole-process comparisons on small data: what a user feels from typing the command to getting the prompt back.

    python bench/whole_process.py                      # both comparisons, 3 repetitions (~8 min idle, 2 cores)
    python bench/whole_process.py --quick --reps 1     # 24 images per class, fewer epochs: checks it runs
    python bench/whole_process.py --only B --json /tmp/whole.json --keras-python /path/to/venv/bin/python

A: ``convnets train alpaca --model mobilenet_v2 --image-size 160 --epochs 2`` (from scratch, every other
   option the tool's default) against the plain torchvision script a user would write instead
   (ImageFolder, seeded 80/20 ``random_split``, ``mobilenet_v2(num_classes=2)``, Adam, DataLoader with
   2 workers, validation accuracy each epoch, state dict saved at the end).
B: frozen-base transfer, ``convnets train alpaca --model mobilenet_v2 --weights mobilenet_v2_imagenet.pth
   --normalize inception --image-size 160 --freeze base --epochs 10`` against the Keras transfer-learning
   guide's way (``keras.applications.MobileNetV2(include_top=False)``, ``base.trainable = False``,
   GAP -> Dropout -> Dense, ``image_dataset_from_directory(validation_split=0.2, seed=...)``, ``fit``
   10 epochs, model saved). Keras has ``weights=None`` (offline; the same network, so the same time).

Each process is timed from its start to its exit (``subprocess`` wall time, imports and writing the
results included). Repetitions interleave the two sides of a comparison and alternate which goes
first; the ratio peer/ours is taken per repetition (> 1: convnets is faster). Every process prints
one line per epoch; the time each line arrives splits a run into start-up (process start to the
first epoch's start), the feature cache (convnets' frozen-base runs), the epochs, and the finish
(last epoch's end to exit: best weights, plots, the OOD detector, saving).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, SHARED_DATA, describe_machine  # noqa: E402

WEIGHTS_FILE = "mobilenet_v2_imagenet.pth"  # torchvision layout, wants [-1, 1] input (weights/README.md)
SIZE = 160
EPOCHS = {"A": 2, "B": 10}
QUICK_EPOCHS = {"A": 1, "B": 2}
QUICK_PER_CLASS = 24
GOALS = {"A": 1.3, "B": 4.0}  # issue #15 item 3
TITLES = {
    "A": "MobileNetV2 from scratch, 2 epochs: convnets vs a plain torchvision script",
    "B": "Frozen-base transfer, 10 epochs: convnets (--freeze base) vs Keras 3 (the transfer-learning guide)",
}

# The script a torchvision user writes for comparison A (argv: data, out dir, epochs, image size).
TORCHVISION_SCRIPT = """\
import sys
import time

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, random_split
from torchvision import datasets, transforms


def main():
    data_dir, out_dir, epochs, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    transform = transforms.Compose([
        transforms.Resize(size),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    dataset = datasets.ImageFolder(data_dir, transform=transform)
    n_val = int(0.2 * len(dataset))
    train_set, val_set = random_split(
        dataset, [len(dataset) - n_val, n_val], generator=torch.Generator().manual_seed(0)
    )
    train_loader = DataLoader(train_set, batch_size=32, shuffle=True, num_workers=2)
    val_loader = DataLoader(val_set, batch_size=32, num_workers=2)
    model = torchvision.models.mobilenet_v2(num_classes=len(dataset.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.4f} val acc {correct / n_val:.4f} "
              f"time {time.perf_counter() - start:.3f}s", flush=True)
    torch.save(model.state_dict(), f"{out_dir}/model.pt")


if __name__ == "__main__":
    main()
"""

# The Keras transfer-learning guide's way for comparison B (argv: data, out dir, epochs, image size).
# Preprocessing as the guide's Rescaling alternative to preprocess_input: [-1, 1], MobileNetV2's input.
KERAS_SCRIPT = """\
import sys
import time

import keras


class EpochTime(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        print(f"epoch {epoch + 1}/{self.params['epochs']} val acc {logs.get('val_accuracy', 0):.4f} "
              f"time {time.perf_counter() - self.start:.3f}s", flush=True)


def main():
    data_dir, out_dir, epochs, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    common = dict(validation_split=0.2, seed=0, image_size=(size, size), batch_size=32)
    train_ds = keras.utils.image_dataset_from_directory(data_dir, subset="training", **common)
    val_ds = keras.utils.image_dataset_from_directory(data_dir, subset="validation", **common)
    n_classes = len(train_ds.class_names)
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None)
    base.trainable = False
    inputs = keras.Input(shape=(size, size, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1)(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(n_classes)(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, callbacks=[EpochTime()])
    model.save(f"{out_dir}/model.keras")


if __name__ == "__main__":
    main()
"""

EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/(\d+)\b")
PEER_SECONDS = re.compile(r"time ([\d.]+)s\s*$")
CACHE_LINE = re.compile(r"^cached base features: .* in ([\d.]+)s")


@dataclass
class ProcessRun:
    """One timed process: its wall time and where the time went."""

    wall_s: float
    epochs_s: list[float] = field(default_factory=list)  # each epoch's own timing (the program's)
    cache_s: float = 0.0  # convnets' frozen-base feature cache, before epoch 1
    startup_s: float | None = None  # process start -> the first epoch (or the feature cache) starts
    finish_s: float | None = None  # the last epoch's line -> process exit
    val_acc: float | None = None  # the last epoch's (peers) / the best (convnets)

    @property
    def training_s(self) -> float:
        return self.cache_s + sum(self.epochs_s)


def run_process(cmd: list[str], env: dict[str, str], log_file: Path, timeout: float) -> tuple[float, list]:
    """Run ``cmd`` to its exit; returns (wall seconds, [(seconds since start, line)]). Output is read
    as it comes (the children run unbuffered) so each line carries its arrival time."""
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(ROOT)
    ) as proc:
        deadline = t0 + timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))
            if time.perf_counter() > deadline:
                proc.kill()
                break
        code = proc.wait()
    wall = time.perf_counter() - t0
    log_file.write_text("\n".join(f"{t:8.3f}  {s}" for t, s in lines) + "\n")
    if code != 0:
        tail = "\n".join(s for _, s in lines[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited with {code} (log {log_file}):\n{tail}")
    return wall, lines


def split_times(wall: float, lines: list, epochs_s: list[float], cache_s: float = 0.0) -> ProcessRun:
    """Start-up / training / finish from the arrival times of the epoch lines."""
    ends = [t for t, s in lines if EPOCH_LINE.match(s.strip())]
    run = ProcessRun(wall, epochs_s, cache_s)
    if ends and epochs_s:
        run.startup_s = ends[0] - epochs_s[0] - cache_s
        run.finish_s = wall - ends[-1]
    return run


def ours(which: str, data: Path, weights: Path, epochs: int, work: Path, env: dict, tag: str) -> ProcessRun:
    out = work / f"ours-{which}-{tag}"
    cmd = [*convnets_command(), "train", str(data), "--model", "mobilenet_v2", "--image-size", str(SIZE)]
    if which == "B":
        cmd += ["--weights", str(weights), "--normalize", "inception", "--freeze", "base"]
    cmd += ["--epochs", str(epochs), "--out", str(out)]
    wall, lines = run_process(cmd, env, work / f"ours-{which}-{tag}.log", timeout=1800)
    records = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines() if s.strip()]
    cache = [float(m.group(1)) for _, s in lines if (m := CACHE_LINE.match(s.strip()))]
    run = split_times(wall, lines, [r["seconds"] for r in records], sum(cache))
    run.val_acc = max((r["val_acc"] for r in records if r.get("val_acc") is not None), default=None)
    shutil.rmtree(out, ignore_errors=True)
    return run


def peer(
    which: str, python: str, script: Path, data: Path, epochs: int, work: Path, env: dict, tag: str
) -> ProcessRun:
    out = work / f"peer-{which}-{tag}"
    out.mkdir()
    cmd = [python, str(script), str(data), str(out), str(epochs), str(SIZE)]
    wall, lines = run_process(cmd, env, work / f"peer-{which}-{tag}.log", timeout=1800)
    epoch_lines = [s for _, s in lines if EPOCH_LINE.match(s.strip())]
    seconds = [float(m.group(1)) for s in epoch_lines if (m := PEER_SECONDS.search(s))]
    run = split_times(wall, lines, seconds)
    acc = re.search(r"val acc ([\d.]+)", epoch_lines[-1]) if epoch_lines else None
    run.val_acc = float(acc.group(1)) if acc else None
    shutil.rmtree(out, ignore_errors=True)
    return run


def convnets_command() -> list[str]:
    """What a user types: the ``convnets`` script installed next to this Python, else ``-m convnets``."""
    script = Path(sys.executable).parent / "convnets"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "convnets"]


def child_env() -> dict[str, str]:
    """This checkout's convnets first on the path; unbuffered output so epoch lines arrive when printed."""
    src = str(ROOT / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "KERAS_BACKEND": "tensorflow"}


def subset(data: Path, per_class: int, dest: Path) -> Path:
    """The first ``per_class`` images of each class (sorted names), copied, for --quick."""
    for cls in sorted(p for p in data.iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True)
        for f in sorted(p for p in cls.iterdir() if p.is_file())[:per_class]:
            shutil.copy2(f, dest / cls.name / f.name)
    return dest


def warm_page_cache(python: str, keras_python: str, env: dict, which: list[str], log) -> None:
    """Import the libraries once, untimed: the first process after a while reads them from disk, and
    only the repetition that happened to go first would pay it."""
    for exe, mods in [(python, "torch, torchvision, sklearn, matplotlib")] + (
        [(keras_python, "tensorflow, keras")] if "B" in which else []
    ):
        t0 = time.perf_counter()
        subprocess.run([exe, "-c", f"import {mods}"], env=env, check=True, capture_output=True)
        log(f"  page-cache warm-up: import {mods} ({Path(exe).name}) {time.perf_counter() - t0:.1f}s")


def time_all(runs: dict, reps: int, data, weights, epochs, scripts, pythons, work, env, log) -> None:
    """The interleaved repetitions: per comparison, ours then the peer, the other way round next time."""
    for rep in range(reps):
        for w in runs:
            order = ("ours", "peer") if rep % 2 == 0 else ("peer", "ours")
            for side in order:
                if side == "ours":
                    r = ours(w, data, weights, epochs[w], work, env, str(rep))
                else:
                    r = peer(w, pythons[w], scripts[w], data, epochs[w], work, env, str(rep))
                runs[w][side].append(r)
                log(
                    f"  rep {rep + 1}/{reps} {w} {side:>4}: {r.wall_s:6.1f}s (start-up {r.startup_s or 0:.1f}, "
                    f"training {r.training_s:.1f}, finish {r.finish_s or 0:.1f})"
                )


def stat(values: list[float], digits: int = 1) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def part(runs: list[ProcessRun], name: str) -> list[float]:
    return [v for r in runs if (v := getattr(r, name)) is not None]


def markdown(results: dict, machine: dict, args, counts: dict) -> str:
    cpu = f"{machine.get('cpu')}, {machine.get('cores')} cores, flags {' '.join(machine.get('flags', []))}"
    lines = [
        f"Machine: {cpu}; torch {machine.get('torch')}, torchvision {machine.get('torchvision')}, "
        f"tensorflow {machine.get('tensorflow')}, keras {machine.get('keras')}; 1-min load average "
        f"{results['load_start']:.2f} at start, {results['load_end']:.2f} at the end. "
        f"Data: {counts['images']} images ({'--quick subset' if args.quick else 'alpaca'}), {SIZE}x{SIZE}; "
        f"{args.reps} interleaved repetition(s), order alternating. Whole-process wall time, median (min-max) s.",
        "",
    ]
    for which, comp in results["comparisons"].items():
        ours_runs = [ProcessRun(**r) for r in comp["ours"]]
        peer_runs = [ProcessRun(**r) for r in comp["peer"]]
        ratios = comp["ratios"]
        goal = GOALS[which]
        r_med = statistics.median(ratios) if ratios else None
        verdict = (
            "n/a" if r_med is None else ("met" if r_med >= goal else f"missed by {1 - r_med / goal:.0%}")
        )
        lines += [
            f"**{which}. {TITLES[which]}** ({comp['epochs']} epoch(s))",
            "",
            f"convnets: `{comp['command']}`; peer: {comp['peer_name']}.",
            "",
            "| process | wall s | start-up s | feature cache s | epochs s | finish s | val acc |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, runs in (("convnets", ours_runs), (comp["peer_name"], peer_runs)):
            lines.append(
                f"| {name} | {stat(part(runs, 'wall_s'))} | {stat(part(runs, 'startup_s'))} | "
                f"{stat(part(runs, 'cache_s')) if any(r.cache_s for r in runs) else '-'} | "
                f"{stat([sum(r.epochs_s) for r in runs])} | {stat(part(runs, 'finish_s'))} | "
                f"{stat(part(runs, 'val_acc'), 3)} |"
            )
        lines += [
            "",
            f"Ratio peer/ours per repetition: {', '.join(f'{r:.2f}x' for r in ratios) or 'n/a'}; "
            f"median **{'n/a' if r_med is None else f'{r_med:.2f}x'}** (goal {goal}x: {verdict}).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_PER_CLASS} images per class, 1/2 epochs"
    )
    parser.add_argument("--only", default="A,B", help="comparisons to run: A, B or A,B (default)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "alpaca", help="image folder")
    parser.add_argument(
        "--weights",
        type=Path,
        default=SHARED_DATA / "weights" / WEIGHTS_FILE,
        help="MobileNetV2 state dict (B)",
    )
    parser.add_argument(
        "--keras-python", default=sys.executable, help="Python with tensorflow + keras 3 for B's peer"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (process logs)")
    args = parser.parse_args(argv)
    which = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    if not which or any(w not in EPOCHS for w in which):
        parser.error(f"--only: expected A, B or A,B, got {args.only!r}")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if not args.data.is_dir():
        print(f"skipped: no image folder at {args.data} (the shared data, ../shared/data, is missing)")
        return 0
    if "B" in which and not args.weights.is_file():
        print(
            f"skipped: comparison B needs the MobileNetV2 weights at {args.weights} (../shared/data/weights)"
        )
        return 0
    env = child_env()
    if "B" in which:
        check = subprocess.run(
            [args.keras_python, "-c", "import keras, tensorflow"], env=env, capture_output=True, text=True
        )
        if check.returncode != 0:
            print(
                f"skipped: comparison B needs tensorflow + keras 3 in {args.keras_python} "
                "(pip install 'tensorflow-cpu>=2.16' 'keras>=3', or pass --keras-python)"
            )
            return 0

    log = print
    load_start = os.getloadavg()[0]
    machine = describe_machine()
    log(f"{machine['cpu']}, {machine['cores']} cores, load average {load_start:.2f}")
    work = Path(tempfile.mkdtemp(prefix="convnets-whole-"))
    try:
        data = subset(args.data, QUICK_PER_CLASS, work / "data") if args.quick else args.data.resolve()
        counts = {"images": sum(1 for p in data.rglob("*") if p.is_file())}
        epochs = QUICK_EPOCHS if args.quick else EPOCHS
        scripts = {"A": work / "torchvision_train.py", "B": work / "keras_transfer.py"}
        scripts["A"].write_text(TORCHVISION_SCRIPT)
        scripts["B"].write_text(KERAS_SCRIPT)
        pythons = {"A": sys.executable, "B": args.keras_python}
        peer_names = {"A": "plain torchvision script", "B": "Keras 3 / TF (guide's way)"}
        warm_page_cache(sys.executable, args.keras_python, env, which, log)
        runs = {w: {"ours": [], "peer": []} for w in which}
        try:
            time_all(runs, args.reps, data, args.weights, epochs, scripts, pythons, work, env, log)
        except RuntimeError as e:
            print(f"failed: {e}", file=sys.stderr)
            args.keep = True
            return 1

        results = {
            "load_start": load_start,
            "load_end": os.getloadavg()[0],
            "quick": args.quick,
            "reps": args.reps,
            "images": counts["images"],
            "size": SIZE,
            "comparisons": {},
        }
        for w in which:
            o, p = runs[w]["ours"], runs[w]["peer"]
            cmd = ["convnets", "train", "DATA", "--model", "mobilenet_v2", "--image-size", str(SIZE)]
            if w == "B":
                cmd += ["--weights", WEIGHTS_FILE, "--normalize", "inception", "--freeze", "base"]
            results["comparisons"][w] = {
                "epochs": epochs[w],
                "command": " ".join(cmd + ["--epochs", str(epochs[w]), "--out", "TMP"]),
                "peer_name": peer_names[w],
                "peer_script": scripts[w].read_text(),
                "ours": [asdict(r) for r in o],
                "peer": [asdict(r) for r in p],
                "ratios": [b.wall_s / a.wall_s for a, b in zip(o, p)],
            }
        md = markdown(results, machine, args, counts)
        print()
        print(md)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine, **results, "markdown": md}, indent=2))
            log(f"wrote {args.json}")
    finally:
        if args.keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
