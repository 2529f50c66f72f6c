"""The learning-rate range test (Smith 2015, "Cyclical learning rates"; fastai's ``lr_find``).

Train for ``steps`` optimizer steps with the learning rate growing exponentially from ``start_lr``
to ``end_lr``, record the loss of each step, smooth it (exponential moving average with bias
correction, beta 0.98, as fastai) and stop early once the smoothed loss passes ``diverge`` x its
minimum. A suggestion is then read off the smoothed curve:

* ``valley`` (default, fastai's): the longest decreasing stretch of the smoothed loss, taken halfway
  along it (before the minimum, where the loss still falls fast). fastai's stretch is a decreasing
  *subsequence* and on a noisy curve can skip a dip and end past the minimum (measured: CIFAR-10 from
  scratch, bench/RESULTS.md); then the valley is read off the curve up to the minimum, and ``why`` says so;
* ``steep``: the steepest descent of the smoothed loss (``torch-lr-finder``'s suggestion);
* ``minimum``: the learning rate at the smoothed minimum divided by 10 (fastai's ``minimum``).

As fastai, the first 10% of the steps and the last 5 are left out of the suggestion (the warm start
and the blow-up). The test runs on a copy of nothing: the model's weights, BatchNorm statistics and
the RNG state are saved before and restored after, so a run that asked for ``--lr auto`` continues
exactly as one given the found value.

``phase_range_test`` runs the test inside a :class:`~convnets.train.trainer.Trainer` on the phase's
own batches (cached features for a frozen-base head, the same augmentation and batch mixing) and
optimizer; ``auto_phase_lr`` is what the trainer runs at a phase's start for ``--lr auto`` (``train.api``
hands it to the Trainer); ``train.api.lr_find`` is the ``convnets lr-find`` command's library call.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.atomic import atomic_write_text

if TYPE_CHECKING:
    from .trainer import Trainer
    from .transfer import Phase

METHODS = ("valley", "steep", "minimum")
DEFAULT_STEPS = 100  # fastai's num_it: enough points for a readable curve, cheap next to training
DEFAULT_START_LR = 1e-7
DEFAULT_END_LR = 10.0
SMOOTH_BETA = 0.98
DIVERGE_FACTOR = 4.0


@dataclass
class LRCurve:
    """One range test: what was tried, what was seen, what it suggests."""

    lrs: list[float]
    losses: list[float]  # raw loss per step
    smoothed: list[float]  # bias-corrected exponential moving average
    start_lr: float
    end_lr: float
    steps: int  # the steps planned (len(lrs) is fewer when it stopped early)
    stopped: str  # why it ended: "diverged", "non-finite loss" or "completed"
    method: str = "valley"
    suggestion: float | None = None
    index: int | None = None  # position of the suggestion in lrs
    why: str = ""
    seconds: float = 0.0
    phase: str = "train"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """What config.json records for a run trained with ``--lr auto`` (the curve is in its own file)."""
        return {
            "phase": self.phase,
            "lr": self.suggestion,
            "method": self.method,
            "why": self.why,
            "steps": len(self.lrs),
            "start_lr": self.start_lr,
            "end_lr": self.end_lr,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 2),
        }


def lr_schedule(start_lr: float, end_lr: float, steps: int) -> list[float]:
    """``steps`` learning rates from ``start_lr`` to ``end_lr``, evenly spaced on a log scale."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"the range test needs 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if steps < 2:
        raise ValueError(f"the range test needs at least 2 steps, got {steps}")
    ratio = end_lr / start_lr
    return [start_lr * ratio ** (i / (steps - 1)) for i in range(steps)]


def range_test(
    step: Callable[[float], float],
    *,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    steps: int = DEFAULT_STEPS,
    beta: float = SMOOTH_BETA,
    diverge: float = DIVERGE_FACTOR,
    progress: Callable[[int, float, float], None] | None = None,
) -> LRCurve:
    """Call ``step(lr)`` (one optimizer step at ``lr``, returning its loss) for each learning rate of
    the exponential schedule; stop when the smoothed loss passes ``diverge`` x its minimum or is not
    finite. The suggestion is left to :func:`suggest`."""
    t0 = time.perf_counter()
    lrs, losses, smoothed = [], [], []
    average, best, stopped = 0.0, math.inf, "completed"
    for i, lr in enumerate(lr_schedule(start_lr, end_lr, steps)):
        loss = float(step(lr))
        if not math.isfinite(loss):
            stopped = "non-finite loss"
            break
        average = beta * average + (1 - beta) * loss
        smooth = average / (1 - beta ** (i + 1))
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(smooth)
        if progress is not None:
            progress(i, lr, smooth)
        best = min(best, smooth)
        if i > 0 and smooth > diverge * best:
            stopped = "diverged"
            break
    return LRCurve(lrs, losses, smoothed, start_lr, end_lr, steps, stopped, seconds=time.perf_counter() - t0)


