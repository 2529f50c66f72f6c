"""Training throughput: images/s of forward + backward + optimizer step, fp32, synthetic batch.

Peers, each in its own process (bench/common.py):

- ``convnets``: what ``convnets train`` does per step with its defaults -- the trainer's optimizer
  (fused AdamW with the no-decay-on-1-d-params groups, ``build_optimizer``), its loss, its precision
  plan (``accel/plan.py``: memory format -- channels-last on CPU for depthwise-convolution models and on
  AVX-512 CPUs, ``prefers_channels_last`` --, autocast, the bf16 CPU kernels), the malloc tuning the CLI
  applies at start, and the per-step ``isfinite``/``loss.item()``/accuracy bookkeeping its loop does
  (``Trainer._train_epoch_batches``; the loop around the plan's calls is reproduced here -- keep the
  two in step).
- ``torchvision``: ``torchvision.models.<name>(weights=None)`` in the plain eager loop people write
  (NCHW, ``AdamW(model.parameters())``, no allocator tuning).
- ``keras``: ``keras.applications.<Name>(weights=None)`` with the TensorFlow backend, ``compile``
  with AdamW and ``train_on_batch`` (Keras' own defaults, including its ``jit_compile="auto"``).
  VGG-16 at sizes other than 224 gets torchvision's classifier (see ``_keras_vgg16_torchvision_head``),
  so both sides train the same 138M parameters.

Variants of the convnets peer (one setting changed) back each default in RESULTS.md.
"""

from __future__ import annotations

import os
import time

import numpy as np

BATCH = 32
NUM_CLASSES = 1000
KERAS_APPS = {
    "mobilenet_v2": "MobileNetV2",
    "resnet50": "ResNet50",
    "efficientnet_b0": "EfficientNetB0",
    "vgg16": "VGG16",
}


class _TorchPeer:
    def __init__(self, spec: dict) -> None:
        import torch

        self.spec = spec
        threads = spec.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        g = torch.Generator().manual_seed(0)
        b, s = spec["batch"], spec["size"]
        self.x = torch.randn(b, 3, s, s, generator=g)
        self.y = torch.randint(0, NUM_CLASSES, (b,), generator=g)
        self.steps = spec.get("steps", 1)
        self.meta = {"torch_threads": torch.get_num_threads()}

    def warmup(self) -> None:
        for _ in range(self.spec.get("warmup", 2)):
            self.step()

    def rep(self) -> dict:
        t0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(self.steps):
            self.step()
        return {
            "seconds": time.perf_counter() - t0,
            # this process's CPU time: on a loaded machine, at one thread, steadier than the wall clock
            "cpu_seconds": time.process_time() - cpu0,
            "items": self.steps * len(self.x),
        }


