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

:func:`predict_batch` runs the prepared model under ``torch.inference_mode`` (no autograd bookkeeping)
and feeds it input in the memory format it was prepared for.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm", "predict_batch", "prepare_for_inference", "count_batchnorm"]


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def count_batchnorm(model: nn.Module) -> int:
    """Number of BatchNorm layers left in ``model`` (0 after a complete fold)."""
    return sum(isinstance(m, _BNS) for m in model.modules())


def _conv_bn_pairs_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    """(conv name, bn name) pairs where the BN is applied to the conv's output and to nothing else,
    and each module runs exactly once; None when the model cannot be traced."""
    import torch.fx

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
                scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))
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
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            if channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            outputs.append(model(chunk))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
