"""Fast bf16 convolution backward on CPU: per layer shape, the fastest of the ways to get each gradient.

Under bf16 autocast on an AMX CPU, oneDNN runs convolution forwards and most input gradients on fast
AMX kernels, but some bf16 backward kernels are far slower than another way to the same numbers
(2 threads, Intel Xeon with AMX; bench/RESULTS.md, "Training precision"):

- the weight gradient of dense convolutions on small feature maps (``brgconv_bwd_w``): ResNet-50 at
  64 px, 512->512 3x3 at 2x2 took 10.2 ms against 0.7 ms as one bf16 matmul over the unfolded input;
- the input gradient of stride-2 depthwise convolutions, which falls back to a non-AMX kernel
  (``brgconv_strided:avx512_core_bf16``): MobileNetV2's 576-channel one took 58 ms against 0.5 ms
  in fp32 (1 thread).

So while ``loss.backward()`` runs, :class:`FastBf16ConvBackward` (a dispatch mode: the model is not
changed, so it works for timm/torchvision backbones and under DDP) answers ``convolution_backward``
for bf16 CPU convolutions with, for each gradient, the fastest of: oneDNN in bf16, oneDNN in fp32
(inputs cast up, result cast back), for the dense weight gradient a matmul, and for the depthwise
input gradient a stride-1 depthwise convolution over the (spread-out) output gradient. It
times them on the first call of each shape and keeps the winner, so where oneDNN's bf16 kernel is
fastest it stays.
Hand-written because neither PyTorch nor oneDNN choose between these; every candidate is a PyTorch op.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ..base import runtime  # read at call time: tests stand in other CPUs through it
from ..base.atomic import atomic_write
from ..base.runtime import cache_root

_aten = torch.ops.aten
BF16, FP32, MATMUL, DILATED = "bf16", "fp32", "matmul", "dilated"


def weight_grad_matmul(
    grad_out: torch.Tensor, x: torch.Tensor, kernel: int, stride: int, padding: int
) -> torch.Tensor:
    """A square, ungrouped, undilated convolution's weight gradient as grad_out^T @ im2col(x).

    Works in NHWC (the channels-last layout training uses, so the permutes are free) and returns an
    ``(out, in, k, k)`` tensor with channels-last strides.
    """
    out_ch, in_ch = grad_out.shape[1], x.shape[1]
    g = grad_out.permute(0, 2, 3, 1).reshape(-1, out_ch)  # (N*Ho*Wo, out)
    if kernel == 1 and stride == 1 and padding == 0:
        return (g.t() @ x.permute(0, 2, 3, 1).reshape(-1, in_ch)).view(out_ch, in_ch, 1, 1)
    nhwc = F.pad(x.permute(0, 2, 3, 1), (0, 0, padding, padding, padding, padding))
    cols = nhwc.unfold(1, kernel, stride).unfold(2, kernel, stride)  # (N, Ho, Wo, in, kh, kw)
    cols = cols.permute(0, 1, 2, 4, 5, 3).reshape(-1, kernel * kernel * in_ch)  # (N*Ho*Wo, kh*kw*in)
    return (g.t() @ cols).view(out_ch, kernel, kernel, in_ch).permute(0, 3, 1, 2)


def depthwise_input_grad_dilated(
    grad_out: torch.Tensor, x_shape: torch.Size, weight: torch.Tensor, stride: int, padding: int
) -> torch.Tensor:
    """A depthwise convolution's input gradient as a stride-1 depthwise convolution (a forward).

    The transposed convolution, written out: ``grad_out`` spread onto a zero grid ``stride`` apart
    (for stride 1, as it is), then convolved with the flipped kernel at padding ``k - 1 - padding``.
    oneDNN's bf16 depthwise forward is fast where its input-gradient kernels are not (batch 32,
    2 threads): stride 2, MobileNetV2's 96 channels at 80x80, 10.8 ms against 59 ms in bf16 and 13 ms
    in fp32 before casts; stride 1, 144 channels at 40x40, 1.1 ms against 2.2 ms.
    """
    n, c, ho, wo = grad_out.shape
    k = weight.shape[-1]
    if stride == 1:
        return F.conv2d(grad_out, weight.flip(2, 3), padding=k - 1 - padding, groups=c)
    # rows/columns of the input that the last window did not reach: zero gradient, padded at the end
    extra_h = (x_shape[2] + 2 * padding - k) % stride
    extra_w = (x_shape[3] + 2 * padding - k) % stride
    spread = grad_out.new_zeros(
        (n, c, (ho - 1) * stride + 1 + extra_h, (wo - 1) * stride + 1 + extra_w)
    ).contiguous(memory_format=torch.channels_last)
    spread[:, :, : (ho - 1) * stride + 1 : stride, : (wo - 1) * stride + 1 : stride] = grad_out
    return F.conv2d(spread, weight.flip(2, 3), padding=k - 1 - padding, groups=c)


def machine_choices_file() -> Path:
    """``cache_root()/bf16_backward/<key>.json``: the picks of this CPU model and instruction sets,
    torch version and intra-op thread count (the timings, and so the picks, depend on all of them; a
    hypervisor's model name alone, "AMD EPYC", covers CPUs with and without AVX-512)."""

    isas = " ".join(sorted(runtime.cpu_flags()))
    key = f"{runtime.describe_cpu()['cpu']}|{isas}|{torch.__version__}|{torch.get_num_threads()}"
    return cache_root() / "bf16_backward" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def _square(pair) -> int | None:
    return int(pair[0]) if len(pair) == 2 and pair[0] == pair[1] else None


def _strided(t: torch.Tensor, dtype: torch.dtype, strides: tuple[int, ...]) -> torch.Tensor:
    """``t`` in ``dtype`` with exactly ``strides`` (a copy only where they differ)."""
    t = t.to(dtype)
    if t.stride() == strides:
        return t
    return torch.empty_strided(t.shape, strides, dtype=dtype, device=t.device).copy_(t)


class FastBf16ConvBackward(TorchDispatchMode):
    """Use around ``loss.backward()``. ``choices`` maps (gradient, shapes) to the way picked; it
    persists across steps, so keep one instance per training run."""

    def __init__(self) -> None:
        super().__init__()
        self.choices: dict[tuple, str] = {}
        self.strides: dict[tuple, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # by shape: in, weight
        self._saved = 0  # how many choices the machine's file holds (save_for_this_machine)

    @classmethod
    def for_this_machine(cls) -> FastBf16ConvBackward:
        """A mode that starts from the picks earlier runs made on this machine (same CPU model, torch
        version and thread count; :func:`machine_choices_file`), so two runs with one seed take the
        same ways and give the same bits. Save new picks with :meth:`save_for_this_machine`."""
        mode = cls()
        try:
            mode.load_state(machine_choices_file().read_text())
        except (OSError, ValueError, TypeError):  # none yet, or unreadable: pick afresh
            pass
        mode._saved = len(mode.choices)
        return mode

    def save_for_this_machine(self) -> None:
        """Write the picks for later runs on this machine when there are new ones (atomic; an
        unwritable cache only means later runs time again)."""
        if len(self.choices) == self._saved:
            return

        try:
            path = machine_choices_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: tmp.write_text(self.state()))
            self._saved = len(self.choices)
        except OSError:
            pass

    def state(self) -> str:
        """The choices made so far, as JSON (a run's ``last.pt`` keeps them: a resumed run then takes
        the same ways and gives the same bits as an uninterrupted one, whatever its own timings)."""
        return json.dumps([[list(key), way] for key, way in self.choices.items()])

    def load_state(self, state: str) -> None:
        def as_tuple(value):
            return tuple(as_tuple(v) for v in value) if isinstance(value, list) else value

        self.choices.update({as_tuple(key): way for key, way in json.loads(state)})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _aten.convolution_backward.default and not kwargs and self._applies(args):
            return self._backward(func, args)
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _applies(args) -> bool:
        grad_out, x, weight, *_ = args
        return x.device.type == "cpu" and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16

    def _backward(self, func, args):
        grad_out, x, weight, _, stride, padding, dilation, transposed, _, groups, mask = args

        def onednn(output_mask: list[bool]):
            return func(*args[:-1], output_mask)

        def onednn_fp32(index: int) -> torch.Tensor:
            output_mask = [i == index for i in range(3)]
            # The input gradient never reads the input's values, the weight gradient never the
            # weight's: those only give shapes, so they are not cast (an uninitialised fp32 tensor).
            up_x = x.float() if index == 1 else torch.empty_like(x, dtype=torch.float32)
            up_w = weight.float() if index == 0 else torch.empty_like(weight, dtype=torch.float32)
            return func(grad_out.float(), up_x, up_w, *args[3:-1], output_mask)[index]

        key = (
            tuple(grad_out.shape),
            tuple(x.shape),
            tuple(weight.shape),
            tuple(stride),
            tuple(padding),
            groups,
        )
        ways_in: dict[str, Callable] = {
            BF16: lambda: onednn([True, False, False])[0],
            FP32: lambda: onednn_fp32(0),
        }
        ways_w: dict[str, Callable] = {
            BF16: lambda: onednn([False, True, False])[1],
            FP32: lambda: onednn_fp32(1),
        }
        k, s, p = weight.shape[-1], _square(stride), _square(padding)
        plain = not transposed and weight.dim() == 4 and list(dilation) == [1, 1] and weight.shape[2] == k
        if plain and groups == 1 and s is not None and p is not None:
            ways_w[MATMUL] = lambda: weight_grad_matmul(grad_out, x, k, s, p)
        depthwise = plain and groups == x.shape[1] == weight.shape[0] and weight.shape[1] == 1
        if depthwise and s is not None and p is not None and p < k:
            ways_in[DILATED] = lambda: depthwise_input_grad_dilated(grad_out, x.shape, weight, s, p)

        way_in = self._pick(("input", *key), ways_in) if mask[0] else None
        way_w = self._pick(("weight", *key), ways_w) if mask[1] else None
        if way_in in (BF16, None) and way_w in (BF16, None):
            return onednn(mask)  # oneDNN's own kernels for both: one call, as without this mode
        grad_in = grad_w = grad_bias = None
        strides_in, strides_w = self._strides(key, func, args)
        if way_in is not None:
            grad_in = _strided(ways_in[way_in](), x.dtype, strides_in)
        if way_w is not None:
            grad_w = _strided(ways_w[way_w](), weight.dtype, strides_w)
        if mask[2]:
            grad_bias = grad_out.sum((0, 2, 3)) if grad_out.dim() == 4 else onednn([False, False, True])[2]
        return grad_in, grad_w, grad_bias

    def _strides(self, key: tuple, func, args) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The strides oneDNN's own kernel gives the input and weight gradients, from its meta kernel
        (once per shape): the way picked returns the same layout, as a compiled graph's guards and
        autograd's layout contract for ``.grad`` expect."""
        key = (*key, *(tuple(a.stride()) for a in args[:3]))  # the layouts in decide the layouts out
        if key not in self.strides:
            meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args[:-1]]
            grad_in, grad_w, _ = func(*meta, [True, True, False])
            self.strides[key] = (tuple(grad_in.stride()), tuple(grad_w.stride()))
        return self.strides[key]

    def _pick(self, key: tuple, ways: dict[str, Callable]) -> str:
        if key not in self.choices:
            self.choices[key] = self._fastest(ways)
        return self.choices[key]

    @staticmethod
    def _fastest(ways: dict[str, Callable]) -> str:
        """Best of two timed calls each, after a warm-up call (first calls pay oneDNN's kernel generation)."""
        times = {}
        for name, fn in ways.items():
            fn()
            best = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            times[name] = best
        return min(times, key=times.get)
