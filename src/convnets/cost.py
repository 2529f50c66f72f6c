"""What a network costs: parameters, multiply-adds (MACs) and measured latency.

Convention (the papers' and torchvision's): *multiply-adds* count the convolutions and the
linear layers only -- one MAC is one multiplication plus one addition, so FLOPs ~= 2 x MACs.
BatchNorm, activations, pooling and bias additions are not counted. The whole-network numbers
come from :class:`torch.utils.flop_counter.FlopCounterMode` (which counts grouped/depthwise
convolutions by their real per-group fan-in and SE's 1x1 convolutions like any other), run on
the ``meta`` device so no memory is allocated and no arithmetic is done.

:func:`conv_cost` is the lectures' pencil-and-paper arithmetic for a single layer (plain,
1x1-bottlenecked or depthwise-separable), written out because it is the thing being taught.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .base.plots import pyplot, save_figure
from .models import create_model, get_model_cfg
from .models.registry import builder_defaults

__all__ = [
    "CostReport",
    "LayerCost",
    "compare_cost",
    "conv_cost",
    "default_num_classes",
    "format_count",
    "latency_ms",
    "model_cost",
    "plot_compare",
]


@dataclass
class LayerCost:
    """One leaf module: its output shape per image (C, H, W), own parameters and MACs."""

    name: str
    type: str
    output_shape: list[int]
    params: int
    macs: int


@dataclass
class CostReport:
    model: str
    image_size: list[int]  # [H, W]
    params: int
    macs: int
    layers: list[LayerCost] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "image_size": list(self.image_size),
            "params": self.params,
            "macs": self.macs,
            "layers": [asdict(layer) for layer in self.layers],
        }


def format_count(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M', 4.09e9 -> '4.09 G' (for tables; JSON keeps exact integers)."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def _image_hw(image_size: int | Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if image_size is None:
        return default
    if isinstance(image_size, int):
        return (image_size, image_size)
    hw = tuple(int(s) for s in image_size)
    if len(hw) == 1:
        return (hw[0], hw[0])
    if len(hw) != 2:
        raise ValueError(f"image_size must be N or (H, W), got {image_size!r}")
    return hw  # type: ignore[return-value]


def _default_input(model: nn.Module, name: str | None) -> tuple[int, int, int]:
    """(C, H, W) a model is fed by default: its ModelCfg, else ImageNet's 3x224x224."""
    if name is not None:
        return tuple(get_model_cfg(name).input_size)  # type: ignore[return-value]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return tuple(cfg["input_size"])  # type: ignore[return-value]
    default_cfg = getattr(model, "default_cfg", None)
    if default_cfg is not None and hasattr(default_cfg, "input_size"):
        c, h, w = default_cfg.input_size
        return (getattr(model, "in_chans", c), h, w)
    return (3, 224, 224)


def default_num_classes(name: str) -> int:
    """The number of classes a registered model is published with: its builder's default
    (10 for LeNet-5 and the CIFAR ResNets, 1000 for the ImageNet models)."""

    return builder_defaults(name)[0]


def _build_on_meta(name: str, in_chans: int) -> nn.Module:

    # The meta device allocates nothing and computes nothing; building the largest EfficientNet
    # this way takes well under a second. Fall back to CPU if a model's init needs real values.
    num_classes = default_num_classes(name)
    try:
        with torch.device("meta"):
            return create_model(name, num_classes=num_classes, in_chans=in_chans)
    except (NotImplementedError, RuntimeError):
        return create_model(name, num_classes=num_classes, in_chans=in_chans)


