"""CIFAR-10 folder, ResNet-20, the paper's recipe: where an epoch's time goes, and convnets vs a plain
PyTorch script, per epoch, in the same run (interleaved, each peer in its own process).

    # the pieces: folder scan, decode-once memory cache (and its memory), batching + augmentation,
    # the model's step, the validation pass -- each bounded by --steps, never a whole epoch
    nice -n 10 python bench/cifar_epoch.py pieces --steps 30

    # convnets train vs torchvision ImageFolder + DataLoader(workers) + the same model, on a subset
    # folder of --subset images per class (symlinks; 0 = all 50,000), --epochs each at the paper's
    # lr 0.1, --reps times, alternating: per-epoch ratio and time to the plain script's final accuracy
    nice -n 10 python bench/cifar_epoch.py compare --subset 100 --reps 2
    nice -n 10 python bench/cifar_epoch.py compare --subset 0 --epochs 3 --reps 1

DATA defaults to ../shared/data/cifar10/train. Results are printed as JSON lines; the run's CPU and
load average are printed with them (a shared machine: compare ratios from the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10" / "train"
MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 channel means (the plain script's per-channel mean)


def machine() -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = []
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg": load, "python": platform.python_version()}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


# --- pieces ---------------------------------------------------------------------------------------


def pieces(data: Path, steps: int, batch: int, model_name: str = "resnet20") -> None:
    import torch

    from convnets.data import load_data
    from convnets.data.folder import scan_folder
    from convnets.models import create_model
    from convnets.train.optim import build_optimizer
    from convnets.train.options import TrainOptions

    emit({"machine": machine(), "threads": torch.get_num_threads()})
    t = time.perf_counter()
    scan_folder(data)
    emit({"piece": "folder scan (listing + header probe)", "seconds": round(time.perf_counter() - t, 2)})

    rss0 = rss_mb()
    t = time.perf_counter()
    splits = load_data(
        data,
        image_size=32,
        val_split=0.1,
        batch_size=batch,
        augment="crop:4,hflip",
        normalize="mean",
        cache="memory",
        resize="resize",
        num_workers=0,
    )
    emit(
        {
            "piece": "load_data: scan + split + decode-once memory cache",
            "seconds": round(time.perf_counter() - t, 2),
            "max_rss_growth_mb": round(rss_mb() - rss0, 1),
            "train": splits.train.num_samples,
            "val": splits.val.num_samples,
        }
    )

    def time_batches(loader, n):
        it = iter(loader)
        next(it)  # first batch: worker start-up / lazy imports
        t = time.perf_counter()
        for _ in range(n):
            next(it)
        return (time.perf_counter() - t) / n

    per = time_batches(splits.train, steps)
    emit(
        {
            "piece": f"train batch of {batch} (crop:4,hflip, in-memory)",
            "ms_per_batch": round(per * 1e3, 1),
            "img_s": round(batch / per),
        }
    )
    plain = load_data(
        data,
        image_size=32,
        val_split=0.1,
        batch_size=batch,
        augment="none",
        normalize="mean",
        cache="memory",
        resize="resize",
        num_workers=0,
        split=splits.split,
    )
    per = time_batches(plain.train, steps)
    emit(
        {
            "piece": f"train batch of {batch} (no augmentation)",
            "ms_per_batch": round(per * 1e3, 1),
            "img_s": round(batch / per),
        }
    )

    model = create_model(model_name, num_classes=10).to(memory_format=torch.channels_last)
    opts = TrainOptions(optimizer="sgd", weight_decay=1e-4)
    opt = build_optimizer(list(model.parameters()), opts, 0.1)
    crit = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    model.train()
    for i in range(steps + 3):
        if i == 3:
            t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        crit(model(x), y).backward()
        opt.step()
    per = (time.perf_counter() - t) / steps
    emit(
        {
            "piece": f"{model_name} train step, batch {batch}, fp32 channels-last (no data)",
            "ms_per_step": round(per * 1e3, 1),
            "img_s": round(batch / per),
        }
    )

    model.eval()
    vb = 2 * batch  # validation batches: twice the training batch (256 at the paper's 128)
    with torch.no_grad():
        for i in range(steps // 2 + 2):
            if i == 2:
                t = time.perf_counter()
            model(torch.randn(vb, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    per = (time.perf_counter() - t) / (steps // 2)
    emit(
        {
            "piece": f"{model_name} eval forward, batch {vb}",
            "ms_per_batch": round(per * 1e3, 1),
            "img_s": round(vb / per),
            "val_pass_5000_s_est": round(5000 / (vb / per), 1),
        }
    )


# --- compare: one epoch of each peer --------------------------------------------------------------


def subset_folder(data: Path, per_class: int, into: Path) -> Path:
    for cls in sorted(p for p in data.iterdir() if p.is_dir()):
        dst = into / cls.name
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[:per_class]:
            (dst / f.name).symlink_to(f.resolve())
    return into


def peer_convnets(folder: Path, batch: int, out: Path, epochs: int) -> dict:
    """convnets train with the paper's recipe at the first half of its schedule (lr 0.1, constant)."""
    from convnets.train import train

    t = time.perf_counter()
    result = train(
        str(folder),
        model="resnet20",
        out=str(out),
        recipe="he2015",
        epochs=epochs,
        schedule="constant",  # the paper's lr 0.1 until 32k iterations: its first 82 epochs
        batch_size=batch,
        overwrite=True,
        quiet=True,
    )
    whole = time.perf_counter() - t
    config = json.loads((Path(out) / "config.json").read_text())
    return {
        "peer": f"convnets ({config['options']['precision']})",
        "epochs": [{"train_s": h["seconds"], "val_acc": h["val_acc"]} for h in result.history],
        "whole_s": round(whole, 2),
    }


