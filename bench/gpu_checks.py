# ruff: noqa: E501 - long Markdown lines in the printed report
"""The GPU checks of issue #15 item 5, as one prepared script for a lent GPU machine.

It runs in one go, from the repository root, with the machine's own python3 (its torch, torchvision
and onnxruntime; nothing is installed), and writes a Markdown report to ``--out`` (default
``$OUT/gpu_checks.md``; the device tool brings ``$OUT`` back):

1. the machine: GPU, driver, torch/CUDA versions, native bf16;
2. the CUDA tests of the suite (``-m`` none: every test runs on the machine's default device, which the
   CUDA-only tests need) under a time limit;
3. training throughput, convnets' own step (``Trainer``'s optimizer, loss, channels-last and autocast
   rules) for resnet50 and mobilenet_v2 at 224 px: fp32 against bf16 autocast + channels-last,
   interleaved, CUDA-synchronised, images/s and the ratio;
4. ``convnets train digits`` end to end on CUDA with ``--precision auto`` (records bf16 on a GPU
   with native bf16), and the same under ``torchrun --nproc_per_node 1`` (DDP on one GPU);
5. inference: the trained run's ``predict`` through the PyTorch path on CUDA against the CPU's
   exported engine (same top-1).

    python3 bench/gpu_checks.py                      # on the GPU machine, ~6 min
    python3 bench/gpu_checks.py --device cpu --quick  # here: checks the script runs (no GPU needed)

For the device tool: ``run(command="PYTHONUNBUFFERED=1 python3 bench/gpu_checks.py", timeout_s=540)``.
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

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}


def sh(cmd: list[str], timeout: float, cwd: Path = ROOT) -> tuple[int, str, float]:
    """(return code, last 3,000 characters of the output, seconds); a timeout is code 124."""
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
        code, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:
        code, text = 124, f"{e.stdout or ''}{e.stderr or ''}\n(timed out after {timeout:.0f} s)"
        text = text if isinstance(text, str) else text.decode(errors="replace")
    return code, text[-3000:], time.perf_counter() - start


def machine(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "python": sys.version.split()[0], "device": device}
    if device == "cuda":
        info.update(
            gpu=torch.cuda.get_device_name(),
            cuda=torch.version.cuda,
            native_bf16=torch.cuda.is_bf16_supported(including_emulation=False),
        )
        code, text, _ = sh(
            ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"], 30
        )
        info["nvidia_smi"] = text.strip() if code == 0 else "nvidia-smi failed"
    return info


def step_throughput(
    model_name: str, size: int, batch: int, device: str, reps: int, steps: int
) -> dict[str, float]:
    """Images/s of convnets' training step in fp32 and in bf16 autocast + channels-last, interleaved."""
    import torch
    from torch import nn

    from convnets.accel.plan import clamps_out_of_place
    from convnets.models import create_model
    from convnets.train.optim import build_optimizer
    from convnets.train.options import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, TrainOptions

    variants = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=1000).to(device).train()
        clamps_out_of_place(model)
        channels_last = precision == "bf16" or device == "cpu"  # the trainer's CUDA rule: NHWC with AMP
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opts = TrainOptions(precision=precision)
        opts.weight_decay = DEFAULT_WEIGHT_DECAY[opts.optimizer]
        optimizer = build_optimizer(list(model.parameters()), opts, DEFAULT_LR[opts.optimizer])
        x = torch.randn(batch, 3, size, size, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (batch,), device=device)
        variants[precision] = (model, optimizer, x, y)
    criterion = nn.CrossEntropyLoss()

    def run(precision: str, n: int) -> float:
        model, optimizer, x, y = variants[precision]
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        sync()
        return n * batch / (time.perf_counter() - start)

    for precision in variants:
        run(precision, 3)  # warm-up: cuDNN autotuning, allocator
    rates: dict[str, list[float]] = {p: [] for p in variants}
    for _ in range(reps):
        for precision in variants:
            rates[precision].append(run(precision, steps))
    ratios = [b / f for b, f in zip(rates["bf16"], rates["fp32"])]
    return {
        "fp32_img_s": statistics.median(rates["fp32"]),
        "bf16_img_s": statistics.median(rates["bf16"]),
        "bf16_vs_fp32": statistics.median(ratios),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes and counts: checks the script runs")
    p.add_argument("--out", default=str(Path(os.environ.get("OUT", tempfile.gettempdir())) / "gpu_checks.md"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA GPU here: run this on the lent GPU machine (or --device cpu --quick to check the script)"
        )
        return 2
    lines = ["# GPU checks (bench/gpu_checks.py, issue #15 item 5)", ""]
    results: dict = {"machine": machine(args.device)}

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"Machine: {json.dumps(results['machine'])}; {time.strftime('%Y-%m-%d %H:%M:%S')}")
    say()

    # 2. the suite's device tests
    tests = ["tests/test_train_precision.py", "tests/test_train_ddp.py", "tests/test_train_cli.py"]
    code, text, seconds = sh(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        60 if args.quick else 240,
    )
    results["tests"] = {"returncode": code, "seconds": seconds}
    say(f"## Tests on this machine ({' '.join(tests)}): return code {code}, {seconds:.0f} s")
    say("```")
    say(text.strip()[-1500:])
    say("```")

    # 3. training throughput
    say("## Training step, fp32 vs bf16 autocast + channels-last (convnets' step, interleaved)")
    say("| model | input | batch | fp32 img/s | bf16 img/s | bf16 vs fp32 |")
    say("|---|---|---|---|---|---|")
    cases = [("mobilenet_v2", 32, 2)] if args.quick else [("resnet50", 224, 128), ("mobilenet_v2", 224, 128)]
    results["throughput"] = {}
    for name, size, batch in cases:
        try:
            r = step_throughput(
                name, size, batch, args.device, reps=2 if args.quick else 5, steps=1 if args.quick else 10
            )
        except Exception as e:  # noqa: BLE001 - one failed case is a finding, the report goes on
            say(f"| {name} | {size} | {batch} | failed: {type(e).__name__}: {e} | | |")
            continue
        results["throughput"][name] = r
        say(
            f"| {name} | {size} | {batch} | {r['fp32_img_s']:.0f} | {r['bf16_img_s']:.0f} | {r['bf16_vs_fp32']:.2f}x |"
        )
    say()

    # 4. train end to end, plain and under torchrun (DDP on one device)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        common = [
            "digits",
            "--model",
            "resnet20",
            "--epochs",
            "1" if args.quick else "3",
            "--device",
            args.device,
            "--workers",
            "0",
        ]
        trains = {
            "train": [sys.executable, "-m", "convnets", "train", *common, "--out", str(run_dir)],
            "torchrun x1": [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "1",
                "-m",
                "convnets",
                "train",
                *common,
                "--out",
                str(Path(tmp) / "ddp"),
            ],
        }
        say("## `convnets train digits --model resnet20` on this device")
        for label, cmd in trains.items():
            code, text, seconds = sh(cmd, 120 if args.quick else 240)
            summary = [line for line in text.splitlines() if "best validation" in line or "device" in line]
            results[label] = {"returncode": code, "seconds": seconds, "lines": summary}
            say(f"- {label}: return code {code}, {seconds:.0f} s wall; " + " / ".join(summary)[-400:])
            if code:
                say("```\n" + text.strip()[-1200:] + "\n```")
        config = run_dir / "config.json"
        if config.is_file():
            options = json.loads(config.read_text())["options"]
            results["precision_recorded"] = options.get("precision")
            say(
                f"- recorded precision: {options.get('precision')}, channels_last: {options.get('channels_last')}"
            )

        # 5. inference: the PyTorch path on this device against the exported engine on the CPU
        if config.is_file():
            code, text, _ = sh(
                [sys.executable, "-W", "ignore", "-c", _PREDICT, str(run_dir), args.device], 180
            )
            found = [line[len("RESULT: ") :] for line in text.splitlines() if line.startswith("RESULT: ")]
            result = found[-1] if found and code == 0 else text.strip()[-600:]
            results["predict"] = {"returncode": code, "output": result}
            say(
                f"- predict, torch on {args.device} vs the exported engine on the CPU: return code {code}; {result}"
            )
    say()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


