"""BatchNorm + activation fused into one kernel pair for bf16 training on CPU.

In a bf16 MobileNetV2 training step on an AMX CPU, BatchNorm and ReLU6 took 177 of 370 ms (2 threads,
batch 32, 160 px): each is its own memory pass over the activations, forward and backward, and the
backward also reads the activation's saved output. :func:`fuse_batchnorm_act` makes each training-mode
``BatchNorm2d`` whose only consumer is a ReLU/ReLU6 module run both in the kernels of
``bn_act_kernel.c`` (two passes forward, two backward, the clamp's mask recomputed from the saved
BatchNorm input), and BatchNorm layers without a following activation run the same kernels with no
clamp. Measured in bench/RESULTS.md, "Training precision".

Hand-written because neither library does it at speed: ATen has no fused training BatchNorm with an
activation, and ``torch.compile`` (inductor) fuses the graph but its CPU kernels for it were slower
than ATen's separate ones (BatchNorm+ReLU6 at 32x96x80x80 bf16, forward and backward: 43-50 ms against
ATen's 33 ms; these kernels 18 ms).

The C source is compiled once per machine (train/ckernels.py). Without a C compiler, or with
``CONVNETS_C_KERNELS=0``, nothing changes: the model runs ATen's kernels. Only bf16 channels-last CPU
tensors take the kernels, in training mode or (a frozen BatchNorm while fine-tuning) where a gradient
flows through; anything else (inference, fp32, CUDA) runs the layer's own forward.
"""

from __future__ import annotations

import ctypes
import math
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .ckernels import c_kernel_error, load_c_kernel

KERNEL_SOURCE = Path(__file__).with_name("bn_act_kernel.c")
_ptr, _i64, _f32, _i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SIGNATURES = {
    "bn_act_stats": (_i32, [_ptr, _i64, _i64, _ptr, _ptr, _i32]),
    "bn_act_apply": (None, [_ptr, _i64, _i64, _ptr, _ptr, _f32, _f32, _ptr, _i32]),
    "bn_act_backward": (_i32, [_ptr, _ptr, _i64, _i64, *[_ptr] * 4, _f32, _f32, _i32, *[_ptr] * 3, _i32]),
}
_kernel: ctypes.CDLL | None = None  # what load_kernel got; the layers and the autograd function use it


def load_kernel() -> ctypes.CDLL | None:
    """The compiled kernels (built on first use: train/ckernels.py), or None when they can't be had
    (:func:`kernel_error` says why)."""
    global _kernel
    _kernel = load_c_kernel(KERNEL_SOURCE, _SIGNATURES)
    return _kernel


def kernel_error() -> str | None:
    """Why :func:`load_kernel` returned None (None when it has not been tried or worked)."""
    return c_kernel_error(KERNEL_SOURCE)


