# ruff: noqa: E501 - long Markdown prose lines in the generated report
"""The benchmark suite: one command, every figure, written to bench/RESULTS.md and bench/results.json.

    .venv/bin/python bench/run.py                  # everything (make bench); ~25 min on 2 cores
    .venv/bin/python bench/run.py --quick          # tiny sizes, 2 reps: checks the scripts work
    .venv/bin/python bench/run.py --only train,inference

Sections (``--only`` names): peak (fp32 matmul), train (vs torchvision and Keras), defaults (training
settings, one changed at a time), inference (vs torchvision and ONNX Runtime), fastpath
(``prepare_for_inference`` options), transfer (frozen-base head phase, bench/transfer_head.py + Keras),
data (bench/data_pipeline.py), tta (time to 0.90 on alpaca).

Optional sections, run only when ``--only`` names them (each is its own script, heavy, with its own
hand-written analysis in RESULTS.md: a run refreshes a marked block inside that section and keeps the
prose): shards (bench/shards.py: WebDataset shards vs the folder), backends (bench/backends.py:
exported-model engines; ``--backends-run RUN`` adds its accuracy and cold-start parts), precision
(bench/train_precision.py: training step fp32 vs bf16), wholeprocess (bench/whole_process.py:
``convnets train`` as whole processes against a torchvision script and Keras), workers
(bench/loader_workers.py: the ``--workers`` default against one worker per core).

    .venv/bin/python bench/run.py --only shards,precision --quick

Every figure is the median of the repetitions after warm-up, with (min-max); peers run interleaved in
the same run, each in its own process, and are compared as ratios (bench/common.py explains why).
Sections not selected keep their previous text in RESULTS.md and their previous entry in results.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR,
    SHARED_DATA,
    Stat,
    cell,
    describe_machine,
    fmt_ratio,
    matmul_peak,
    matmul_peaks,
    ratio,
)

SECTIONS = ["peak", "train", "inference", "fastpath", "defaults", "transfer", "data", "tta", "serve"]
OPTIONAL_SECTIONS = [
    "shards",
    "backends",
    "precision",
    "wholeprocess",
    "workers",
]  # heavy: only when --only names them
TITLES = {
    "peak": "Machine fp32 matmul peak",
    "train": "Training throughput",
    "defaults": "Training defaults, one changed at a time",
    "inference": "Inference",
    "fastpath": "Inference fast path",
    "transfer": "Frozen-base transfer",
    "data": "Data pipeline",
    "tta": "Time to accuracy",
    "serve": "Serving",
    # The optional sections' titles are those of their hand-written sections in RESULTS.md (the run's
    # output goes into a marked block there, see SHARED_SECTIONS): keep them in step.
    "shards": "Shards vs folder (bench/shards.py)",
    "backends": "Inference backends and cold start (exported model, issue #15)",
    "precision": "Training precision (`--precision auto`): fp32 vs bf16 on an Intel Xeon with AMX",
    "wholeprocess": "Whole processes on small data (bench/whole_process.py, issue #15 item 3)",
    "workers": "Data-loading workers (`--workers` default, bench/loader_workers.py)",
}
GOALS = {"vs_torchvision": 1.3, "vs_keras": 1.8, "peak_resnet50": 0.90, "peak_mobilenet_v2": 0.50}


def _strip(obj):
    """Drop the in-memory PeerResult objects (keys starting with '_') before writing JSON."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _met(value: float | None, goal: float) -> str:
    if value is None:
        return "n/a"
    return "met" if value >= goal else f"missed by {100 * (1 - value / goal):.0f}%"


# --- sections ----------------------------------------------------------------------------------


def section_peak(args, state) -> tuple[str, dict]:
    size = 512 if args.quick else 2048
    each = matmul_peaks(size=size, reps=args.reps)
    peak = Stat.of([max(vals) for vals in zip(*(p.values for p in each.values()))])
    state["peak"] = peak
    md = (
        f"fp32 product of two {size}² matrices, malloc tuning on, in-process, through both of torch's GEMM "
        "libraries (interleaved): "
        + ", ".join(f"{name} {st.fmt(1)} GFLOP/s" for name, st in each.items())
        + f". Peak = the faster per repetition: **{peak.fmt(1)} GFLOP/s** (median (min-max) of {peak.n}). "
        'The training section\'s "% of peak" divides achieved training GFLOP/s (6 x multiply-adds x images/s) '
        "by the best repetition of this and a second measurement taken after the training figures (a ceiling: "
        "the least disturbed)."
    )
    return md, {"gflops": peak.to_dict(), "each": {k: v.to_dict() for k, v in each.items()}}