# Child process for check 5: top-1 of 64 digits images from the torch path on the device and from the
# exported model (ONNX Runtime, CPU) agree.
_PREDICT = """
import sys, time, tempfile
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from convnets.deploy.predictor import predict
from convnets.deploy.engines import ExportedModel
run, device = sys.argv[1], sys.argv[2]
d = tempfile.mkdtemp()
images = load_digits().images[:64]
paths = []
for i, a in enumerate(images):
    p = f"{d}/{i}.png"; Image.fromarray((a * 16).clip(0, 255).astype(np.uint8)).save(p); paths.append(p)
t = time.perf_counter(); rows = predict(run, paths, device=device, backend="eager"); t_torch = time.perf_counter() - t
try:
    exported = ExportedModel.open(run, "onnxruntime").predict_files(paths)
    agree = np.mean([a.top[0].label == b.top[0].label for a, b in zip(rows, exported)])
    print(f"RESULT: {len(rows)} images in {t_torch:.2f} s on {device}; top-1 agreement with ONNX Runtime on the CPU {agree:.1%}")
except Exception as e:
    print(f"RESULT: {len(rows)} images in {t_torch:.2f} s on {device}; exported engine unavailable: {type(e).__name__}: {e}")
"""


if __name__ == "__main__":
    sys.exit(main())
