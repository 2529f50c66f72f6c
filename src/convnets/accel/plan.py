"""How a training step runs on this hardware, behind one door: :class:`PrecisionPlan`.

The trainer (and ``bench/train_throughput.py``) builds one plan per run from the resolved precision, the
device and the ``--cpu-kernels`` switch, and asks it - never the kernels themselves - to prepare the
model, to open each training epoch, and for the step's autocast, backward and optimizer step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from .bf16_backward import FastBf16ConvBackward
from .ckernels import ENV_SWITCH
from .fused_bn_act import fuse_batchnorm_act, kernel_error

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# last.pt before the plan kept the backward picks at its top level under this key
LEGACY_PICKS_KEY = "bf16_backward"


def clamps_out_of_place(model: nn.Module) -> int:
    """Make ReLU6/Hardtanh layers out-of-place for training; returns how many changed.

    In-place clamps were the slower kernel here (Intel Xeon with AMX, 2 threads, bench/RESULTS.md
    "Training precision"): the mobilenet_v2@160 training step ran 1.07x faster in fp32 and 1.12x in
    bf16 with ReLU6 out of place; resnet50's in-place ReLU measured the same either way, so it stays.
    Only memory-saving flags change: outputs are identical.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Hardtanh) and module.inplace:
            module.inplace = False
            changed += 1
    return changed


class PrecisionPlan:
    """The precision and speed measures of one training run, and the one place that applies them.

    Every precision, every device:

    - :meth:`prepare` (once): the model on the device, in channels-last memory format when asked,
      with its ReLU6/Hardtanh layers' ``inplace`` flag off (:func:`clamps_out_of_place`);
    - :meth:`autocast` around forward and loss (bf16/fp16 mixed precision; nothing in fp32);
    - :meth:`backward` and :meth:`step`: fp16's loss scaling (``GradScaler``; a no-op otherwise).

    bf16 on a CPU, unless ``cpu_kernels`` is False (``--cpu-kernels off``) or the environment sets
    ``CONVNETS_C_KERNELS=0``, adds the hand-written fast path; these rewrite the live model, so a
    reader of the trainer should know them:

    - while :meth:`backward` runs, a dispatch mode
      (:class:`~convnets.accel.bf16_backward.FastBf16ConvBackward`) answers each convolution's
      backward with the fastest way it timed; no module changes. Its picks are the plan's state
      (:meth:`state_dict`, kept in ``last.pt``) and are also kept per machine;
    - for the duration of each :meth:`training_epoch` (not under ``torch.compile``, not for a head
      trained on cached features), :func:`~convnets.accel.fused_bn_act.fuse_batchnorm_act`:
      each ``BatchNorm2d``'s ``__class__`` is swapped to ``FusedBatchNorm2d`` (C kernels), the
      ReLU/ReLU6 module it alone feeds gets a run-time subclass that passes the already-clamped output
      through, and where BatchNorm -> add -> activation chains exist (ResNet blocks) the model's
      ``forward`` becomes an instance attribute: its ``torch.fx`` graph with each chain as one call.
      All three are undone when the epoch ends, so validation, state dicts and exports see the
      model's own classes and forward.

    With the fast path off, a bf16 CPU step is plain autocast: no C kernels, no class swaps, no fx
    forward and no backward dispatch mode.
    """

    def __init__(
        self,
        precision: str,
        device: torch.device,
        *,
        cpu_kernels: bool = True,
        channels_last: bool = False,
        compiled: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.precision = precision
        self.device = device
        self.channels_last = bool(channels_last)
        self.autocast_dtype = AUTOCAST_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.cpu_bf16 = precision == "bf16" and device.type == "cpu"
        self.env_off = os.environ.get(ENV_SWITCH, "1") == "0"
        self.cpu_kernels = bool(cpu_kernels) and not self.env_off
        fast = self.cpu_bf16 and self.cpu_kernels
        # The fastest way to each convolution gradient (bf16_backward.py), starting from this machine's picks.
        self.backward_picker = FastBf16ConvBackward.for_this_machine() if fast else None
        # BatchNorm with its activation in fused kernels (fused_bn_act.py); not under torch.compile,
        # which fuses the graph its own way.
        self.fuse_bn = fast and not compiled
        self._log = log or (lambda _message: None)
        self._fuse_logged = False

    def describe(self) -> str:
        """One line for the run's log saying what the CPU fast path does ("" where nothing applies:
        fp32, or a GPU)."""
        if not self.cpu_bf16:
            return ""
        if not self.cpu_kernels:
            why = f"{ENV_SWITCH}=0" if self.env_off else "--cpu-kernels off"
            return f"bf16 on CPU: plain autocast, no hand-written kernels or module rewrites ({why})"
        fused = "BatchNorm+activation fused per epoch" if self.fuse_bn else "BatchNorm in ATen (--compile)"
        return f"bf16 on CPU: convolution gradients by the fastest measured way, {fused} (--cpu-kernels auto)"

    # --- the model ------------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` on the device and in the memory format the step wants (in place; returned)."""
        clamps_out_of_place(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch in the model's memory format (other tensors, such as cached features, as
        they are)."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @contextmanager
    def training_epoch(self, model: nn.Module, *, rewrite: bool = True) -> Iterator[int]:
        """Around one training epoch of ``model``: its BatchNorm layers run fused where the plan says
        so and ``rewrite`` allows (False for a head on cached features); restored on exit. Yields how
        many BatchNorm layers were switched."""
        enabled = self.fuse_bn and rewrite
        with fuse_batchnorm_act(model, enabled=enabled) as fused:
            if enabled and not self._fuse_logged:
                self._fuse_logged = True
                why = kernel_error()
                self._log(
                    f"bf16 on CPU: fused BatchNorm+activation kernels for {fused} BatchNorm layers"
                    if fused or why is None
                    else f"bf16 on CPU: BatchNorm runs in ATen's kernels (fused kernels unavailable: {why})"
                )
            yield fused

    # --- the step -------------------------------------------------------------------------------

    def autocast(self):
        """The context for forward and loss: mixed precision, or nothing in fp32."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor, *, scale: bool = True) -> None:
        """``loss.backward()``, loss-scaled for fp16 (``scale=False``: as it is), with the convolution
        backward picker where the plan has one."""
        with self.backward_picker or nullcontext():
            (self.scaler.scale(loss) if scale else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` through the loss scaler (which skips steps with inf/NaN gradients in fp16)."""
        self.scaler.step(optimizer)
        self.scaler.update()

    # --- what last.pt keeps ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The backward picks made so far (JSON text, or None without a picker): a resumed run takes the
        same ways and gives the same bits as an uninterrupted one. Plain types only (last.pt loads
        with ``weights_only=True``). The loss scaler's state goes with the optimizer's (``scaler``)."""
        return {"backward_picks": self.backward_picker.state() if self.backward_picker is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        picks = state.get("backward_picks")
        if picks and self.backward_picker is not None:
            self.backward_picker.load_state(picks)

    def load_from_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The plan's state from a whole ``last.pt`` dict: under ``precision_plan``, or, in files
        written before the plan existed, the picks under ``bf16_backward``."""
        if checkpoint.get("precision_plan") is not None:
            self.load_state_dict(checkpoint["precision_plan"])
        elif checkpoint.get(LEGACY_PICKS_KEY):
            self.load_state_dict({"backward_picks": checkpoint[LEGACY_PICKS_KEY]})

    def save_for_this_machine(self) -> None:
        """Keep new backward picks for later runs on this machine (one process per machine should)."""
        if self.backward_picker is not None:
            self.backward_picker.save_for_this_machine()