@contextlib.contextmanager
def _batchnorm_as_identity(model: nn.Module, enabled: bool):
    """Run eval-mode BatchNorm layers as the identity while counting on the meta device.

    BN has no multiply-adds by the convention and keeps the shape, but on the meta device its
    forward is a Python decomposition that takes most of the counting time (~0.3 s per ResNet).
    The forward hooks still fire, so BN rows keep their output shapes.
    """
    patched = []
    if enabled:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and "forward" not in vars(module):
                module.forward = _identity
                patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _first_tensor(out) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def model_cost(
    model_or_name: str | nn.Module,
    image_size: int | Sequence[int] | None = None,
    in_chans: int | None = None,
) -> CostReport:
    """Parameters and multiply-adds of a model at batch 1, in eval mode, with a per-layer breakdown.

    ``model_or_name`` is a registered name (built on the meta device: fast, no memory) or a model
    instance (run once at batch 1 under ``no_grad`` on its own device; its train/eval mode is
    restored afterwards). ``image_size`` defaults to the model's published resolution.
    Eval mode means side classifiers (GoogLeNet's aux heads) are not counted, as in the papers.
    """
    name = model_or_name if isinstance(model_or_name, str) else None
    if name is not None:
        in_chans = in_chans or get_model_cfg(name).input_size[0]
        model = _build_on_meta(name, in_chans)
    else:
        model = model_or_name
    c, h, w = _default_input(model, name)
    in_chans = in_chans or c
    hw = _image_hw(image_size, (h, w))
    label = name or getattr(model, "model_name", None) or type(model).__name__

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = torch.zeros(1, in_chans, *hw, device=device)

    # Output shapes from forward hooks on the leaf modules (first call wins for reused modules).
    shapes: dict[str, list[int]] = {}
    order: list[str] = []
    handles = []
    leaves = {n: m for n, m in model.named_modules() if n and not any(True for _ in m.children())}

    def hook(mod_name: str):
        def record(_module, _inputs, output):
            if mod_name not in shapes:
                t = _first_tensor(output)
                shapes[mod_name] = list(t.shape[1:]) if t is not None else []
                order.append(mod_name)

        return record

    for mod_name, module in leaves.items():
        handles.append(module.register_forward_hook(hook(mod_name)))
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with counter, torch.no_grad(), _batchnorm_as_identity(model, enabled=x.is_meta):
            model(x)
    except RuntimeError as e:
        raise ValueError(f"{label} cannot run on a {hw[0]}x{hw[1]}x{in_chans} input: {e}") from e
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    flops_by_module = counter.get_flop_counts()
    prefix = type(model).__name__
    layers = []
    for mod_name in order:
        module = leaves[mod_name]
        flops = sum(flops_by_module.get(f"{prefix}.{mod_name}", {}).values())
        layers.append(
            LayerCost(
                name=mod_name,
                type=type(module).__name__,
                output_shape=shapes[mod_name],
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=int(flops) // 2,
            )
        )
    return CostReport(
        model=label,
        image_size=list(hw),
        params=sum(p.numel() for p in model.parameters()),
        macs=int(counter.get_total_flops()) // 2,
        layers=layers,
    )


# --- one layer, by hand: the lectures' arithmetic ------------------------------------------


def _conv_out(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":  # TF/Keras "same": the output covers ceil(size / stride) positions
        return math.ceil(size / stride)
    if padding == "valid":
        if size < kernel:
            raise ValueError(f"a {kernel}x{kernel} 'valid' convolution needs {kernel}+ pixels, got {size}")
        return (size - kernel) // stride + 1
    raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")


def _stage(name: str, h: int, w: int, c_in: int, c_out: int, kernel: int, depthwise: bool = False) -> dict:
    # Each output value of a kxk convolution takes k*k*c_in multiplies (k*k for a depthwise filter,
    # which sees one channel); params add one bias per filter.
    fan_in = kernel * kernel * (1 if depthwise else c_in)
    return {
        "stage": name,
        "kernel": kernel,
        "in_channels": c_in,
        "filters": c_out,
        "output_shape": [h, w, c_out],
        "macs": h * w * c_out * fan_in,
        "params": (fan_in + 1) * c_out,
        "params_without_bias": fan_in * c_out,
    }


def _parse_hwc(input_hwc: Sequence[int] | str) -> tuple[int, int, int]:
    if isinstance(input_hwc, str):
        parts = input_hwc.lower().replace("×", "x").split("x")
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            values = ()
    else:
        values = tuple(int(v) for v in input_hwc)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"input must be HxWxC with positive sizes (e.g. 28x28x192), got {input_hwc!r}")
    return values  # type: ignore[return-value]