def section_train(args, state) -> tuple[str, dict]:
    import train_throughput

    data = train_throughput.run(quick=args.quick, reps=args.reps)
    peak: Stat | None = state.get("peak")
    if peak is not None:
        # The ceiling is the least-disturbed GEMM rate: measured again after the training figures
        # and the best repetition of both taken (one median read 81 GFLOP/s in a run where a quiet
        # moment gave 174 and single conv layers ran at 150-165; a disturbed "peak" inflates the %).
        again = matmul_peak(size=512 if args.quick else 2048, reps=args.reps)
        peak = Stat.of([max(peak.values + again.values)])
        data["peak_used"] = peak.to_dict()
    rows = [
        "| model | input | batch | convnets img/s | torchvision eager img/s | Keras/TF img/s "
        "| vs torchvision | vs Keras | convnets GFLOP/s | % of matmul peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    goals = []
    for c in data["configs"]:
        res = c["_results"]
        ours, tv, keras = res.get("convnets"), res.get("torchvision"), res.get("keras")
        r_tv, r_keras = ratio(ours, tv), ratio(ours, keras)
        gflops = frac = None
        if c["gflop_per_image"] and ours is not None and ours.ok:
            gflops = c["gflop_per_image"] * ours.rate().median
            frac = gflops / peak.median if peak else None
        c.update(vs_torchvision=r_tv, vs_keras=r_keras, gflops=gflops, peak_fraction=frac)
        rows.append(
            f"| {c['model']} | {c['size']} | {c['batch']} | {cell(ours)} | {cell(tv)} | {cell(keras)} "
            f"| {fmt_ratio(r_tv)} | {fmt_ratio(r_keras)} | {'n/a' if gflops is None else f'{gflops:.0f}'} "
            f"| {'n/a' if frac is None else f'{100 * frac:.0f}%'} |"
        )
        name = f"{c['model']}@{c['size']}"
        goals.append(
            f"- {name}: vs torchvision {fmt_ratio(r_tv)} (goal 1.3x: {_met(r_tv, GOALS['vs_torchvision'])}), "
            f"vs Keras {fmt_ratio(r_keras)} (goal 1.8x: {_met(r_keras, GOALS['vs_keras'])})"
            + (
                f", {100 * frac:.0f}% of peak (goal {100 * GOALS['peak_' + c['model']]:.0f}%: "
                f"{_met(frac, GOALS['peak_' + c['model']])})"
                if frac is not None and "peak_" + c["model"] in GOALS
                else ""
            )
        )
    warm = [
        "| model | input | "
        + " | ".join(f"{p} warm-up s" for p in ("convnets", "torchvision", "keras"))
        + " |",
        "|---|---|---|---|---|",
    ]
    for c in data["configs"]:
        cells = []
        for p in ("convnets", "torchvision", "keras"):
            r = c["_results"].get(p)
            cells.append("n/a" if r is None or r.warmup_s is None else f"{r.warmup_s:.1f}")
        warm.append(f"| {c['model']} | {c['size']} | " + " | ".join(cells) + " |")
    md = "\n".join(
        [
            "Forward + backward + optimizer step (AdamW), fp32, synthetic batch, 1000 classes; images/s as median "
            "(min-max) of the repetitions. convnets = its trainer's step with its defaults (fused AdamW with its "
            "param groups, channels-last for depthwise-conv models and, on AVX-512 CPUs, for all (else NCHW), malloc tuning); torchvision = `torchvision.models.X(weights=None)` in the plain eager loop "
            "(NCHW, no tuning); Keras = `keras.applications.X(weights=None)` + `train_on_batch`, TensorFlow backend "
            "(vgg16 at 64 with torchvision's 7x7-pooled classifier, so both train the same 138M parameters; "
            "Keras' own top at 64 has 44M). "
            "Each peer in its own process, repetitions interleaved.",
            "",
            *rows,
            "",
            "Goals:",
            *goals,
            "",
            "Warm-up (process start to ready: imports, model build, first steps; Keras traces its graph here):",
            "",
            *warm,
        ]
    )
    return md, data


def section_defaults(args, state) -> tuple[str, dict]:
    import train_throughput

    data = train_throughput.run_ablation(quick=args.quick, reps=args.reps, compile_=not args.no_compile)
    lines = [
        "convnets' training step with one default changed (each variant its own process, interleaved). "
        '"vs defaults" > 1 means the default is faster.',
        "",
    ]
    for c in data["configs"]:
        res = c["_results"]
        base = res.get("defaults")
        lines += [
            f"**{c['model']} @{c['size']}, batch {c['batch']}**",
            "",
            "| variant | img/s | defaults vs variant | warm-up s |",
            "|---|---|---|---|",
        ]
        for name, r in res.items():
            rr = ratio(base, r)
            c.setdefault("vs_defaults", {})[name] = rr
            lines.append(
                f"| {name} | {cell(r)} | {fmt_ratio(rr)} | "
                f"{'n/a' if r.warmup_s is None else f'{r.warmup_s:.1f}'} |"
            )
        comp = res.get("torch.compile")
        if comp is not None and comp.ok and base is not None and base.ok:
            per_img_base, per_img_comp = 1 / base.rate().median, 1 / comp.rate().median
            extra = (comp.warmup_s or 0) - (base.warmup_s or 0)
            saving = per_img_base - per_img_comp
            if saving > 0:
                images = extra / saving
                c["compile_break_even_images"] = images
                lines.append(
                    f"\ntorch.compile: {extra:.0f}s extra warm-up, pays back after "
                    f"~{images:,.0f} training images ({images / c['batch']:,.0f} steps)."
                )
            else:
                lines.append(
                    f"\ntorch.compile: {extra:.0f}s extra warm-up and no faster per step: never pays back."
                )
        lines.append("")
    return "\n".join(lines), data


def section_inference(args, state) -> tuple[str, dict]:
    import inference

    data = inference.run(quick=args.quick, reps=args.reps)
    rows = [
        "| model | mode | convnets (backend) | convnets torch-only | torchvision eager | ONNX Runtime "
        "| vs torchvision | vs ONNX Runtime | torch-only vs ONNX Runtime |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in data["configs"]:
        res = c["_results"]
        kind = "ms" if c["batch"] == 1 else "rate"
        ours, torch_only = res.get("convnets"), res.get("convnets-torch")
        tv, ort = res.get("torchvision"), res.get("onnxruntime")
        c.update(
            vs_torchvision=ratio(ours, tv),
            vs_onnxruntime=ratio(ours, ort),
            torch_only_vs_onnxruntime=ratio(torch_only, ort),
        )
        backend = (ours.meta or {}).get("backend", "?") if ours is not None and ours.ok else "?"
        unit = "ms/image" if kind == "ms" else "img/s"
        rows.append(
            f"| {c['model']} @{c['size']} | {c['mode']} ({unit}) | {cell(ours, kind)} ({backend}) "
            f"| {cell(torch_only, kind)} | {cell(tv, kind)} | {cell(ort, kind)} "
            f"| {fmt_ratio(c['vs_torchvision'])} | {fmt_ratio(c['vs_onnxruntime'])} "
            f"| {fmt_ratio(c['torch_only_vs_onnxruntime'])} |"
        )
    md = "\n".join(
        [
            "convnets = `inference_module(model)` (backend `auto`, what `predict`/`evaluate`/`report` run: "
            "ONNX Runtime on CPU when the `export` extra is installed) + `predict_batch`; convnets torch-only = "
            "the path `auto` takes without onnxruntime (`prepare_for_inference`: BatchNorm folded, TorchScript "
            "freeze, inference_mode); torchvision = `model.eval()` under `torch.no_grad()`; ONNX Runtime = the "
            "torchvision model through `torch.onnx.export`, default `InferenceSession` (CPU provider). Batch 1: "
            "latency (lower is better; the ratios are speed-ups, > 1 means convnets is faster). Batch 32: "
            "images/s. Random weights.",
            "",
            *rows,
            "",
            "Goal: batch-1 latency no slower than ONNX Runtime (ratio >= 1.00x).",
        ]
    )
    return md, data


def section_fastpath(args, state) -> tuple[str, dict]:
    import inference

    data = inference.run_fast_path(quick=args.quick, reps=args.reps, compile_=not args.no_compile)
    lines = [
        "Each `prepare_for_inference` option against the unprepared eager model (same process layout, "
        "interleaved). These rows choose `convnets.accel.inference`'s defaults.",
        "",
    ]
    for c in data["configs"]:
        res = c["_results"]
        base = res.get("eager (no folding)")
        kind = "ms" if c["batch"] == 1 else "rate"
        lines += [
            f"**{c['model']} @{c['size']}, {c['mode']}**",
            "",
            f"| variant | {'ms/image' if kind == 'ms' else 'img/s'} | speed-up vs eager | warm-up s |",
            "|---|---|---|---|",
        ]
        for name, r in res.items():
            rr = ratio(r, base)
            c.setdefault("vs_eager", {})[name] = rr
            lines.append(
                f"| {name} | {cell(r, kind, 2 if kind == 'ms' else 1)} | {fmt_ratio(rr)} | "
                f"{'n/a' if r.warmup_s is None else f'{r.warmup_s:.1f}'} |"
            )
        lines.append("")
    return "\n".join(lines), data


def section_transfer(args, state) -> tuple[str, dict]:
    import keras_peer

    parts, data = [], {}
    script = BENCH_DIR / "transfer_head.py"
    if script.is_file():
        cmd = [sys.executable, str(script)] + (
            ["--images", "40", "--epochs", "1", "--size", "64", "--reps", "1"]
            if args.quick
            else ["--reps", str(args.reps)]
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(BENCH_DIR.parent))
        data["transfer_head"] = {"returncode": proc.returncode, "stdout": proc.stdout[-20000:]}
        parts += [
            "convnets (bench/transfer_head.py):",
            "",
            proc.stdout.strip()
            if proc.returncode == 0
            else f"bench/transfer_head.py failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}",
            "",
        ]
    else:
        parts += [
            "bench/transfer_head.py (convnets' cached-feature and through-the-base head phases) is not in "
            "the tree yet.",
            "",
        ]
    keras = keras_peer.run_transfer(quick=args.quick, reps=args.reps)
    data["keras"] = keras
    parts += [keras["markdown"]]
    return "\n".join(parts), data


def section_data(args, state) -> tuple[str, dict]:
    script = BENCH_DIR / "data_pipeline.py"
    if not script.is_file():
        return "bench/data_pipeline.py is not in the tree yet.", {}
    cmd = [sys.executable, str(script)] + (
        ["--reps", "1", "--image-size", "64"] if args.quick else ["--reps", str(args.reps)]
    )
    if (SHARED_DATA / "alpaca").is_dir():
        cmd += ["--data", str(SHARED_DATA / "alpaca")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(BENCH_DIR.parent))
    if proc.returncode != 0:
        return f"bench/data_pipeline.py failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", {}
    return "From bench/data_pipeline.py:\n\n" + proc.stdout.strip(), {"stdout": proc.stdout}


def section_tta(args, state) -> tuple[str, dict]:
    import time_to_accuracy

    data = time_to_accuracy.run(quick=args.quick, reps=3 if args.quick else args.reps)
    if "skipped" in data:
        return f"Skipped: {data['skipped']}.", data
    secs = [r["seconds"] for r in data["runs"] if r["seconds"] is not None]
    recipe = data["recipe"]
    head = (
        f'`convnets.train("{SHARED_DATA}/alpaca", model="mobilenet_v2", weights=<pretrained MobileNetV2>, '
        + ", ".join(f"{k}={v!r}" for k, v in recipe.items() if k != "model")
        + ")`, a fresh process per run."
    )
    if not secs:
        why = [
            str(r["error"]).strip().splitlines()[-1][:200]
            if r["error"]
            else f"best {r['detail'].get('best_val_acc')}"
            for r in data["runs"]
        ]
        return head + f"\n\nNo run reached {data['target']:.2f}: " + "; ".join(why), data
    st = Stat.of(secs)
    data["seconds"] = st.to_dict()
    reached = [r["detail"].get("reached_epoch") for r in data["runs"] if r.get("detail")]
    return (
        head + f"\n\nSeconds from the call to {data['target']:.2f} validation accuracy: **{st.fmt(1)}** "
        f"({len(secs)}/{len(data['runs'])} runs reached it; at epoch {reached}).",
        data,
    )


def section_serve(args, state) -> tuple[str, dict]:
    """bench/serve.py: `convnets serve` vs hand-written FastAPI servers (eager torch, ONNX Runtime)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "serve.json"
        cmd = [sys.executable, str(BENCH_DIR / "serve.py"), "--json", str(out)] + (
            ["--quick"] if args.quick else []
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(BENCH_DIR.parent))
        if proc.returncode != 0:
            return f"bench/serve.py failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", {}
        return "From bench/serve.py:\n\n" + proc.stdout.strip(), json.loads(out.read_text())


def _script_section(script: str, options: list[str], env: dict | None = None) -> tuple[str, dict]:
    """Run bench/<script> in its own process: its markdown (stdout) is the section, stdout and exit
    status its results.json entry."""
    import os

    cmd = [sys.executable, str(BENCH_DIR / script), *options]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=str(BENCH_DIR.parent), env={**os.environ, **(env or {})}
    )
    data = {"command": " ".join(["bench/" + script, *options]), "returncode": proc.returncode}
    if proc.returncode != 0:
        return f"bench/{script} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", data
    data["stdout"] = proc.stdout[-20000:]
    return f"From `{data['command']}`:\n\n" + proc.stdout.strip(), data


def section_shards(args, state) -> tuple[str, dict]:
    """bench/shards.py: feeding the trainer from WebDataset shards vs from the image folder."""
    quick = ["--images", "300", "--size", "48", "--image-size", "32", "--batch-size", "16", "--limit", "120"]
    options = (quick if args.quick else []) + ["--reps", str(args.reps)]
    return _script_section("shards.py", options, env={"OMP_NUM_THREADS": "1"})  # as its docstring runs it


def section_backends(args, state) -> tuple[str, dict]:
    """bench/backends.py: ONNX Runtime / OpenVINO / int8 engines on an exported run (the speed part;
    accuracy and cold start need a trained alpaca run: --backends-run)."""
    import tempfile

    options = ["--reps", str(args.reps)]
    if args.quick:
        options += ["--models", "mobilenet_v2", "--calls1", "2", "--calibration", "16", "--cold-reps", "1"]
    if args.backends_run is not None:
        options += ["--run", str(args.backends_run)]
    else:
        options += ["--part", "speed"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "backends.json"
        md, data = _script_section("backends.py", [*options, "--json", str(out)])
        if out.is_file():
            data["results"] = json.loads(out.read_text())
    return md, data


def section_precision(args, state) -> tuple[str, dict]:
    """bench/train_precision.py: convnets' training step in fp32 and bf16, interleaved in one process."""
    options = ["--reps", str(args.reps)] + (["--models", "mobilenet_v2:32:2"] if args.quick else [])
    return _script_section("train_precision.py", options)


def section_wholeprocess(args, state) -> tuple[str, dict]:
    """bench/whole_process.py: `convnets train` as whole processes against a torchvision script and Keras."""
    options = ["--reps", str(args.reps)] + (["--quick"] if args.quick else [])
    return _script_section("whole_process.py", options)


def section_workers(args, state) -> tuple[str, dict]:
    """bench/loader_workers.py: whole `convnets train` processes with no workers and one per core."""
    options = ["--reps", str(args.reps)] + (["--quick"] if args.quick else [])
    return _script_section("loader_workers.py", options)


RUNNERS = {
    "peak": section_peak,
    "train": section_train,
    "defaults": section_defaults,
    "inference": section_inference,
    "fastpath": section_fastpath,
    "transfer": section_transfer,
    "data": section_data,
    "tta": section_tta,
    "serve": section_serve,
    "shards": section_shards,
    "backends": section_backends,
    "precision": section_precision,
    "wholeprocess": section_wholeprocess,
    "workers": section_workers,
}


# --- RESULTS.md assembly ------------------------------------------------------------------------


def _previous_sections(path: Path) -> dict[str, str]:
    """'## Title' -> body of the existing RESULTS.md, to keep sections this run did not redo."""
    if not path.is_file():
        return {}
    text = path.read_text()
    found = {}
    for m in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M):
        found[m.group(1).strip()] = m.group(2).strip()
    return found


# Sections whose prose another engineer writes by hand (their script's analysis): a run refreshes only
# the block between the markers and keeps the rest of their text.
SHARED_SECTIONS = {"data", "transfer"}  # (and every optional section: see write_results)
_BEGIN, _END = "<!-- bench/run.py output: begin -->", "<!-- bench/run.py output: end -->"


def _merge_shared(old_text: str, fresh: str) -> str:
    block = f"{_BEGIN}\n**Latest `bench/run.py` run** (see the header for the machine and load):\n\n{fresh.strip()}\n{_END}"
    if _BEGIN in old_text and _END in old_text:
        head, rest = old_text.split(_BEGIN, 1)
        return head + block + rest.split(_END, 1)[1]
    return old_text.rstrip() + "\n\n" + block


def write_results(out_dir: Path, machine: dict, new_md: dict[str, str], new_data: dict, args) -> None:
    json_path, md_path = out_dir / "results.json", out_dir / "RESULTS.md"
    previous = json.loads(json_path.read_text()) if json_path.is_file() else {}
    sections = {**previous.get("sections", {}), **_strip(new_data)}
    json_path.write_text(json.dumps({"machine": machine, "sections": sections}, indent=1, default=str) + "\n")

    old = _previous_sections(md_path)
    m = machine
    header = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`.venv/bin/python bench/run.py`); raw numbers in `results.json`.",
        "",
        f"Last run: {m['date']}, `{' '.join(['bench/run.py', *args.argv])}`. Machine: {m['cpu']}, {m['cores']} cores, "
        f"{m['torch_threads']} torch threads, ISA {m['capability']}, native bf16: {m['native_bf16']}; "
        f"torch {m['torch']}, torchvision {m['torchvision']}, onnxruntime {m['onnxruntime']}, "
        f"tensorflow {m['tensorflow']}, keras {m['keras']}; 1-min load average {m['loadavg_1m']} at start, "
        f"{m.get('loadavg_end', '?')} at the end.",
        "",
        "**The machine is shared and noisy**: compare peers by the ratios (same run, interleaved repetitions), "
        "not by absolute times. Every figure is median (min-max) of the repetitions after warm-up.",
        "",
    ]
    body = []
    known_titles = {TITLES[key] for key in SECTIONS}
    for key in SECTIONS:
        title = TITLES[key]
        text = new_md.get(key, old.get(title))
        if key in SHARED_SECTIONS and key in new_md and title in old:
            text = _merge_shared(old[title], new_md[key])
        if text:
            body += [f"## {title}", "", text.strip(), ""]
    # Sections other engineers added by hand are kept, in their order; an optional section that ran
    # refreshes its block inside its hand-written section, or is added at the end the first time.
    optional = {TITLES[key]: key for key in OPTIONAL_SECTIONS}
    for title, text in old.items():
        if title not in known_titles:
            if optional.get(title) in new_md:
                text = _merge_shared(text, new_md[optional[title]])
            body += [f"## {title}", "", text, ""]
    for key in OPTIONAL_SECTIONS:
        if key in new_md and TITLES[key] not in old:
            body += [f"## {TITLES[key]}", "", new_md[key].strip(), ""]
    md_path.write_text("\n".join(header + body).rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 repetitions (smoke run)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all of these), or the optional "
        f"sections, run only when named: {','.join(OPTIONAL_SECTIONS)}",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="timed repetitions per figure (default 5; 2 quick)"
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile rows (slow to compile)"
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="folder for RESULTS.md and results.json")
    parser.add_argument(
        "--backends-run",
        type=Path,
        default=None,
        help="backends: an alpaca MobileNetV2 run folder, for bench/backends.py's accuracy and cold-start parts",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.reps = args.reps or (2 if args.quick else 5)
    selected = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(selected) - set(SECTIONS) - set(OPTIONAL_SECTIONS))
    if unknown:
        parser.error(
            f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS + OPTIONAL_SECTIONS)}"
        )
    if "train" in selected and "peak" not in selected:
        selected.append("peak")  # the % of peak column needs the peak from the same run
    selected = [s for s in SECTIONS + OPTIONAL_SECTIONS if s in selected]

    from convnets.base.runtime import tune_malloc

    tune_malloc()  # the parent runs only the matmul peak; peers set their own allocator in their process
    machine = describe_machine()
    args.out.mkdir(parents=True, exist_ok=True)
    state: dict = {}
    new_md, new_data = {}, {}
    start = time.perf_counter()
    for key in selected:
        t0 = time.perf_counter()
        print(f"[{time.perf_counter() - start:6.0f}s] {TITLES[key]}", flush=True)
        try:
            md, data = RUNNERS[key](args, state)
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
            import traceback

            traceback.print_exc()
            md, data = f"Failed in this run: {type(e).__name__}: {e}", {"error": repr(e)}
        data["elapsed_s"] = time.perf_counter() - t0
        new_md[key], new_data[key] = md, data
        machine["loadavg_end"] = round(__import__("os").getloadavg()[0], 2)
        write_results(args.out, machine, new_md, new_data, args)  # after every section: partial runs count
    print(
        f"[{time.perf_counter() - start:6.0f}s] wrote {args.out / 'RESULTS.md'} and results.json", flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