class ConvnetsPeer(_TorchPeer):
    """One step of convnets' Trainer loop (see the module docstring)."""

    def __init__(self, spec: dict) -> None:
        if spec.get("malloc", True):
            from convnets.base.runtime import tune_malloc

            tune_malloc()
        import torch
        from torch import nn

        from convnets.accel.plan import PrecisionPlan
        from convnets.base.runtime import describe_cpu, prefers_channels_last
        from convnets.models.registry import create_model
        from convnets.train.optim import build_optimizer
        from convnets.train.options import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, TrainOptions

        super().__init__(spec)
        torch.manual_seed(0)
        # "bf16-plain": bf16 autocast alone (the plan with --cpu-kernels off).
        plain_bf16 = spec.get("precision") == "bf16-plain"
        # "bf16-unfused": the backward picker, but BatchNorm and activations in ATen's kernels.
        unfused_bn = plain_bf16 or spec.get("precision") == "bf16-unfused"
        opts = TrainOptions(precision="bf16" if unfused_bn else spec.get("precision", "fp32"))
        opts.lr = DEFAULT_LR[opts.optimizer]
        opts.weight_decay = DEFAULT_WEIGHT_DECAY[opts.optimizer]
        self.model = create_model(spec["model"], num_classes=NUM_CLASSES).train()
        # api.train resolves channels_last=None the same way on CPU; the ablation can flip it.
        channels_last = prefers_channels_last(self.model) != bool(spec.get("flip_memory_format"))
        self.plan = PrecisionPlan(
            opts.precision,
            torch.device("cpu"),
            cpu_kernels=not plain_bf16,
            channels_last=channels_last,
            compiled=bool(spec.get("compile")),
        )
        if unfused_bn:
            self.plan.fuse_bn = False  # the ablation: everything the plan does but the fused BatchNorm
        self.plan.prepare(self.model)  # as the Trainer does
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, opts, opts.lr)
        if spec.get("unfused"):  # the same groups with torch's default (foreach) implementation
            self.optimizer = type(self.optimizer)(
                [{k: g[k] for k in ("params", "weight_decay")} for g in self.optimizer.param_groups],
                lr=opts.lr,
            )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=opts.label_smoothing)
        self.forward = torch.compile(self.model) if spec.get("compile") else self.model
        # The whole benchmark is one training epoch: the plan's module rewrites stay on for its life.
        self.epoch = self.plan.training_epoch(self.model)
        fused_layers = self.epoch.__enter__()
        self.meta.update(
            channels_last=channels_last,
            malloc_tuned=describe_cpu()["malloc_tuned"],
            optimizer=opts.optimizer,
            fused_optimizer=bool(self.optimizer.defaults.get("fused")),
            precision=spec.get("precision", "fp32"),
            compile=bool(spec.get("compile")),
            fused_batchnorm_layers=fused_layers,
        )

    def step(self) -> None:
        import torch

        x = self.plan.inputs(self.x)
        with self.plan.autocast():
            logits = self.forward(x)
            loss = self.criterion(logits, self.y)
        bool(torch.isfinite(loss.detach()).item())
        self.plan.backward(loss)
        loss.item()
        (logits.argmax(1) == self.y).sum().item()
        self.plan.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)


class TorchvisionPeer(_TorchPeer):
    """The plain eager loop: torchvision model, NCHW, AdamW over all parameters."""

    def __init__(self, spec: dict) -> None:
        import torch
        import torchvision

        super().__init__(spec)
        torch.manual_seed(0)
        self.model = getattr(torchvision.models, spec["model"])(weights=None, num_classes=NUM_CLASSES).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def step(self) -> None:
        import torch.nn.functional as F

        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()


def _keras_vgg16_torchvision_head(keras, size: int):
    """Keras' VGG16 with torchvision's classifier, for inputs other than 224.

    Keras' own top flattens whatever map the convolutions leave (2x2x512 at 64: a 2,048 -> 4,096 first
    layer, 44M parameters in all), while torchvision pools adaptively to 7x7 first (25,088 -> 4,096,
    138M). Comparing those would time different networks; resizing the map to 7x7 gives Keras the same
    layers, parameters and multiply-adds as the torch peers (the resize itself is negligible).
    """
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
    x = keras.layers.Resizing(7, 7, interpolation="bilinear")(base.output)
    x = keras.layers.Flatten()(x)
    for _ in range(2):
        x = keras.layers.Dense(4096, activation="relu")(x)
        x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(x)
    return keras.Model(base.input, outputs)


class KerasPeer:
    """Keras 3 (TensorFlow backend): ``keras.applications`` model, ``train_on_batch``."""

    def __init__(self, spec: dict) -> None:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras

        self.spec = spec
        rng = np.random.default_rng(0)
        b, s = spec["batch"], spec["size"]
        self.x = rng.standard_normal((b, s, s, 3), dtype=np.float32)
        self.y = rng.integers(0, NUM_CLASSES, (b,))
        self.steps = spec.get("steps", 1)
        app = getattr(keras.applications, KERAS_APPS[spec["model"]])
        if spec["model"] == "vgg16" and s != 224:
            self.model = _keras_vgg16_torchvision_head(keras, s)
        else:
            self.model = app(weights=None, input_shape=(s, s, 3), classes=NUM_CLASSES)
        self.model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
        self.meta = {
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "params": int(self.model.count_params()),
        }

    def warmup(self) -> None:
        for _ in range(self.spec.get("warmup", 2)):
            self.model.train_on_batch(self.x, self.y)
        self.meta["jit_compile"] = bool(getattr(self.model, "jit_compile", False))

    def rep(self) -> dict:
        t0 = time.perf_counter()
        for _ in range(self.steps):
            self.model.train_on_batch(self.x, self.y)  # returns the loss: synchronous
        return {"seconds": time.perf_counter() - t0, "items": self.steps * len(self.x)}


