"""Inference backends for an exported run, and cold start: the figures behind ``--backend auto``.

Three parts (``--part speed|accuracy|coldstart``, default all), markdown on stdout, JSON to ``--json``:

* speed: mobilenet_v2 and resnet50 at 224 (random weights, exported the way ``convnets export`` does),
  batch-1 latency and batch-32 throughput for ONNX Runtime fp32 (what ``auto`` ran before), OpenVINO
  fp32 and bf16, and the int8 model (ONNX Runtime's static QDQ quantizer, calibrated on alpaca images)
  on ONNX Runtime and on OpenVINO. All engines live in one process and are timed in turn, repetition by
  repetition (A, B, C, A, B, C...), so load from the other users of a shared machine hits them alike;
  ratios to ONNX Runtime fp32 from the same repetitions.
* accuracy: a real pretrained model, the shared ImageNet MobileNetV2 with a head trained on alpaca
  (``--run``, a run folder of ``convnets train``): validation top-1 of each engine, and the top-1
  change of ``convnets export --int8``; plus the ImageNet model itself (1000 classes) on the same
  images: top-1 agreement with fp32.
* coldstart: wall time of fresh processes: ``convnets --help`` and ``convnets predict RUN one.jpg``
  with the export present, against the same commands from ``--old-src`` (the previous code), interleaved.
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

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SHARED = Path(os.environ.get("CONVNETS_SHARED_DATA", ROOT.parent / "shared" / "data"))
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")


def machine() -> dict:
    from convnets.base.runtime import cpu_flags

    model = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "flags": [f for f in wanted if f in cpu_flags()],
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }


def alpaca_pixels(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    from convnets.data.images import expand_paths, read_image
    from convnets.deploy.engines import pixels_of

    files = expand_paths([SHARED / "alpaca"])
    pick = np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False)
    return pixels_of([read_image(files[i], (size, size)) for i in sorted(pick)])


def make_run(model_name: str, out: Path, size: int = 224) -> Path:
    """A run folder around a random-weight model (what the speed part exports and times)."""
    import torch
    from safetensors.torch import save_file

    from convnets import create_model
    from convnets.base.runs import RunConfig
    from convnets.deploy.engines import ensure_exported

    torch.manual_seed(0)
    model = create_model(model_name).eval()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    RunConfig(
        model=model_name,
        num_classes=1000,
        class_names=[str(i) for i in range(1000)],
        image_size=(size, size),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        normalize="imagenet",
    ).write(out)
    ensure_exported(out)
    return out


def engines_for(run_dir: Path, threads: int, calib: np.ndarray) -> dict:
    from convnets.deploy.engines import OpenVinoEngine, OrtEngine
    from convnets.deploy.quantize import quantize_onnx

    int8 = run_dir / "model.int8.onnx"
    if not int8.exists():
        quantize_onnx(
            run_dir / "model.onnx", int8, lambda: (calib[i : i + 8] for i in range(0, len(calib), 8))
        )
    fp32 = run_dir / "model.onnx"
    return {
        "ort-fp32": OrtEngine(fp32, threads),
        "openvino-fp32": OpenVinoEngine(fp32, threads, "f32"),
        "openvino-bf16": OpenVinoEngine(fp32, threads, "bf16"),
        "ort-int8": OrtEngine(int8, threads, name="int8"),
        "openvino-int8": OpenVinoEngine(int8, threads, name="int8"),
    }


def part_speed(args) -> dict:
    threads = args.threads or len(os.sched_getaffinity(0))
    calib = alpaca_pixels(32)  # random weights: the calibration set only has to be realistic input
    out: dict = {}
    tmp = Path(args.work) / "speed"
    for name in args.models:
        engines = engines_for(make_run(name, tmp / name), threads, calib)
        x1, x32 = calib[:1], np.concatenate([calib] * (32 // len(calib) + 1))[:32]
        calls1 = args.calls1 if name == "mobilenet_v2" else max(3, args.calls1 // 4)
        for e in engines.values():  # compile both shapes, first-call costs
            e.run(x1), e.run(x32), e.run(x1)
        b1 = {k: [] for k in engines}
        b32 = {k: [] for k in engines}
        for _ in range(args.reps):
            for k, e in engines.items():
                t = time.perf_counter()
                for _ in range(calls1):
                    e.run(x1)
                b1[k].append(1000 * (time.perf_counter() - t) / calls1)
                t = time.perf_counter()
                e.run(x32)
                b32[k].append(32 / (time.perf_counter() - t))
        ref1, ref32 = b1["ort-fp32"], b32["ort-fp32"]
        out[name] = {
            k: {
                "engine": engines[k].description,
                "batch1_ms": statistics.median(b1[k]),
                "batch32_img_s": statistics.median(b32[k]),
                # per-repetition ratios to ORT fp32, then their median (same repetition = same load)
                "batch1_speedup": statistics.median(r / v for r, v in zip(ref1, b1[k])),
                "batch32_speedup": statistics.median(v / r for r, v in zip(ref32, b32[k])),
                "batch1_values": b1[k],
                "batch32_values": b32[k],
            }
            for k in engines
        }
        print(f"speed {name} done (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    return out


def _labelled_pixels(run_dir: Path, role: str) -> tuple[np.ndarray, np.ndarray]:
    from convnets.base.runs import RunConfig
    from convnets.data.images import read_image
    from convnets.deploy.engines import pixels_of, split_files

    config = RunConfig.read(run_dir)
    files = split_files(config, role)
    views = [read_image(f, config.image_size, config.in_chans, config.resize) for f, _ in files]
    return pixels_of(views), np.array([y for _, y in files])


def part_accuracy(args) -> dict:
    """Top-1 of each engine on the alpaca run's validation split; the 1000-class ImageNet model's
    top-1 agreement with fp32 on the same images."""
    import shutil

    from convnets.deploy.engines import OpenVinoEngine, OrtEngine, run_batched
    from convnets.deploy.quantize import int8_weight_type, quantize_run

    work = Path(args.work) / "accuracy"
    shutil.rmtree(work, ignore_errors=True)
    run_dir = work / "alpaca"
    shutil.copytree(args.run, run_dir, ignore=shutil.ignore_patterns("model.int8.onnx", "openvino_cache"))
    t = time.perf_counter()
    q = quantize_run(run_dir, calibration_images=args.calibration, max_drop=100)
    quantize_s = time.perf_counter() - t
    pixels, labels = _labelled_pixels(run_dir, "val")
    train_pixels, _ = _labelled_pixels(run_dir, "train")
    out: dict = {"int8_record": q.info.__dict__, "quantize_seconds": quantize_s, "val_images": len(labels)}

    def engines(folder: Path) -> dict:
        fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
        return {
            "ort-fp32": OrtEngine(fp32),
            # bf16 where the CPU has it (under an ISA cap, f32): what `--backend openvino` runs
            f"openvino-{OpenVinoEngine(fp32).precision}": OpenVinoEngine(fp32),
            "ort-int8": OrtEngine(int8, name="int8"),
            "openvino-int8": OpenVinoEngine(int8, name="int8"),
        }

    preds = {}
    out["not_run"] = {}
    for k, e in engines(run_dir).items():
        try:
            preds[k] = run_batched(e, pixels).argmax(1)
        except RuntimeError as error:  # e.g. OpenVINO's AVX2 kernels and u8 weights
            out["not_run"][k] = str(error).strip().splitlines()[-1][:160]
    # The other int8 weight type than this CPU's default (u8 where there is no VNNI, issue #22), on
    # ONNX Runtime, and 7-bit s8 weights (the guide's other fix), so any CPU shows what each costs.
    from convnets.deploy.quantize import quantize_onnx

    other = int8_weight_type() == "s8" and "u8" or "s8"
    for tag, kwargs in ((f"{other}-weights", {"weights": other}), ("s8-7bit", {"reduce_range": True})):
        path = work / f"int8-{tag}.onnx"
        quantize_onnx(
            run_dir / "model.onnx",
            path,
            lambda: (train_pixels[i : i + 8] for i in range(0, min(len(train_pixels), args.calibration), 8)),
            **kwargs,
        )
        preds[f"ort-int8-{tag}"] = run_batched(OrtEngine(path, name="int8"), pixels).argmax(1)
        try:
            preds[f"openvino-int8-{tag}"] = run_batched(OpenVinoEngine(path, name="int8"), pixels).argmax(1)
        except RuntimeError as error:
            out["not_run"][f"openvino-int8-{tag}"] = str(error).strip().splitlines()[-1][:160]
    out["alpaca"] = {
        k: {
            "top1": float((p == labels).mean()),
            "delta_points": 100 * float((p == labels).mean() - (preds["ort-fp32"] == labels).mean()),
            "agreement": float((p == preds["ort-fp32"]).mean()),
        }
        for k, p in preds.items()
    }

    # The ImageNet model itself: no labels here, so agreement with fp32 over 1000 classes (a far
    # finer test than a 2-class head), on the alpaca validation images, calibrated on the train ones.
    from convnets.base.runs import RunConfig

    imagenet = make_imagenet_run(work / "imagenet", RunConfig.read(run_dir).image_size)
    quantize_imagenet = imagenet / "model.int8.onnx"
    from convnets.deploy.quantize import quantize_onnx

    quantize_onnx(
        imagenet / "model.onnx",
        quantize_imagenet,
        lambda: (train_pixels[i : i + 8] for i in range(0, min(len(train_pixels), args.calibration), 8)),
    )
    logits = {}
    for k, e in engines(imagenet).items():
        try:
            logits[k] = run_batched(e, pixels)
        except RuntimeError as error:
            out["not_run"][f"imagenet {k}"] = str(error).strip().splitlines()[-1][:160]
    ref = logits["ort-fp32"]
    top5_ref = np.argsort(-ref, 1)[:, :5]
    out["imagenet"] = {
        k: {
            "top1_agreement": float((v.argmax(1) == ref.argmax(1)).mean()),
            "top1_in_fp32_top5": float(np.mean([a in t for a, t in zip(v.argmax(1), top5_ref)])),
        }
        for k, v in logits.items()
    }
    return out


def make_imagenet_run(out: Path, image_size: tuple[int, int] = (224, 224)) -> Path:
    """The shared ImageNet MobileNetV2 (wants [-1, 1] input) as a run folder, exported, taking
    ``image_size`` input (the alpaca run's, so both are fed the same pixels)."""
    import torch
    from safetensors.torch import save_file

    from convnets import create_model
    from convnets.base.runs import RunConfig
    from convnets.deploy.engines import ensure_exported

    weights = SHARED / "weights"
    model = create_model("mobilenet_v2").eval()
    model.load_state_dict(torch.load(weights / "mobilenet_v2_imagenet.pth", weights_only=True))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    names = (weights / "imagenet_labels.txt").read_text().splitlines()
    RunConfig(
        model="mobilenet_v2",
        num_classes=1000,
        class_names=names,
        image_size=tuple(image_size),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        normalize="inception",
    ).write(out)
    ensure_exported(out)
    return out


def _wall(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def part_coldstart(args) -> dict:
    from convnets.deploy.engines import ensure_exported

    ensure_exported(args.run)
    image = sorted((SHARED / "alpaca" / "alpaca").iterdir())[0]
    py = sys.executable
    srcs = {"new": str(ROOT / "src"), "old": args.old_src}
    commands = {
        "help": ["-m", "convnets", "--help"],
        "predict": ["-m", "convnets", "predict", str(args.run), str(image)],
    }
    times: dict = {f"{c}-{s}": [] for c in commands for s in srcs}
    for src in srcs.values():  # warm the page cache and the OpenVINO/ORT caches once
        for cmd in commands.values():
            _wall([py, *cmd], {**os.environ, "PYTHONPATH": src})
    for _ in range(args.cold_reps):
        for c, cmd in commands.items():
            for s, src in srcs.items():
                times[f"{c}-{s}"].append(_wall([py, *cmd], {**os.environ, "PYTHONPATH": src}))
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "values": v}
        for k, v in times.items()
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"CPU: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}; load average at start "
        f"{m['loadavg'][0]}, at end {result.get('loadavg_end', '?')} (shared machine). "
        "Command: `python bench/backends.py`.",
        "",
    ]
    if "speed" in result:
        lines += [
            "Speed (random weights, 224 px, one process, engines timed in turn, medians; "
            "x = vs ONNX Runtime fp32 in the same repetitions):",
            "",
            "| model | engine | batch 1 ms | x | batch 32 img/s | x |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for model, rows in result["speed"].items():
            for k, r in rows.items():
                lines.append(
                    f"| {model} | {k} ({r['engine']}) | {r['batch1_ms']:.1f} | {r['batch1_speedup']:.2f} | "
                    f"{r['batch32_img_s']:.0f} | {r['batch32_speedup']:.2f} |"
                )
        lines.append("")
    if "accuracy" in result:
        a = result["accuracy"]
        rec = a["int8_record"]
        lines += [
            f"Accuracy, real weights: the shared ImageNet MobileNetV2 with a head trained on alpaca "
            f"(`--normalize inception --freeze base`), validation split of {a['val_images']} images "
            f"(one image = {100 / a['val_images']:.1f} points); int8 calibrated on "
            f"{rec['calibration_images']} training images in {a['quantize_seconds']:.0f} s:",
            "",
            "| engine | alpaca top-1 | change (points) | agrees with fp32 | ImageNet 1000-class top-1 agrees "
            "with fp32 | in fp32's top-5 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for k, r in a["alpaca"].items():
            i = a["imagenet"].get(k)  # the other weight range was measured on alpaca only
            imagenet = (
                f"{100 * i['top1_agreement']:.1f}% | {100 * i['top1_in_fp32_top5']:.1f}%" if i else "- | -"
            )
            lines.append(
                f"| {k} | {100 * r['top1']:.2f}% | {r['delta_points']:+.2f} | {100 * r['agreement']:.1f}% | "
                f"{imagenet} |"
            )
        for k, why in a.get("not_run", {}).items():
            lines.append(f"| {k} | not run: {why} | | | | |")
        lines.append("")
    if "coldstart" in result:
        c = result["coldstart"]
        lines += [
            "Cold start (fresh process wall time, medians of interleaved repetitions; old = the previous "
            "code, new = this branch; `predict` with the export present, one image):",
            "",
            "| command | old s | new s | old/new |",
            "|---|---:|---:|---:|",
        ]
        for cmd in ("help", "predict"):
            old, new = c[f"{cmd}-old"]["median_s"], c[f"{cmd}-new"]["median_s"]
            label = "convnets --help" if cmd == "help" else "convnets predict RUN one.jpg"
            lines.append(f"| `{label}` | {old:.2f} | {new:.2f} | {old / new:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["speed", "accuracy", "coldstart", "all"], default="all")
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--calls1", type=int, default=20, help="batch-1 calls per repetition (mobilenet_v2)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--calibration", type=int, default=300)
    p.add_argument(
        "--run", type=Path, default=None, help="alpaca MobileNetV2 run folder (accuracy, coldstart)"
    )
    p.add_argument("--old-src", default="/work/main/src", help="the previous code's src/ (coldstart)")
    p.add_argument("--cold-reps", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    parts = ["speed", "accuracy", "coldstart"] if args.part == "all" else [args.part]
    if ("accuracy" in parts or "coldstart" in parts) and args.run is None:
        p.error("--run RUN_DIR (an alpaca MobileNetV2 run) is needed for accuracy and coldstart")
    with tempfile.TemporaryDirectory() as tmp:
        args.work = args.work or tmp
        result: dict = {"machine": machine()}
        for part in parts:
            result[part] = globals()[f"part_{part}"](args)
        result["loadavg_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
