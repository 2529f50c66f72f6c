"""The inference fast path: a trained model made cheaper to run, with the same outputs.

:func:`prepare_for_inference` applies, in order, what bench/RESULTS.md ("Inference fast path") measured
to pay off on CPU:

1. ``eval()`` -- dropout off, BatchNorm uses its running statistics.
2. **BatchNorm folding.** In eval mode ``BN(conv(x)) = gamma * (W*x + b - mu) / sigma + beta`` is one
   affine map, so it is merged into the convolution's weight and bias (``torch.nn.utils.fusion.
   fuse_conv_bn_eval``) and the BatchNorm becomes ``nn.Identity``: one memory pass less per layer.
   Which convolution feeds which BatchNorm is read from a ``torch.fx`` trace (the data flow, not module
   names); the folding is then done on the original modules, so the model keeps its class and the
   ``ConvNet`` interface (``forward_features``, ``forward_head``...). Models ``torch.fx`` cannot trace
   fall back to the pairs that are adjacent inside a plain ``nn.Sequential`` (always safe).
3. **TorchScript freezing** (default): ``torch.jit.trace`` + ``torch.jit.freeze`` +
   ``torch.jit.optimize_for_inference`` (weights become constants, oneDNN conv+ReLU fusion, oneDNN
   weight layouts). Measured the fastest variant at batch 1 and batch 32 for MobileNetV2 and ResNet-50
   (1.1-2.2x over the eager model, ahead of channels-last alone and of ``torch.compile``, which also
   takes 2-5x longer to warm up). The result is a ``ScriptModule`` (the ``ConvNet`` methods are gone:
   call it, or pass ``jit=False`` to keep the eager model). A model that cannot be traced falls back to
   the eager path with a warning.
4. **Memory format.** Without TorchScript, channels-last (NHWC) is 1.0-1.6x faster than NCHW for the
   eager model; with TorchScript NCHW measured equal or slightly faster (oneDNN picks its own blocked
   layout), so ``channels_last=None`` means "channels-last only on the eager path".

:func:`predict_batch` runs the prepared model under ``torch.inference_mode`` (no autograd bookkeeping;
not around ONNX Runtime, which has none and measured slower inside it) and feeds it input in the
memory format it was prepared for.

:func:`inference_module` is what ``predict``/``evaluate``/``report`` run: on CPU it hands the model to
**ONNX Runtime** when that is installed (the ``export`` extra), else to the TorchScript path above. On
this 2-core CPU ORT's kernels (MLAS) were 1.7-2.8x faster than the best torch path at batch 1
(bench/RESULTS.md, "Inference"), and no torch-side option closed that gap, so the tool uses the library
that is faster instead of competing with it. The ORT session is checked against the eager model's
output when it is built; any failure (export, check) falls back to TorchScript with a warning.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from pathlib import Path

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..base.predictions import BACKENDS  # defined torch-free, for the CLI's --backend choices

__all__ = [
    "BACKENDS",
    "OnnxRuntimeModule",
    "backend_of",
    "count_batchnorm",
    "fold_batchnorm",
    "inference_module",
    "write_onnx",
    "predict_batch",
    "prepare_for_inference",
]


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def count_batchnorm(model: nn.Module) -> int:
    """Number of BatchNorm layers left in ``model`` (0 after a complete fold)."""
    return sum(isinstance(m, _BNS) for m in model.modules())


def _conv_bn_pairs_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    """(conv name, bn name) pairs where the BN is applied to the conv's output and to nothing else,
    and each module runs exactly once; None when the model cannot be traced."""

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure means "use the safe fallback"
        return None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BNS):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        if not isinstance(modules.get(src.target), _CONVS):
            continue
        # The conv's raw output must not be used elsewhere (folding changes it), and shared modules
        # (called twice) cannot be folded for one call site only.
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        pairs.append((src.target, node.target))
    return pairs


def _conv_bn_pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    """Adjacent (conv, bn) children of plain ``nn.Sequential`` containers (forward not overridden)."""
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
            continue
        children = list(module.named_children())
        for (a_name, a), (b_name, b) in zip(children[:-1], children[1:]):
            if isinstance(a, _CONVS) and isinstance(b, _BNS):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place.

    The model must be in eval mode (folding uses the running statistics). Returns the number of
    BatchNorm layers folded; each is replaced by ``nn.Identity`` so module names and state-dict keys of
    the remaining layers are unchanged.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model: call model.eval() first")
    pairs = _conv_bn_pairs_fx(model)
    if pairs is None:
        pairs = _conv_bn_pairs_sequential(model)
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        if not bn.track_running_stats or bn.running_mean is None:
            continue  # batch statistics at inference: nothing constant to fold
        _set_submodule(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _set_submodule(model, bn_name, nn.Identity())
    return len(pairs)


def _example(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is not None:
        return example_input
    cfg = getattr(model, "default_cfg", None)
    c, h, w = getattr(cfg, "input_size", (3, 224, 224))
    return torch.randn(1, c, h, w)


def prepare_for_inference(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    channels_last: bool | None = None,
    fold_bn: bool = True,
    jit: bool | None = None,
) -> nn.Module:
    """Return ``model`` ready for fast CPU inference (the eager module is modified in place).

    Args:
        model: any ``nn.Module`` (a zoo ``ConvNet`` or a torchvision model).
        example_input: a representative batch for tracing (defaults to one image at the model's
            ``default_cfg`` input size); the traced model accepts any batch size.
        channels_last: NHWC memory format; ``None``: only when the model stays eager (measured default).
        fold_bn: fold BatchNorm into the preceding convolutions (outputs equal to within float error).
        jit: TorchScript trace + freeze + optimize_for_inference, returning a ``ScriptModule``.
            ``None`` (default) does it and falls back to the eager model if tracing fails; ``True``
            raises instead; ``False`` keeps the eager model (and its ``ConvNet`` methods).
    """
    model.eval()
    if fold_bn:
        fold_batchnorm(model)
    if jit is not False:
        use_cl = bool(channels_last)  # None -> NCHW under TorchScript (measured)
        x = _example(model, example_input)
        if use_cl:
            model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice; the measurement decides
                # A TracerWarning means data-dependent control flow was baked into the trace: wrong
                # for other inputs, so treat it as "cannot trace".
                warnings.simplefilter("error", torch.jit.TracerWarning)
                # check_trace re-traces the model to compare the graphs: 0.3-0.7 s for mobilenet_v2 on
                # 2 cores, a tenth of a frozen-base run's feature pass on small data. Comparing the
                # trace's output with the eager model's once keeps the check that matters, for ~0.02 s.
                traced = torch.jit.trace(model, x, check_trace=False)
                torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)
                scripted = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        except Exception as e:  # noqa: BLE001 - untraceable model: the eager path still works
            if jit:
                raise
            warnings.warn(
                f"TorchScript tracing failed ({type(e).__name__}: {e}); using the eager model", stacklevel=2
            )
        else:
            scripted._convnets_channels_last = use_cl  # read by predict_batch
            return scripted
    use_cl = True if channels_last is None else bool(channels_last)
    model.to(memory_format=torch.channels_last if use_cl else torch.contiguous_format)
    model._convnets_channels_last = use_cl
    return model


def predict_batch(model: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Logits for ``images`` (N, C, H, W) under ``torch.inference_mode``, ``batch_size`` at a time."""
    if images.ndim != 4:
        raise ValueError(f"predict_batch expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    channels_last = getattr(model, "_convnets_channels_last", False)
    step = batch_size or len(images)
    chunks = [images] if step >= len(images) else [images[i : i + step] for i in range(0, len(images), step)]
    # ONNX Runtime has no autograd to switch off, and entering inference_mode around its call measured
    # 0.05-0.18 ms slower per batch-1 call (4% of a MobileNetV2 image): skip it there.
    context = contextlib.nullcontext() if isinstance(model, OnnxRuntimeModule) else torch.inference_mode()
    outputs = []
    with context:
        for chunk in chunks:
            if channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            outputs.append(model(chunk))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def backend_of(module: nn.Module) -> str:
    """Which backend an :func:`inference_module` result runs on ("eager" for a plain module)."""
    return getattr(module, "_convnets_backend", "eager")


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path | io.BytesIO, opset: int) -> None:
    """ONNX with a dynamic batch axis to ``path`` (a file, or a buffer for an in-memory session)."""
    try:
        # optional: onnx
        import onnx  # noqa: F401 - the exporter needs it; fail with our message, not deep inside torch
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx package: pip install 'convnets[export]'") from e
    # torch >= 2.9 defaults to the torch.export-based exporter, which needs the extra `onnxscript`
    # package; the TorchScript-based exporter (dynamo=False) covers these CNNs and needs only onnx.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            path if isinstance(path, io.BytesIO) else str(path),
            dynamo=False,
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )


