"""`convnets pick`: the most accurate ImageNet architecture that fits a device budget.

The EfficientNet / MobileNet case studies' point: accuracy is bought with parameters, multiply-adds
and latency, and width (alpha) and resolution (rho) are knobs to trade them. The candidates are

* EfficientNet-B0..B7, each at its own resolution (compound scaling);
* MobileNet v1 at width alpha in {1.0, 0.75, 0.5, 0.25} x resolution rho in {224, 192, 160, 128};
* MobileNet v2 at the width multipliers its authors published at 224.

Accuracies are *published ImageNet top-1* numbers, never measured here: each model's
``default_cfg.imagenet_top1`` (and its ``extra`` tables: MobileNet v1 paper Tables 6/7, MobileNet v2
paper Table 4), and for the combinations the papers do not tabulate, the released-checkpoint tables
of the authors' repository (:data:`SLIM_MOBILENET_V1_TOP1`, :data:`SLIM_MOBILENET_V2_TOP1`). Every
row says where its number comes from.

Parameters and multiply-adds are counted (``cost.model_cost`` on the meta device: no memory, no
arithmetic). Latency is measured on this machine (batch 1, random weights: latency does not depend
on the weights), only for candidates that pass the cheap filters, cheapest first, with a time cap;
once a model is well over the budget, candidates with more multiply-adds are ruled out unmeasured.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import cache

import torch

from ..cost import latency_ms, model_cost
from ..models import create_model, get_model_cfg

__all__ = [
    "SLIM_MOBILENET_V1_TOP1",
    "SLIM_MOBILENET_V2_TOP1",
    "Candidate",
    "PickResult",
    "candidates",
    "pick",
]

# tensorflow/models research/slim/nets/mobilenet_v1.md, "Pre-trained Models" (2018-02-22 release,
# float checkpoints): ImageNet top-1 by (alpha, resolution). Used only for the (alpha, rho) pairs the
# paper's Tables 6 (alpha at 224) and 7 (rho at alpha 1.0) do not give.
SLIM_MOBILENET_V1_TOP1: dict[tuple[float, int], float] = {
    (1.0, 224): 70.9, (1.0, 192): 70.0, (1.0, 160): 68.0, (1.0, 128): 65.2,
    (0.75, 224): 68.4, (0.75, 192): 67.2, (0.75, 160): 65.3, (0.75, 128): 62.1,
    (0.5, 224): 63.3, (0.5, 192): 61.7, (0.5, 160): 59.1, (0.5, 128): 56.3,
    (0.25, 224): 49.8, (0.25, 192): 47.7, (0.25, 160): 45.5, (0.25, 128): 41.5,
}  # fmt: skip
SLIM_MOBILENET_V1_SOURCE = "tensorflow/models slim mobilenet_v1.md (released checkpoints)"

# tensorflow/models research/slim/nets/mobilenet/README.md, "Mobilenet V2 Imagenet Checkpoints":
# ImageNet top-1 at 224 by width multiplier; the paper's Table 4 gives only 1.0 and 1.4.
SLIM_MOBILENET_V2_TOP1: dict[float, float] = {
    1.4: 75.0,
    1.3: 74.4,
    1.0: 71.8,
    0.75: 69.8,
    0.5: 65.4,
    0.35: 60.3,
}
SLIM_MOBILENET_V2_SOURCE = "tensorflow/models slim mobilenet/README.md (released checkpoints)"

MOBILENET_V1_WIDTHS = {
    1.0: "mobilenet_v1",
    0.75: "mobilenet_v1_075",
    0.5: "mobilenet_v1_050",
    0.25: "mobilenet_v1_025",
}
MOBILENET_V1_RESOLUTIONS = (224, 192, 160, 128)
FAMILIES = ("efficientnet", "mobilenet_v1", "mobilenet_v2")


@dataclass
class Candidate:
    label: str  # e.g. "mobilenet_v1 a=0.75 r=160"
    model: str  # registered name
    kwargs: dict
    resolution: int
    top1: float
    source: str
    params: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    status: str = ""  # "fits", or why it was excluded / not measured

    def to_dict(self) -> dict:
        return asdict(self)


def candidates(
    families: tuple[str, ...] = FAMILIES, image_sizes: tuple[int, ...] | None = None
) -> list[Candidate]:
    """The candidate table with published top-1 and its source (not yet costed)."""

    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown family {', '.join(sorted(unknown))}; choose from {', '.join(FAMILIES)}")
    rows: list[Candidate] = []
    if "efficientnet" in families:
        for b in range(8):
            name = f"efficientnet_b{b}"
            cfg = get_model_cfg(name)
            paper = cfg.extra.get("paper", "EfficientNet paper")
            rows.append(Candidate(name, name, {}, cfg.input_size[1], cfg.imagenet_top1, f"{paper}, Table 2"))
    if "mobilenet_v1" in families:
        for alpha, name in MOBILENET_V1_WIDTHS.items():
            cfg = get_model_cfg(name)
            paper = cfg.extra.get("paper", "MobileNet v1 paper")
            for rho in MOBILENET_V1_RESOLUTIONS:
                by_width = cfg.extra.get("imagenet_top1_by_width", {})
                by_res = cfg.extra.get("imagenet_top1_by_resolution", {})
                if rho == 224 and alpha in by_width:
                    top1, source = by_width[alpha], f"{paper}, Table 6"
                elif alpha == 1.0 and rho in by_res:
                    top1, source = by_res[rho], f"{paper}, Table 7"
                else:
                    top1, source = SLIM_MOBILENET_V1_TOP1[(alpha, rho)], SLIM_MOBILENET_V1_SOURCE
                rows.append(Candidate(f"mobilenet_v1 a={alpha:g} r={rho}", name, {}, rho, top1, source))
    if "mobilenet_v2" in families:
        cfg = get_model_cfg("mobilenet_v2")
        paper = cfg.extra.get("paper", "MobileNet v2 paper")
        by_width = cfg.extra.get("imagenet_top1_by_width", {})
        for alpha, slim_top1 in SLIM_MOBILENET_V2_TOP1.items():
            top1, source = (
                (by_width[alpha], f"{paper}, Table 4")
                if alpha in by_width
                else (
                    slim_top1,
                    SLIM_MOBILENET_V2_SOURCE,
                )
            )
            kwargs = {} if alpha == 1.0 else {"width_mult": alpha}
            rows.append(
                Candidate(f"mobilenet_v2 a={alpha:g} r=224", "mobilenet_v2", kwargs, 224, top1, source)
            )
    if image_sizes:
        rows = [c for c in rows if c.resolution in set(image_sizes)]
    return rows


@cache
def _count(model: str, kwargs_items: tuple, resolution: int) -> tuple[int, int]:

    with torch.device("meta"):  # no memory, no arithmetic: counting B7 at 600 px stays cheap
        net = create_model(model, **dict(kwargs_items))
    report = model_cost(net, image_size=resolution)
    return report.params, report.macs


def _measure(c: Candidate, runs: int) -> float:

    net = create_model(c.model, **c.kwargs).eval()
    x = torch.randn(1, 3, c.resolution, c.resolution)
    return latency_ms(net, x, warmup=2, runs=runs)


@dataclass
class PickResult:
    choice: Candidate | None
    table: list[Candidate]
    budget: dict
    message: str
    measured_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "choice": self.choice.to_dict() if self.choice else None,
            "budget": self.budget,
            "message": self.message,
            "measured_seconds": self.measured_seconds,
            "table": [c.to_dict() for c in self.table],
        }


def pick(
    *,
    latency_ms: float | None = None,
    max_params: int | None = None,
    max_macs: int | None = None,
    image_sizes: tuple[int, ...] | None = None,
    families: tuple[str, ...] = FAMILIES,
    measure_budget_s: float = 60.0,
    runs: int = 3,
) -> PickResult:
    """Recommend the most accurate candidate meeting every given budget (at least one is required)."""
    if latency_ms is None and max_params is None and max_macs is None:
        raise ValueError("give a budget: latency_ms, max_params or max_macs")
    budget = {"latency_ms": latency_ms, "max_params": max_params, "max_macs": max_macs}
    table = candidates(families, image_sizes)
    if not table:
        raise ValueError(f"no candidates at image size(s) {image_sizes}")
    for c in table:
        c.params, c.macs = _count(c.model, tuple(sorted(c.kwargs.items())), c.resolution)
        reasons = []
        if max_params is not None and c.params > max_params:
            reasons.append(f"params {c.params / 1e6:.2f} M > {max_params / 1e6:.2f} M")
        if max_macs is not None and c.macs > max_macs:
            reasons.append(f"mult-adds {c.macs / 1e6:.0f} M > {max_macs / 1e6:.0f} M")
        c.status = "excluded: " + "; ".join(reasons) if reasons else "fits"
    # Most accurate first; among equals the cheaper one.
    table.sort(key=lambda c: (-c.top1, c.macs))

    spent = 0.0
    if latency_ms is not None:
        # Cheapest first: once a model is far over the budget, every model with more multiply-adds is
        # ruled out without running it (latency grows with MACs; the 1.5x margin absorbs the spread
        # between architectures, e.g. depthwise convolutions run fewer MACs per millisecond).
        slow_macs: int | None = None  # the fewest MACs seen taking more than 1.5x the budget
        for c in sorted((c for c in table if c.status == "fits"), key=lambda c: c.macs):
            if slow_macs is not None and c.macs >= slow_macs:
                c.status = f"excluded: more mult-adds than one measured at > {1.5 * latency_ms:g} ms"
                continue
            if spent > measure_budget_s:
                c.status = f"not measured: the {measure_budget_s:g} s measurement cap was reached"
                continue
            start = time.perf_counter()
            c.latency_ms = _measure(c, runs)
            spent += time.perf_counter() - start
            if c.latency_ms > latency_ms:
                c.status = f"excluded: latency {c.latency_ms:.1f} ms > {latency_ms:g} ms"
                if c.latency_ms > 1.5 * latency_ms:
                    slow_macs = c.macs if slow_macs is None else min(slow_macs, c.macs)

    fitting = [c for c in table if c.status == "fits"]
    choice = fitting[0] if fitting else None
    if choice is None:
        message = "nothing fits this budget: relax it, or consider a smaller resolution or width"
    else:
        parts = [f"{choice.params / 1e6:.2f} M params", f"{choice.macs / 1e6:.0f} M mult-adds"]
        if choice.latency_ms is not None:
            parts.append(f"{choice.latency_ms:.1f} ms/image here")
        message = (
            f"pick {choice.label}: published ImageNet top-1 {choice.top1:.1f}% ({', '.join(parts)}); "
            f"source: {choice.source}"
        )
    return PickResult(choice, table, budget, message, spent)