class _BatchNormActFunction(torch.autograd.Function):
    """clamp(batch_norm(x), lo, hi). With ``batch_stats``, normalised by the batch's statistics and
    ``running_mean``/``running_var`` (when given) updated in place; otherwise by the running ones (a
    frozen BatchNorm that still passes gradients, as when fine-tuning)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, lo, hi, batch_stats):
        lib = _kernel
        n, c, h, w = x.shape
        rows = n * h * w
        threads = torch.get_num_threads()
        if batch_stats:
            mean = torch.empty(c)
            var = torch.empty(c)
            if lib.bn_act_stats(x.data_ptr(), rows, c, mean.data_ptr(), var.data_ptr(), threads) != 0:
                raise MemoryError("fused BatchNorm: out of memory for the per-thread sums")
        else:
            mean, var = running_mean.detach().float().clone(), running_var.detach().float()
        invstd = torch.rsqrt(var + eps)
        scale = weight.detach().float() * invstd if weight is not None else invstd.clone()
        shift = bias.detach().float() - mean * scale if bias is not None else -mean * scale
        y = torch.empty_like(x)
        lib.bn_act_apply(
            x.data_ptr(), rows, c, scale.data_ptr(), shift.data_ptr(), lo, hi, y.data_ptr(), threads
        )
        if batch_stats and running_mean is not None:
            with torch.no_grad():  # as BatchNorm: the running variance is the unbiased one
                running_mean.lerp_(mean, momentum)
                running_var.lerp_(var * (rows / (rows - 1)), momentum)
        ctx.save_for_backward(x, scale, shift, mean, invstd)
        ctx.bounds, ctx.batch_stats, ctx.lib = (lo, hi), batch_stats, lib
        return y

    @staticmethod
    def backward(ctx, grad):
        x, scale, shift, mean, invstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        if grad.dtype != torch.bfloat16:
            grad = grad.to(torch.bfloat16)
        n, c, h, w = x.shape
        dx = torch.empty_like(x)
        sum_dz = torch.empty(c)
        sum_dzx = torch.empty(c)
        status = ctx.lib.bn_act_backward(
            grad.data_ptr(), x.data_ptr(), n * h * w, c, scale.data_ptr(), shift.data_ptr(), mean.data_ptr(),
            invstd.data_ptr(), *ctx.bounds, int(ctx.batch_stats), dx.data_ptr(), sum_dz.data_ptr(),
            sum_dzx.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("fused BatchNorm backward: out of memory for the per-thread sums")
        return dx, sum_dzx * invstd, sum_dz, None, None, None, None, None, None, None


# An output the fused layer already clamped carries the id of the activation module to skip.
_ACT_DONE = "_convnets_activation_done"


class FusedBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` (same parameters, buffers and state-dict keys; set by class swap) that runs the
    fused kernels where they apply, with ``act_bounds`` = the clamp of the activation it absorbed."""

    act_bounds: tuple[float, float] = (-math.inf, math.inf)
    absorbed: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm's own rule: batch statistics in training, or in eval without running statistics.
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not self._fusable(x, batch_stats):
            return super().forward(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
        update = self.training and self.track_running_stats
        y = _BatchNormActFunction.apply(
            x, self.weight, self.bias, self.running_mean if update or not batch_stats else None,
            self.running_var if update or not batch_stats else None, momentum, self.eps, *self.act_bounds,
            batch_stats,
        )  # fmt: skip
        if self.absorbed is not None:
            setattr(y, _ACT_DONE, id(self.absorbed))
        return y

    def _fusable(self, x: torch.Tensor, batch_stats: bool) -> bool:
        return (
            _kernel is not None
            # frozen (eval-mode) layers only where a gradient flows through them: inference keeps ATen's
            and (batch_stats or (torch.is_grad_enabled() and x.requires_grad))
            and x.device.type == "cpu"
            and x.dtype == torch.bfloat16
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            # BatchNorm's own error for one value per channel
            and (not batch_stats or x.shape[0] * x.shape[2] * x.shape[3] > 1)
        )


def _skips_if_done(forward):
    def skipping_forward(self, x):
        if getattr(x, _ACT_DONE, None) == id(self):
            return x
        return forward(self, x)

    return skipping_forward


_SKIPPING_CLASSES: dict[type, type] = {}


def _skipping_class(cls: type) -> type:
    """``cls`` with a forward that passes through an output its BatchNorm already clamped."""
    if cls not in _SKIPPING_CLASSES:
        _SKIPPING_CLASSES[cls] = type(cls.__name__, (cls,), {"forward": _skips_if_done(cls.forward)})
    return _SKIPPING_CLASSES[cls]


def activation_bounds(module: nn.Module) -> tuple[float, float] | None:
    """The clamp an activation module is, or None when it is not one (ReLU, ReLU6, Hardtanh)."""
    cls = type(module)
    cls = cls.__bases__[0] if cls in _SKIPPING_CLASSES.values() else cls  # already switched
    if cls is nn.ReLU:
        return (0.0, math.inf)
    if cls in (nn.ReLU6, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    return None


def batchnorm_activation_pairs(model: nn.Module) -> list[tuple[nn.BatchNorm2d, nn.Module | None]]:
    """Every ``BatchNorm2d`` of ``model`` with the activation module that alone consumes its output
    (None where none does). Found on a ``torch.fx`` trace of the forward (so ResNet's shared
    ``self.relu`` after ``bn1`` counts, and ``bn3``, added to the shortcut first, does not); where the
    model does not trace, from ``nn.Sequential`` order. Cached per model."""
    if model in _PAIRS:
        return _PAIRS[model]
    batchnorms = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    consumers: dict[int, set] = {id(bn): set() for bn in batchnorms}  # per call: the act, or None
    try:
        import torch.fx

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.fx.symbolic_trace(model).graph
        modules = dict(model.named_modules())
        for node in graph.nodes:
            bn = modules.get(node.target) if node.op == "call_module" else None
            if type(bn) is not nn.BatchNorm2d:
                continue
            users = list(node.users)
            act = modules.get(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
            consumers[id(bn)].add(act if act is not None and activation_bounds(act) is not None else None)
    except Exception:  # noqa: BLE001 - any model fx can't trace: fall back to Sequential order
        consumers = {id(bn): set() for bn in batchnorms}
        for seq in model.modules():
            if isinstance(seq, nn.Sequential):
                kids = list(seq)
                for bn, nxt in zip(kids, kids[1:]):
                    if type(bn) is nn.BatchNorm2d and activation_bounds(nxt) is not None:
                        consumers[id(bn)].add(nxt)
    # A layer absorbs its activation only when every call of it feeds that one module alone.
    pairs = [(bn, next(iter(c)) if len(c := consumers[id(bn)]) == 1 else None) for bn in batchnorms]
    _PAIRS[model] = pairs
    return pairs


_PAIRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextmanager
def fuse_batchnorm_act(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, ``model``'s BatchNorm layers (and the ReLU/ReLU6 each one feeds alone) run
    fused for bf16 CPU training; yields how many BatchNorm layers were switched (0 where the kernel
    is unavailable or ``enabled`` is False). The layers' classes are restored on exit, so the model
    saves, exports and evaluates as before."""
    if not enabled or load_kernel() is None:
        yield 0
        return
    swapped: list[tuple[nn.Module, type]] = []
    try:
        for bn, act in batchnorm_activation_pairs(model):
            swapped.append((bn, type(bn)))
            bn.__class__ = FusedBatchNorm2d
            if act is not None:
                # plain attributes, not submodules: the state dict and module tree stay as they were
                bn.__dict__.update(act_bounds=activation_bounds(act), absorbed=act)
                if type(act) not in _SKIPPING_CLASSES.values():  # ResNet's relu serves two layers
                    swapped.append((act, type(act)))
                    act.__class__ = _skipping_class(type(act))
        yield sum(1 for m, _ in swapped if isinstance(m, FusedBatchNorm2d))
    finally:
        for module, cls in reversed(swapped):
            for attr in ("act_bounds", "absorbed"):
                module.__dict__.pop(attr, None)
            module.__class__ = cls