def suggest(curve: LRCurve, method: str = "valley") -> LRCurve:
    """Fill in ``curve.suggestion`` (and ``index``, ``why``) by ``method``; see the module doc."""
    if method not in METHODS:
        raise ValueError(f"unknown suggestion method {method!r}; choose one of {', '.join(METHODS)}")
    # fastai: skip the first 10% (the average still warming up) and the last 5 steps (the blow-up).
    skip = curve.steps // 10
    end = len(curve.lrs) - 5
    if end - skip < 3:
        raise ValueError(
            f"the range test stopped after {len(curve.lrs)} of {curve.steps} steps ({curve.stopped}), "
            "too few to read a learning rate from; lower the start learning rate or add steps"
        )
    lrs, losses = curve.lrs[skip:end], curve.smoothed[skip:end]
    if method == "valley":
        i, why = _valley(losses)
        low = min(range(len(losses)), key=losses.__getitem__)
        if i > low >= 2:
            # Past the smoothed minimum the loss no longer falls: the longest decreasing subsequence
            # skipped a dip (a noisy curve). Read the valley off the curve up to the minimum instead.
            i, why = _valley(losses[: low + 1])
            why += f"; taken up to the smoothed minimum at lr {lrs[low]:.3g} (the whole curve's ran past it)"
    elif method == "steep":
        logs = [math.log10(v) for v in lrs]
        slopes = [(losses[j + 1] - losses[j]) / (logs[j + 1] - logs[j]) for j in range(len(losses) - 1)]
        i = min(range(len(slopes)), key=slopes.__getitem__)
        why = f"steepest descent of the smoothed loss ({slopes[i]:.3g} per decade)"
    else:
        low = min(range(len(losses)), key=losses.__getitem__)
        curve.suggestion, curve.index = lrs[low] / 10, skip + low
        curve.method = method
        curve.why = f"minimum of the smoothed loss ({losses[low]:.4g} at lr {lrs[low]:.3g}) / 10"
        return curve
    curve.suggestion, curve.index, curve.method, curve.why = lrs[i], skip + i, method, why
    return curve


def _valley(losses: list[float]) -> tuple[int, str]:
    """fastai's ``valley``: the longest decreasing subsequence of the smoothed loss; its start plus
    half of the first two thirds of its length (where the loss falls steadily, before the minimum)."""
    n = len(losses)
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
            if run[end] < run[i]:
                end = i
                start = end - run[end]
    sections = (end - start) / 3
    i = start + int(sections) + int(sections / 2)
    return i, f"valley (fastai): halfway along the longest stretch of falling loss ({end - start + 1} steps)"


def describe(curve: LRCurve) -> str:
    """One line for a log: the suggestion and how it was chosen."""
    return (
        f"lr range test ({curve.phase}): {len(curve.lrs)} step(s) from {curve.start_lr:.0e} to "
        f"{curve.lrs[-1]:.2g} ({curve.stopped}) in {curve.seconds:.1f}s; suggested lr "
        f"{curve.suggestion:.3g} by {curve.why}"
    )


