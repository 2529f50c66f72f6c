"""Inference: batch-1 latency and batch-32 throughput at 224, each peer in its own process.

Peers: ``convnets`` (``convnets.accel.inference.inference_module`` with ``backend="auto"``, what
``predict``/``evaluate`` run: ONNX Runtime when installed), ``convnets-torch`` (the torch-only path
that ``auto`` uses without onnxruntime: ``prepare_for_inference`` defaults, TorchScript),
``torchvision`` (the eager ``model.eval()`` + ``torch.no_grad()`` people write), ``onnxruntime``
(the torchvision model exported with ``torch.onnx.export``, default ``InferenceSession``).
The fast-path variants (``prepare_for_inference`` with one option changed, and ``torch.compile``)
back the defaults of ``convnets.accel.inference``.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path


class InferencePeer:
    def __init__(self, spec: dict) -> None:
        import torch

        if spec.get("malloc", True) and spec["peer"] != "torchvision":
            from convnets.base.runtime import tune_malloc

            tune_malloc()
        self.spec = spec
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        s, b = spec["size"], spec["batch"]
        self.x = torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(0))
        self.calls = spec.get("calls", 1)  # forward calls per repetition
        self.meta: dict = {}
        torch.manual_seed(0)
        kind = spec["peer"]
        if kind == "torchvision":
            import torchvision

            self.model = getattr(torchvision.models, spec["model"])(weights=None).eval()
            self.call = self._eager
        elif kind == "onnxruntime":
            self._setup_ort()
        else:  # convnets, with the fast-path options in spec["options"]
            from convnets.accel.inference import (
                backend_of,
                count_batchnorm,
                inference_module,
                predict_batch,
                prepare_for_inference,
            )
            from convnets.models.registry import create_model

            model = create_model(spec["model"]).eval()
            self._predict = predict_batch
            self.call = lambda: self._predict(self.model, self.x)
            if spec.get("backend"):  # the tool's own path, on the named backend
                self.model = inference_module(model, example_input=self.x[:1], backend=spec["backend"])
                self.meta = {"backend": backend_of(self.model)}
                return
            options = dict(spec.get("options", {}))
            compile_ = options.pop("compile", False)
            if options.pop("plain", False):  # the unprepared zoo model (eager, BN kept)
                self.model = model
            else:
                self.model = prepare_for_inference(model, example_input=self.x, **options)
            if compile_:
                self.model = torch.compile(self.model)
                self.model._convnets_channels_last = bool(options.get("channels_last"))
            self.meta = {
                "channels_last": bool(getattr(self.model, "_convnets_channels_last", False)),
                "batchnorm_left": count_batchnorm(model),
                "options": spec.get("options", {}),
            }

    def _eager(self):
        import torch

        with torch.no_grad():
            return self.model(self.x)

    def _setup_ort(self) -> None:
        import onnxruntime as ort
        import torch
        import torchvision

        model = getattr(torchvision.models, self.spec["model"])(weights=None).eval()
        self._tmp = tempfile.TemporaryDirectory()
        path = Path(self._tmp.name) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # dynamo=False: the TorchScript exporter, needing only the onnx package (as deploy/export.py).
            torch.onnx.export(
                model,
                (self.x[:1],),
                str(path),
                dynamo=False,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                opset_version=17,
            )
        options = ort.SessionOptions()
        if self.spec.get("threads"):
            options.intra_op_num_threads = int(self.spec["threads"])
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.feed = {"x": self.x.numpy()}
        self.meta = {"onnxruntime": ort.__version__}
        self.call = lambda: self.session.run(None, self.feed)

    def warmup(self) -> None:
        t0 = time.perf_counter()
        self.call()  # first call: oneDNN primitive creation, ORT/compile setup
        self.meta["first_call_s"] = time.perf_counter() - t0
        for _ in range(self.spec.get("warmup", 2)):
            self.call()

    def rep(self) -> dict:
        t0 = time.perf_counter()
        for _ in range(self.calls):
            self.call()
        return {"seconds": time.perf_counter() - t0, "items": self.calls * len(self.x)}


def make_peer(spec: dict) -> InferencePeer:
    return InferencePeer(spec)


def _modes(quick: bool) -> list[tuple[str, int, int]]:
    """(label, batch, calls per rep)."""
    return [("batch 1", 1, 3), ("batch 4", 4, 1)] if quick else [("batch 1", 1, 20), ("batch 32", 32, 1)]


def run(quick: bool = False, reps: int = 5, log=print, threads_one: bool = True) -> dict:
    from common import compare, has_module

    models = ["mobilenet_v2"] if quick else ["mobilenet_v2", "resnet50"]
    size = 64 if quick else 224
    names = {"convnets": "auto", "convnets-torch": "torchscript", "torchvision": None, "onnxruntime": None}
    if not has_module("onnxruntime"):
        names = {"convnets": "auto", "torchvision": None}  # auto is the torch path then
    peers = list(names)

    def specs(spec: dict) -> dict:
        return {
            p: (
                "inference",
                {**spec, "peer": p.split("-")[0], "backend": b} if b else {**spec, "peer": p},
                None,
            )
            for p, b in names.items()
        }

    out = []
    for model in models:
        for label, batch, calls in _modes(quick):
            spec = {"model": model, "size": size, "batch": batch, "calls": calls, "warmup": 1 if quick else 3}
            log(f"  inference {model} @{size} {label}: {', '.join(peers)}")
            results = compare(specs(spec), reps, log=log)
            out.append(
                {
                    "model": model,
                    "size": size,
                    "batch": batch,
                    "mode": label,
                    "peers": {k: v.to_dict() for k, v in results.items()},
                    "_results": results,
                }
            )
    if threads_one:
        # Batch 1 with one intra-op thread for every peer: on a shared, oversubscribed machine a 2-thread
        # OpenMP barrier waits for a descheduled thread at every layer; one thread has no barrier.
        for model in models:
            spec = {"model": model, "size": size, "batch": 1, "calls": 3 if quick else 20, "threads": 1}
            spec["warmup"] = 1 if quick else 3
            log(f"  inference {model} @{size} batch 1, 1 thread: {', '.join(peers)}")
            results = compare(specs(spec), reps, log=log)
            out.append(
                {
                    "model": model,
                    "size": size,
                    "batch": 1,
                    "mode": "batch 1, 1 thread",
                    "peers": {k: v.to_dict() for k, v in results.items()},
                    "_results": results,
                }
            )
    return {"configs": out}


# Fast-path variants: the unprepared model, then each option of prepare_for_inference.
FAST_PATH_VARIANTS = {
    "eager (no folding)": {"plain": True},
    "fold BN, NCHW": {"channels_last": False, "jit": False},
    "fold BN, channels-last": {"channels_last": True, "jit": False},
    "fold BN, NCHW, TorchScript freeze": {"channels_last": False, "jit": True},
    "fold BN, channels-last, TorchScript freeze": {"channels_last": True, "jit": True},
}


def run_fast_path(quick: bool = False, reps: int = 5, compile_: bool = True, log=print) -> dict:
    """Which ``prepare_for_inference`` options pay off, per model and batch size."""
    from common import compare

    models = ["mobilenet_v2"] if quick else ["mobilenet_v2", "resnet50"]
    size = 64 if quick else 224
    out = []
    for model in models:
        for label, batch, calls in _modes(quick):
            spec = {
                "peer": "convnets",
                "model": model,
                "size": size,
                "batch": batch,
                "calls": calls,
                "warmup": 1 if quick else 3,
            }
            peers = {
                name: ("inference", {**spec, "options": opts}, None)
                for name, opts in FAST_PATH_VARIANTS.items()
            }
            if compile_ and model == models[0]:  # compiling takes minutes here: one architecture
                peers["fold BN, NCHW, torch.compile"] = (
                    "inference",
                    {**spec, "options": {"channels_last": False, "jit": False, "compile": True}},
                    None,
                )
            log(f"  fast path {model} @{size} {label}: {len(peers)} variants")
            results = compare(peers, reps, log=log, setup_timeout=600)
            out.append(
                {
                    "model": model,
                    "size": size,
                    "batch": batch,
                    "mode": label,
                    "peers": {k: v.to_dict() for k, v in results.items()},
                    "_results": results,
                }
            )
    return {"configs": out}