def make_peer(spec: dict):
    return {"convnets": ConvnetsPeer, "torchvision": TorchvisionPeer, "keras": KerasPeer}[spec["peer"]](spec)


# --- the comparison ------------------------------------------------------------------------------

# (model, image size, batch); ResNet-50 at 224 uses batch 16 to keep three live processes in memory.
FULL_CONFIGS = [
    ("mobilenet_v2", 160, 32),
    ("resnet50", 64, 32),
    ("resnet50", 224, 16),
    ("efficientnet_b0", 224, 32),
    ("vgg16", 64, 32),
]
QUICK_CONFIGS = [("mobilenet_v2", 64, 4)]


def _train_gflop(model: str, size: int) -> float | None:
    """Training FLOPs per image ~= 6 x multiply-adds (2 forward, 4 backward), in GFLOP."""
    try:
        from convnets.cost import model_cost

        return 6 * model_cost(model, image_size=size).macs / 1e9
    except Exception:  # noqa: BLE001 - cost.py unavailable: no GFLOP/s column
        return None


def run(
    quick: bool = False,
    reps: int = 5,
    peers: tuple[str, ...] = ("convnets", "torchvision", "keras"),
    log=print,
) -> dict:
    """The main comparison; returns a JSON-able dict with per-config peer results."""
    from common import compare, has_module

    if not has_module("keras") or not has_module("tensorflow"):
        peers = tuple(p for p in peers if p != "keras")
        log("  keras/tensorflow not installed: Keras peer skipped (pip install 'convnets[bench]')")
    configs = QUICK_CONFIGS if quick else FULL_CONFIGS
    out = []
    for model, size, batch in configs:
        steps = 1 if quick or size >= 224 else 2
        spec = {"model": model, "size": size, "batch": batch, "steps": steps, "warmup": 1 if quick else 2}
        log(f"  train {model} @{size} batch {batch}: {', '.join(peers)}")
        results = compare({p: ("train_throughput", {**spec, "peer": p}, None) for p in peers}, reps, log=log)
        out.append(
            {
                "model": model,
                "size": size,
                "batch": batch,
                "gflop_per_image": _train_gflop(model, size),
                "peers": {k: v.to_dict() for k, v in results.items()},
                "_results": results,
            }
        )
    return {"configs": out}


ABLATION_VARIANTS = {
    "defaults": ({}, None),
    "other memory format": ({"flip_memory_format": True}, None),
    "unfused optimizer": ({"unfused": True}, None),
    "no malloc tuning": ({"malloc": False}, {"CONVNETS_MALLOC_TUNING": "0"}),
    "1 thread": ({"threads": 1}, None),
}


def run_ablation(
    quick: bool = False, reps: int = 5, bf16: bool = True, compile_: bool = True, log=print
) -> dict:
    """convnets' training step with one default changed at a time (each its own process)."""
    from common import compare

    configs = (
        [("mobilenet_v2", 64, 4)]
        if quick
        else [("mobilenet_v2", 160, 32), ("resnet50", 64, 32), ("resnet50", 224, 16), ("vgg16", 64, 32)]
    )
    out = []
    for i, (model, size, batch) in enumerate(configs):
        spec = {
            "peer": "convnets",
            "model": model,
            "size": size,
            "batch": batch,
            "steps": 1 if quick else 2,
            "warmup": 1 if quick else 2,
        }
        peers = {
            name: ("train_throughput", {**spec, **over}, env)
            for name, (over, env) in ABLATION_VARIANTS.items()
        }
        if bf16 and i == 0:
            peers["bf16 autocast"] = ("train_throughput", {**spec, "precision": "bf16", "steps": 1}, None)
        if compile_ and i == 0:
            peers["torch.compile"] = ("train_throughput", {**spec, "compile": True}, None)
        log(f"  ablation {model} @{size} batch {batch}: {', '.join(peers)}")
        results = compare(peers, reps, log=log, setup_timeout=900)
        out.append(
            {
                "model": model,
                "size": size,
                "batch": batch,
                "peers": {k: v.to_dict() for k, v in results.items()},
                "_results": results,
            }
        )
    return {"configs": out}
