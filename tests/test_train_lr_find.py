"""The learning-rate range test: the curve and its suggestions, `convnets lr-find`, `train --lr auto`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_shapes import make_shapes

from convnets.base.runs import RunConfig
from convnets.cli import main
from convnets.models import create_model
from convnets.train import train
from convnets.train.api import build_trainer
from convnets.train.lr_find import LRCurve, lr_schedule, phase_range_test, range_test, suggest
from convnets.weights import save_state_dict

COMMON = dict(model="lenet5", epochs=1, workers=0, quiet=True, device="cpu", batch_size=16)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("lr") / "shapes", per_class=10, size=16)


def _bowl(lr: float) -> float:
    """A loss that falls from 2 to 0.2 between lr 1e-4 and 1e-2, then blows up past lr 1."""
    x = math.log10(lr)
    falling = 2.0 - 1.8 / (1 + math.exp(-3 * (x + 3)))
    return falling + (0 if x < 0 else 10 ** (2 * x) * 5)


def test_schedule_is_exponential():
    lrs = lr_schedule(1e-6, 1.0, 7)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([10.0] * 6)
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lr_schedule(1.0, 1e-3, 10)


def test_range_test_stops_on_divergence_and_valley_picks_the_fall():
    curve = suggest(range_test(_bowl, start_lr=1e-6, end_lr=100.0, steps=100), "valley")
    assert curve.stopped == "diverged" and len(curve.lrs) < 100
    assert curve.lrs[-1] < 100.0
    # The smoothed curve lags the raw one, but the valley lies inside the fall, well before the blow-up.
    assert 1e-4 < curve.suggestion < 0.3
    assert curve.method == "valley" and "valley" in curve.why
    # The smoothing is a bias-corrected EMA: its first value is the first loss itself.
    assert curve.smoothed[0] == pytest.approx(curve.losses[0])

    steep = suggest(range_test(_bowl, start_lr=1e-6, end_lr=100.0, steps=100), "steep")
    assert 1e-4 < steep.suggestion < 1.0 and "steepest" in steep.why
    minimum = suggest(range_test(_bowl, start_lr=1e-6, end_lr=100.0, steps=100), "minimum")
    low = minimum.lrs[min(range(len(minimum.smoothed)), key=minimum.smoothed.__getitem__)]
    assert minimum.suggestion == pytest.approx(low / 10)


def test_valley_matches_fastai_on_a_known_curve():
    # 10 flat points, then a 12-step fall, then a rise: the longest decreasing run starts at the last
    # flat point before the fall (index 9 in the suggestion window) and ends at the bottom (index 21).
    losses = [2.0] * 10 + [2.0 - 0.1 * (i + 1) for i in range(12)] + [1.0 + 0.2 * i for i in range(10)]
    n = len(losses)
    lrs = [10 ** (-6 + 6 * i / (n - 1)) for i in range(n)]
    curve = LRCurve(lrs, losses, losses, lrs[0], lrs[-1], steps=n, stopped="completed")
    suggest(curve, "valley")
    skip = n // 10
    window = losses[skip : n - 5]
    # fastai: start = end - run_length, idx = start + int(len/3) + int(len/3/2)
    end = window.index(min(window))
    run = 1 + sum(1 for i in range(end) if window[i] > window[i + 1])  # the strict fall (+ its top)
    start = end - run
    sections = (end - start) / 3
    assert curve.index == skip + start + int(sections) + int(sections / 2)


def test_too_short_a_curve_is_refused():
    curve = range_test(lambda lr: math.inf if lr > 1e-6 else 1.0, start_lr=1e-7, end_lr=1.0, steps=50)
    assert curve.stopped == "non-finite loss"
    with pytest.raises(ValueError, match="too few"):
        suggest(curve)


def test_phase_range_test_restores_weights_and_rng(shapes, tmp_path, one_thread):
    options = {k: v for k, v in COMMON.items() if k != "model"}
    trainer = build_trainer(shapes, "lenet5", tmp_path / "scratch", **options)
    phase = trainer.phases[0]
    trainer.prepare_phase(phase)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    curve = phase_range_test(trainer, phase, steps=30, start_lr=1e-5, end_lr=1.0)
    assert len(curve.lrs) >= 10 and curve.suggestion is not None
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert torch.equal(rng, torch.get_rng_state())


def test_lr_find_command_writes_the_curve(shapes, tmp_path, capsys, one_thread):
    out = tmp_path / "lr"
    args = ["--steps", "40", "--batch-size", "16", "--workers", "0"]
    assert main(["lr-find", str(shapes), "--model", "lenet5", "--out", str(out), *args]) == 0
    printed = capsys.readouterr().out
    assert "suggested learning rate" in printed and "valley" in printed
    data = json.loads((out / "lr_find.json").read_text())
    assert data["method"] == "valley" and len(data["lrs"]) == len(data["smoothed"]) <= 40
    assert data["lrs"][data["index"]] == pytest.approx(data["suggestion"])
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(out.glob("*.safetensors"))  # nothing but the curve
    assert main(["lr-find", str(shapes), "--model", "lenet5", "--out", str(out), "--steps", "3"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_train_lr_auto_trains_as_the_found_rate_would(shapes, tmp_path, one_thread):
    auto = train(shapes, out=tmp_path / "auto", lr="auto", **COMMON)
    config = RunConfig.read(tmp_path / "auto")
    (found,) = config.lr_find
    assert found["phase"] == "train" and found["method"] == "valley" and found["lr"] > 0
    assert config.phases[0]["lr"] == found["lr"] and config.options["lr"] == "auto"
    assert (tmp_path / "auto" / "lr_find_train.png").is_file()
    # The test leaves the model and RNG as it found them: the run equals one given the rate by hand.
    manual = train(shapes, out=tmp_path / "manual", lr=found["lr"], **COMMON)
    assert [h["train_loss"] for h in auto.history] == [h["train_loss"] for h in manual.history]
    assert [h["val_acc"] for h in auto.history] == [h["val_acc"] for h in manual.history]


def test_bad_lr_values_are_refused(shapes, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and the error, exit status 2
        main(["train", str(shapes), "--model", "lenet5", "--out", str(tmp_path / "x"), "--lr", "fast"])
    assert exit_info.value.code == 2
    assert "--lr: expected a number or auto, got 'fast'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--fine-tune-lr-scale"):
        train(shapes, out=tmp_path / "y", fine_tune_lr_scale="big", **COMMON)


def test_fine_tune_phase_gets_its_own_range_test(tmp_path, one_thread, monkeypatch):
    monkeypatch.setattr("convnets.train.lr_find.DEFAULT_STEPS", 30)  # a short test keeps this one fast
    torch.manual_seed(1)
    ckpt = tmp_path / "resnet20.safetensors"
    save_state_dict(create_model("resnet20", num_classes=10), ckpt)
    data = make_shapes(tmp_path / "shapes", per_class=8, size=16)
    train(
        data,
        model="resnet20",
        out=tmp_path / "run",
        weights=str(ckpt),
        fine_tune_last=1,
        epochs=1,
        fine_tune_epochs=1,
        lr="auto",
        fine_tune_lr_scale="auto",
        workers=0,
        quiet=True,
        device="cpu",
    )
    config = RunConfig.read(tmp_path / "run")
    assert [r["phase"] for r in config.lr_find] == ["head", "finetune"]
    assert [p["lr"] for p in config.phases] == [r["lr"] for r in config.lr_find]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in metrics] == pytest.approx([r["lr"] for r in config.lr_find])


def test_resumed_lr_auto_run_keeps_its_rate_and_equals_the_straight_run(
    shapes, tmp_path, one_thread, monkeypatch
):
    import os
    import signal

    from convnets.models.lenet import LeNet5
    from convnets.train import TrainingInterrupted
    from convnets.train import lr_find as lr_find_module

    monkeypatch.setattr(lr_find_module, "DEFAULT_STEPS", 30)
    options = dict(COMMON, epochs=2, lr="auto")
    straight = train(shapes, out=tmp_path / "a", **options)
    tests, steps, stop = {"n": 0, "done": False}, {"n": 0}, {"on": True}
    real_test = lr_find_module.phase_range_test

    def counted_test(*args, **kwargs):
        tests["n"] += 1
        curve = real_test(*args, **kwargs)
        tests["done"] = True
        return curve

    def hook(module, _inputs, _output):
        if isinstance(module, LeNet5) and module.training and tests["done"]:
            steps["n"] += 1
            if steps["n"] == 3 and stop["on"]:  # epoch 2 (2 batches per epoch), step 1
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(lr_find_module, "phase_range_test", counted_test)
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with pytest.raises(TrainingInterrupted):
            train(shapes, out=tmp_path / "b", **options)
        stop["on"], tests["n"] = False, 0
        resumed = train(None, out=tmp_path / "b", resume=True, quiet=True)
    finally:
        handle.remove()
    assert tests["n"] == 0  # the resumed run reused the rate it had found: no second range test
    (found_b,), (found_a,) = RunConfig.read(tmp_path / "b").lr_find, RunConfig.read(tmp_path / "a").lr_find
    assert found_b["lr"] == found_a["lr"] and found_b["why"] == found_a["why"]
    losses = [h["train_loss"] for h in straight.history]
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(losses)


def test_valley_never_lands_past_the_smoothed_minimum():
    # A fall to a dip at index 30, a rise, then a slow decline that stays above the dip: the longest
    # decreasing subsequence skips the dip and ends at index 70, past the minimum.
    fall = [3.0 - 0.02 * i for i in range(30)]  # 3.0 .. 2.42
    rise = [2.40 + 0.02 * i for i in range(1, 11)]  # up to 2.60
    slow = [2.599 - 0.004 * i for i in range(40)]  # 2.599 .. 2.443, above the dip's 2.42
    losses = fall + [2.40] + rise + slow + [5.0] * 5
    n = len(losses)
    lrs = [10 ** (-7 + 8 * i / (n - 1)) for i in range(n)]
    curve = suggest(LRCurve(lrs, losses, losses, lrs[0], lrs[-1], steps=n, stopped="completed"))
    low = losses.index(min(losses))
    assert curve.index <= low and "up to the smoothed minimum" in curve.why