def conv_cost(
    input_hwc: Sequence[int] | str = (28, 28, 192),
    filters: int = 32,
    kernel: int = 5,
    stride: int = 1,
    padding: str = "same",
    bottleneck: int | None = None,
    depthwise_separable: bool = False,
) -> dict:
    """Multiplies and parameters of one convolution layer, as worked in the lectures.

    Returns ``{"input_shape", "output_shape" [H, W, C], "macs", "params", "params_without_bias",
    "bias_counted", "stages": [...], "plain_macs", "plain_params", "macs_saving", "params_saving",
    "convention"}``. ``bottleneck=B`` first reduces to B channels with a 1x1 convolution;
    ``depthwise_separable`` replaces the kxk convolution by a depthwise kxk (one filter per input
    channel) followed by a pointwise 1x1. The savings are relative to the plain kxk convolution.

    >>> conv_cost((28, 28, 192), 32, 5)["macs"]
    120422400
    """
    h, w, c = _parse_hwc(input_hwc)
    for option, value in (("filters", filters), ("kernel", kernel), ("stride", stride)):
        if int(value) < 1:
            raise ValueError(f"{option} must be a positive integer, got {value!r}")
    if bottleneck is not None and bottleneck < 1:
        raise ValueError(f"bottleneck must be a positive number of channels, got {bottleneck!r}")
    oh, ow = _conv_out(h, kernel, stride, padding), _conv_out(w, kernel, stride, padding)

    stages = []
    c_mid = c
    if bottleneck:
        stages.append(_stage("bottleneck 1x1", h, w, c, bottleneck, 1))
        c_mid = bottleneck
    if depthwise_separable:
        stages.append(_stage(f"depthwise {kernel}x{kernel}", oh, ow, c_mid, c_mid, kernel, depthwise=True))
        stages.append(_stage("pointwise 1x1", oh, ow, c_mid, filters, 1))
    else:
        stages.append(_stage(f"conv {kernel}x{kernel}", oh, ow, c_mid, filters, kernel))
    plain = _stage(f"conv {kernel}x{kernel}", oh, ow, c, filters, kernel)

    macs = sum(s["macs"] for s in stages)
    params = sum(s["params"] for s in stages)
    return {
        "input_shape": [h, w, c],
        "output_shape": [oh, ow, filters],
        "macs": macs,
        "params": params,
        "params_without_bias": sum(s["params_without_bias"] for s in stages),
        "bias_counted": True,
        "stages": stages,
        "plain_macs": plain["macs"],
        "plain_params": plain["params"],
        "macs_saving": plain["macs"] / macs,
        "params_saving": plain["params"] / params,
        "convention": (
            "macs = multiplications (one multiply-add per weight per output value); "
            "params = (k*k*c_in + 1) * filters, i.e. one bias per filter counted"
        ),
    }


# --- comparing architectures ---------------------------------------------------------------


def latency_ms(model: nn.Module, x: torch.Tensor, warmup: int = 2, runs: int = 5) -> float:
    """Median wall-clock milliseconds of ``model(x)`` under inference_mode, after warm-up runs."""
    model.eval()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def compare_cost(
    names: Iterable[str],
    image_size: int | Sequence[int] | None = None,
    measure_latency: bool = True,
    warmup: int = 2,
    runs: int = 5,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """One row per model: ``{"model", "image_size", "params", "macs", "latency_ms"}``.

    Latency is measured here (batch 1, randomly initialised weights, median of ``runs`` after
    ``warmup``, on ``device``); it is ``None`` when ``measure_latency`` is off. Each model runs at
    its own default resolution, with its published number of classes, unless ``image_size`` is given.
    """

    rows = []
    for name in names:
        report = model_cost(name, image_size=image_size)
        latency = None
        if measure_latency:
            in_chans = get_model_cfg(name).input_size[0]
            model = create_model(name, num_classes=default_num_classes(name), in_chans=in_chans).to(device)
            x = torch.randn(1, in_chans, *report.image_size, device=device)
            latency = latency_ms(model, x, warmup=warmup, runs=runs)
            del model
        rows.append(
            {
                "model": name,
                "image_size": report.image_size,
                "params": report.params,
                "macs": report.macs,
                "latency_ms": latency,
            }
        )
    return rows


def plot_compare(rows: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Bar charts of params, multiply-adds and latency side by side, written to a PNG."""

    plt = pyplot()
    names = [r["model"] for r in rows]
    panels = [("params", "parameters (M)", 1e6), ("macs", "multiply-adds (G)", 1e9)]
    if any(r.get("latency_ms") is not None for r in rows):
        panels.append(("latency_ms", "latency, batch 1 (ms)", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.45 * len(names) + 1.8))
    for ax, (key, label, scale) in zip(axes, panels):
        values = [(r.get(key) or 0) / scale for r in rows]
        bars = ax.barh(names, values, color="#4c72b0")
        labels = [f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values]
        ax.bar_label(bars, labels=labels, padding=2, fontsize=8)
        ax.set_xlabel(label)
        ax.invert_yaxis()  # first model on top, as in the table
        ax.margins(x=0.2)
    for ax in axes[1:]:
        ax.set_yticklabels([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
