"""Training-step variants for bf16 on CPU, one process, interleaved (the exploration behind
bench/RESULTS.md, "Training precision").

    THREADS=1 .venv/bin/python bench/train_precision_variants.py resnet50 64 32 fp32,bf16,bf16w 4

Variants: ``fp32`` (convnets' step), ``bf16`` (the same under bf16 autocast: what ``--precision auto``
does on AMX CPUs), ``bf16w`` (the model's weights in bf16, BatchNorm included, with fp32 master copies
in the fused optimizer: the IPEX-style "split" update), ``compile``/``compile_bf16`` (``torch.compile``
of the model, inductor's CPU path). Prints images/s median (min-max) and the ratio to the first.
"""

import os
import statistics
import sys
import time

from convnets.base.runtime import tune_malloc

tune_malloc()
import torch  # noqa: E402 - after tune_malloc
from torch import nn  # noqa: E402 - after tune_malloc

from convnets.models.registry import create_model  # noqa: E402 - after tune_malloc
from convnets.train.optim import build_optimizer  # noqa: E402 - after tune_malloc
from convnets.train.options import TrainOptions  # noqa: E402 - after tune_malloc

model_name, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
variants = sys.argv[4].split(",")
reps = int(sys.argv[5]) if len(sys.argv) > 5 else 5
torch.manual_seed(0)
x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 1000, (batch,))
opts = TrainOptions()
opts.lr = 1e-3
opts.weight_decay = 0.01
crit = nn.CrossEntropyLoss()


def make(v):
    torch.manual_seed(0)
    m = create_model(model_name, num_classes=1000).train().to(memory_format=torch.channels_last)
    if v == "bf16w":
        master = [p for p in m.parameters()]
        masters = [p.detach().clone().float().requires_grad_(False) for p in master]
        m = m.to(torch.bfloat16)
        params = list(m.parameters())
        for mp in masters:
            mp.grad = None
        opt = build_optimizer([nn.Parameter(t) for t in masters], opts, 1e-3)
        mparams = [p for g in opt.param_groups for p in g["params"]]
        # map: build_optimizer reorders into decay/no-decay; keep pairs by identity
        pairs = []
        nd = [i for i, p in enumerate(params) if p.ndim > 1]
        d1 = [i for i, p in enumerate(params) if p.ndim <= 1]
        order = nd + d1
        for mp, i in zip(mparams, order):
            pairs.append((params[i], mp))

        def step():
            logits = m(x.to(torch.bfloat16))
            loss = crit(logits.float(), y)
            torch.isfinite(loss.detach()).item()
            loss.backward()
            loss.item()
            (logits.argmax(1) == y).sum().item()
            for p, mp in pairs:
                mp.grad = p.grad.float()
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                torch._foreach_copy_([p for p, _ in pairs], [mp for _, mp in pairs])
            for p, _ in pairs:
                p.grad = None

        return step
    opt = build_optimizer([p for p in m.parameters()], opts, 1e-3)
    fwd = m
    if v.startswith("compile"):
        fwd = torch.compile(m)
    ac = "bf16" in v

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
            logits = fwd(x)
            loss = crit(logits, y)
        torch.isfinite(loss.detach()).item()
        loss.backward()
        loss.item()
        (logits.argmax(1) == y).sum().item()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


steps = {}
for v in variants:
    t0 = time.perf_counter()
    s = make(v)
    s()
    s()
    steps[v] = s
    print(f"{v}: warm-up {time.perf_counter() - t0:.1f}s", flush=True)
times = {v: [] for v in variants}
for _ in range(reps):
    for v in variants:
        t0 = time.perf_counter()
        steps[v]()
        steps[v]()
        times[v].append((time.perf_counter() - t0) / 2)
base = statistics.median(times[variants[0]])
for v in variants:
    med = statistics.median(times[v])
    print(
        f"{model_name}@{size} b{batch} {v:12s} {batch / med:7.1f} img/s "
        f"(min-max {batch / max(times[v]):.1f}-{batch / min(times[v]):.1f})  x{base / med:.2f}",
        flush=True,
    )
print("load", os.getloadavg())