def save_curve(curve: LRCurve, out_dir: str | Path, stem: str = "lr_find") -> tuple[Path, Path]:
    """``stem.json`` (the whole curve) and ``stem.png`` (loss against log learning rate, the
    suggestion marked) in ``out_dir``."""
    from ..base.plots import pyplot, save_figure  # start-up: numpy on first use

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_text(out_dir / f"{stem}.json", json.dumps(curve.to_dict(), indent=1) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(curve.lrs, curve.losses, color="0.75", lw=1, label="loss per step")
    ax.plot(curve.lrs, curve.smoothed, lw=2, label="smoothed loss")
    if curve.index is not None:
        x, y = curve.lrs[curve.index], curve.smoothed[curve.index]
        ax.plot([x], [y], "o", color="C3", ms=9, label=f"{curve.method}: lr {curve.suggestion:.3g}")
        if curve.suggestion != x:  # "minimum" suggests a tenth of the marked point
            ax.axvline(curve.suggestion, color="C3", ls="--", lw=1)
    # The blow-up at the end would squash the interesting part of the curve.
    low, high = min(curve.smoothed), curve.smoothed[0]
    ax.set_ylim(low - 0.1 * (high - low + 1e-9), max(high, low) + 0.6 * (high - low + 1e-9))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test ({curve.phase}): {curve.stopped} after {len(curve.lrs)} steps")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    png_path = save_figure(fig, out_dir / f"{stem}.png")
    return Path(png_path), Path(json_path)


# --- inside the trainer ------------------------------------------------------------------------


def phase_range_test(
    trainer: Trainer,
    phase: Phase,
    *,
    steps: int = DEFAULT_STEPS,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    method: str = "valley",
) -> LRCurve:
    """The range test on ``trainer``'s current phase: its forward model (the head on cached features
    for a frozen base), its batches in its data order (augmentation and batch mixing included), its
    optimizer kind with the run's weight decay and momentum. One batch per step (no gradient
    accumulation). Weights, BatchNorm statistics and RNG states are restored afterwards."""
    import torch  # start-up: torch on first use

    from . import distributed as ddp  # start-up: torch on first use
    from .mixing import mixed_targets  # start-up: torch on first use
    from .optim import build_optimizer  # start-up: torch on first use
    from .transfer import set_bn_modes  # start-up: torch on first use

    model = trainer.model
    saved = copy.deepcopy(model.state_dict())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, trainer.opts, start_lr, trainer.device)
    batches = _cycle_batches(trainer, phase)
    trainer.forward_model.train()
    set_bn_modes(model, phase, trainer.opts.bn_train)
    bar = _bar(trainer, steps, phase)

    def step(lr: float) -> float:
        if trainer._stop_signal is not None:  # Ctrl-C/SIGTERM: no epoch has run, nothing to save
            raise KeyboardInterrupt("stopped during the learning-rate range test; nothing was saved")
        for group in optimizer.param_groups:
            group["lr"] = lr
        epoch, index, batch = next(batches)
        x, y = trainer._unpack(batch)
        x, y = x.to(trainer.device), y.to(trainer.device)
        x, target, _ = mixed_targets(trainer.mixer, x, y, epoch, index)
        x = trainer.plan.inputs(x)
        optimizer.zero_grad(set_to_none=True)
        with trainer.plan.autocast():
            loss, _ = trainer._loss(trainer.forward_model(x), target)
        if not bool(torch.isfinite(loss.detach()).item()):
            return math.inf
        trainer.plan.backward(loss, scale=False)  # the range test's own optimizer: no loss scaling
        optimizer.step()
        # Every rank must see the same curve to pick the same learning rate.
        return ddp.all_reduce_sum([loss.item()], trainer.dist, trainer.device)[0] / trainer.dist.world_size

    try:
        with torch.random.fork_rng(devices=[]):
            curve = range_test(
                step, start_lr=start_lr, end_lr=end_lr, steps=steps, progress=lambda *_: bar.update()
            )
    finally:
        bar.close()
        model.load_state_dict(saved)
        optimizer.zero_grad(set_to_none=True)
    curve.phase = phase.name
    return suggest(curve, method)


def _cycle_batches(trainer: Trainer, phase: Phase):
    """(epoch, batch index, batch) over the phase's epochs in order, for as many steps as asked."""
    epoch = 0
    while True:
        iterator, _ = trainer.data.train_batches(phase, epoch, 0, trainer.features)
        for index, batch in enumerate(iterator):
            yield epoch, index, batch
        epoch += 1


def _bar(trainer: Trainer, steps: int, phase: Phase):

    from tqdm.auto import tqdm  # start-up: tqdm on first use

    return tqdm(
        total=steps,
        desc=f"lr range test [{phase.name}]",
        leave=False,
        unit="step",
        disable=not trainer.bars,
        dynamic_ncols=True,
        file=sys.stdout,
    )


def wants_range_test(opts: Any, phase: Phase) -> bool:
    """``--lr auto`` tests the first phase (train, or the head); ``--fine-tune-lr-scale auto`` the
    fine-tuning phase."""
    if phase.name == "finetune":
        return opts.fine_tune_lr_scale == "auto"
    return opts.lr == "auto"


def auto_phase_lr(trainer: Trainer, phase: Phase) -> None:
    """Set ``phase.lr`` for a run with ``--lr auto`` / ``--fine-tune-lr-scale auto`` before the phase
    builds its optimizer: a range test (its curve saved as ``lr_find_<phase>.png/.json`` in the run
    folder and its summary in config.json's ``lr_find``), or the value a resumed run already found."""
    opts, config = trainer.opts, trainer.config
    records = config.lr_find if config.lr_find is not None else []
    done = {r["phase"]: r for r in records}
    if wants_range_test(opts, phase):
        if phase.name in done:  # a resumed run: the phase keeps the rate it started with
            phase.lr = float(done[phase.name]["lr"])
        else:
            curve = phase_range_test(trainer, phase, steps=DEFAULT_STEPS)
            phase.lr = float(curve.suggestion)
            trainer.log(describe(curve))
            if trainer.dist.is_main:
                save_curve(curve, trainer.run_dir, f"lr_find_{phase.name}")
            config.lr_find = [*records, curve.summary()]
    elif phase.name == "finetune" and opts.lr == "auto" and "head" in done:
        phase.lr = float(done["head"]["lr"]) * float(opts.fine_tune_lr_scale)
    else:
        return
    for record in config.phases:
        if record["name"] == phase.name:
            record["lr"] = phase.lr