class OnnxRuntimeModule(nn.Module):
    """A model exported to ONNX and run by an ONNX Runtime CPU session, behind ``nn.Module``'s call.

    Takes and returns float32 torch tensors (N, C, H, W) -> (N, K); any batch size. One session per
    input height and width (exported on first use: adaptive pooling only exports for a fixed size),
    each checked against the eager model's output on that first input.
    """

    def __init__(self, model: nn.Module, opset: int = 17, threads: int | None = None, atol: float = 1e-3):
        super().__init__()
        try:
            # optional: onnx
            import onnx  # noqa: F401 - torch.onnx.export needs it
            import onnxruntime  # optional: onnxruntime
        except ImportError as e:
            raise ImportError("the onnxruntime backend needs: pip install 'convnets[export]'") from e
        self._ort = onnxruntime
        # A CPU float copy, kept out of the module tree (no parameters to move: the sessions own them).
        self.__dict__["_source"] = copy.deepcopy(model).cpu().float().eval()
        self.opset, self.atol = opset, atol
        self.threads = threads or torch.get_num_threads()  # the same budget the torch paths use
        self._sessions: dict[tuple[int, ...], object] = {}
        self._convnets_backend = "onnxruntime"

    def _session(self, x: torch.Tensor):
        key = tuple(x.shape[1:])
        if key in self._sessions:
            return self._sessions[key]
        buf = io.BytesIO()
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's constant-folding notices
            write_onnx(self._source, x[:1].clone(), buf, self.opset)
            expected = self._source(x[:1].clone())
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        session = self._ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"pixels": x[:1].numpy()})[0])
        err = float((got - expected).abs().max())
        scale = max(1.0, float(expected.abs().max()))
        if not err <= self.atol * scale:  # also catches NaN
            raise RuntimeError(
                f"ONNX Runtime output differs from the model's by {err:.2e} (allowed {self.atol * scale:.1e})"
            )
        self._sessions[key] = session
        return session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected (N, C, H, W) input, got shape {tuple(x.shape)}")
        cpu = x.detach().to("cpu", torch.float32).contiguous()
        (out,) = self._session(cpu).run(None, {"pixels": cpu.numpy()})
        return torch.from_numpy(out).to(x.device)


