"""Time to accuracy: the alpaca transfer recipe, seconds from the call to 0.90 validation accuracy.

``convnets.train`` on ../shared/data/alpaca with the ImageNet-pretrained MobileNetV2 from
../shared/data/weights, ``normalize="inception"`` ([-1, 1], what those weights expect), 160x160, the
base frozen while the new head trains (cached features), then the last stages fine-tuned. Each
repetition is a fresh run in its own process (so every one pays imports, data loading and feature
caching, as a user does).

Seconds to target = total wall time of the run minus the epochs that came *after* the first epoch at
or above the target (so start-up, data loading and feature caching are included; the few seconds of
end-of-run writing are too, a slight overestimate).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

TARGET = 0.90
RECIPE = {
    "model": "mobilenet_v2",
    "normalize": "inception",
    "image_size": 160,
    "epochs": 5,
    "fine_tune_last": 2,
    "fine_tune_epochs": 2,
    "batch_size": 32,
    "seed": 0,
}
QUICK_RECIPE = {**RECIPE, "image_size": 96, "epochs": 1, "fine_tune_epochs": 1}


class TimeToAccuracyPeer:
    def __init__(self, spec: dict) -> None:
        from convnets.base.runtime import tune_malloc

        tune_malloc()  # as the CLI does at start
        self.spec = spec
        self.meta: dict = {}

    def warmup(self) -> None:  # imports are part of every repetition's process start; nothing to warm
        import convnets.train  # noqa: F401 - import cost outside the timed call, like a CLI start-up

    def rep(self) -> dict:
        from convnets.train import train

        recipe = dict(self.spec["recipe"])
        out = Path(tempfile.mkdtemp(prefix="convnets-tta-"))
        try:
            t0 = time.perf_counter()
            result = train(
                self.spec["data"], out=out / "run", weights=self.spec["weights"], quiet=True, **recipe
            )
            total = time.perf_counter() - t0
        finally:
            shutil.rmtree(out, ignore_errors=True)
        history = result.history
        reached = next((i for i, h in enumerate(history) if (h.get("val_acc") or 0) >= TARGET), None)
        after = sum(h.get("seconds", 0.0) for h in history[reached + 1 :]) if reached is not None else 0.0
        meta = {
            "epochs": [{k: h.get(k) for k in ("epoch", "phase", "val_acc", "seconds")} for h in history],
            "best_val_acc": result.best_val_acc,
            "total_s": total,
            "reached_epoch": None if reached is None else reached + 1,
            "time_to_target_s": None if reached is None else total - after,
        }
        return {"seconds": total, "items": 1, "meta": meta}


def make_peer(spec: dict) -> TimeToAccuracyPeer:
    return TimeToAccuracyPeer(spec)


def run(quick: bool = False, reps: int = 5, log=print) -> dict:
    """Skips (with the reason) when ../shared/data is absent."""
    from common import SHARED_DATA, Worker

    data, weights = SHARED_DATA / "alpaca", SHARED_DATA / "weights" / "mobilenet_v2_imagenet.pth"
    if not data.is_dir() or not weights.is_file():
        return {"skipped": f"{SHARED_DATA} (alpaca photos + pretrained MobileNetV2) not found"}
    recipe = QUICK_RECIPE if quick else RECIPE
    spec = {"data": str(data), "weights": str(weights), "recipe": recipe}
    runs = []
    for i in range(reps):  # a fresh process per repetition: each run starts cold, as a user's does
        worker = Worker("convnets", "time_to_accuracy", spec)
        try:
            ok = worker.ready()
            if ok:
                worker.rep()
        finally:
            worker.close()
        r = worker.result
        detail = (r.meta.get("reps") or [{}])[0]
        runs.append({"seconds": detail.get("time_to_target_s"), "error": r.error, "detail": detail})
        if r.ok:
            log(
                f"    rep {i + 1}: to target {detail.get('time_to_target_s')}s, "
                f"best {detail.get('best_val_acc')}"
            )
        else:
            log(f"    rep {i + 1}: failed: {(r.error or '').strip().splitlines()[-1][:200]}")
    return {"recipe": recipe, "target": TARGET, "runs": runs}