def peer_plain(folder: Path, batch: int, workers: int, epochs: int) -> dict:
    """The paper's recipe as a plain PyTorch script: ImageFolder, DataLoader with workers, the same model."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from convnets.models import create_model

    t0 = time.perf_counter()
    torch.manual_seed(0)
    norm = transforms.Normalize(MEAN, (1.0, 1.0, 1.0))
    train_tf = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]
    )
    test_tf = transforms.Compose([transforms.ToTensor(), norm])
    full_train = datasets.ImageFolder(str(folder), train_tf)
    full_val = datasets.ImageFolder(str(folder), test_tf)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(full_train), generator=g).tolist()
    n_val = len(perm) // 10
    train_set, val_set = Subset(full_train, perm[n_val:]), Subset(full_val, perm[:n_val])
    kw = {"num_workers": workers, "persistent_workers": True} if workers else {}
    train_loader = DataLoader(train_set, batch_size=batch, shuffle=True, **kw)
    val_loader = DataLoader(val_set, batch_size=2 * batch, **kw)
    model = create_model("resnet20", num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    crit = torch.nn.CrossEntropyLoss()
    history = []
    for _ in range(epochs):
        t = time.perf_counter()
        model.train()
        for x, y in train_loader:
            opt.zero_grad(set_to_none=True)
            crit(model(x.contiguous(memory_format=torch.channels_last)), y).backward()
            opt.step()
        model.eval()
        right = seen = 0
        with torch.no_grad():
            for x, y in val_loader:
                right += int((model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum())
                seen += len(y)
        history.append({"train_s": round(time.perf_counter() - t, 2), "val_acc": right / max(seen, 1)})
    return {
        "peer": f"plain PyTorch fp32 (workers={workers})",
        "epochs": history,
        "whole_s": round(time.perf_counter() - t0, 2),
    }


def time_to(history: list[dict], accuracy: float) -> float | None:
    """Seconds of training (validation included) until an epoch first reached ``accuracy``."""
    elapsed = 0.0
    for h in history:
        elapsed += h["train_s"]
        if h["val_acc"] >= accuracy:
            return round(elapsed, 1)
    return None


def compare(data: Path, per_class: int, reps: int, batch: int, workers: int, epochs: int) -> None:
    emit({"machine": machine(), "subset_per_class": per_class or "all", "epochs": epochs})
    with tempfile.TemporaryDirectory() as tmp:
        folder = subset_folder(data, per_class, Path(tmp) / "data") if per_class else data
        for rep in range(reps):
            results = {}
            for peer in ("convnets", "plain"):
                cmd = [sys.executable, __file__, "_peer", peer, str(folder), "--batch", str(batch)]
                cmd += ["--workers", str(workers), "--epochs", str(epochs), "--out", str(Path(tmp) / "run")]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode or not lines:
                    emit({"peer": peer, "rep": rep, "error": proc.stderr[-2000:]})
                    continue
                results[peer] = json.loads(lines[-1])
                emit({**results[peer], "rep": rep, "loadavg": machine()["loadavg"]})
            if len(results) == 2:
                ours, plain = results["convnets"]["epochs"], results["plain"]["epochs"]
                target = plain[-1]["val_acc"]
                ours_s, plain_s = time_to(ours, target), time_to(plain, target)
                emit(
                    {
                        "rep": rep,
                        "per_epoch_ratio": round(
                            statistics.median(h["train_s"] for h in plain)
                            / statistics.median(h["train_s"] for h in ours),
                            2,
                        ),
                        "target_val_acc": target,
                        "convnets_s_to_target": ours_s,
                        "plain_s_to_target": plain_s,
                        "time_to_accuracy_ratio": round(plain_s / ours_s, 2) if ours_s else None,
                    }
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("pieces", "compare", "_peer"))
    p.add_argument("args", nargs="*")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--steps", type=int, default=30, help="batches timed per piece (pieces)")
    p.add_argument(
        "--subset", type=int, default=100, help="images per class in the compared folder (0 = all)"
    )
    p.add_argument("--epochs", type=int, default=1, help="epochs each peer trains (compare)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="the plain script's DataLoader workers")
    p.add_argument("--model", default="resnet20", help="the model of the step pieces (pieces)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.what == "_peer":
        peer, folder = a.args
        rec = (
            peer_convnets(Path(folder), a.batch, a.out, a.epochs)
            if peer == "convnets"
            else peer_plain(Path(folder), a.batch, a.workers, a.epochs)
        )
        emit(rec)
        return
    if not a.data.is_dir():
        sys.exit(f"bench/cifar_epoch.py: --data {a.data} is not a folder (the CIFAR-10 train folder)")
    if a.what == "pieces":
        pieces(a.data, a.steps, a.batch, a.model)
    else:
        compare(a.data, a.subset, a.reps, a.batch, a.workers, a.epochs)


if __name__ == "__main__":
    main()