def inference_module(
    model: nn.Module, example_input: torch.Tensor | None = None, backend: str = "auto"
) -> nn.Module:
    """``model`` ready to predict with, on the fastest backend available (the caller's model is not
    modified). ``backend``: one of :data:`BACKENDS`.

    ``"auto"``: on CPU ONNX Runtime if installed, else TorchScript (:func:`prepare_for_inference`); on
    other devices the eager model. ``backend_of(result)`` says which one was used.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown inference backend {backend!r}; choose from {', '.join(BACKENDS)}")
    model.eval()
    x = _example(model, example_input)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if backend == "auto" and not on_cpu:
        backend = "eager"
    if backend in ("auto", "onnxruntime"):
        if not on_cpu:
            raise ValueError("the onnxruntime backend runs on CPU: use --device cpu or another backend")
        try:
            ort_module = OnnxRuntimeModule(model)
            ort_module._session(x.detach().cpu().float())  # export and check now, not mid-evaluation
            return ort_module
        except ImportError:
            if backend == "onnxruntime":
                raise
        except Exception as e:  # noqa: BLE001 - export/check failed: the torch path still works
            if backend == "onnxruntime":
                raise
            warnings.warn(f"ONNX Runtime backend unavailable ({e}); using TorchScript", stacklevel=2)
        backend = "torchscript"
    if backend == "torchscript":
        prepared = prepare_for_inference(copy.deepcopy(model), example_input=x, jit=None)
        prepared._convnets_backend = (
            "torchscript" if isinstance(prepared, torch.jit.ScriptModule) else "eager"
        )
        return prepared
    return model
