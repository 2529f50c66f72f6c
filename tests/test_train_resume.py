"""Trouble: Ctrl-C/SIGTERM then --resume (same result as an uninterrupted run), kill -9, atomic
checkpoints that survive a kill mid-save, and a non-finite loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_shapes import make_shapes

from convnets.cli import main
from convnets.models.lenet import LeNet5
from convnets.train import TrainingInterrupted, train
from convnets.train.checkpoint import atomic_torch_save

ROOT = Path(__file__).resolve().parents[1]
# CPU: the bit-for-bit comparison needs deterministic kernels (cuDNN picks algorithms per run).
COMMON = dict(
    model="lenet5", epochs=3, lr=3e-3, augment="hflip,rotate:10", workers=0, quiet=True, device="cpu"
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", per_class=16)  # 38 train: 2 batches of 32


@contextmanager
def on_training_forward(call: int, action):
    """Run ``action(output)`` at the ``call``-th training-mode forward of LeNet5 (a global hook, since
    the model is built inside ``train``); a returned tensor replaces the output."""
    count = {"n": 0}

    def hook(module, _inputs, output):
        if isinstance(module, LeNet5) and module.training:
            count["n"] += 1
            if count["n"] == call:
                return action(output)
        return None

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _final_state(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)


def test_interrupt_then_resume_equals_uninterrupted_run(shapes, tmp_path):
    straight = train(shapes, out=tmp_path / "a", **COMMON)

    def interrupt(_out):
        os.kill(os.getpid(), signal.SIGINT)  # the handler lets the step finish, then saves and stops

    with on_training_forward(3, interrupt), pytest.raises(TrainingInterrupted) as info:  # epoch 2, step 1
        train(shapes, out=tmp_path / "b", **COMMON)
    assert info.value.exit_code == 130
    saved = _final_state(tmp_path / "b")
    assert saved["epoch"] == 1 and saved["partial"]["batch"] == 1  # stopped mid-epoch 2

    resumed = train(None, out=tmp_path / "b", resume=True, quiet=True)
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in straight.history]
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in straight.history]
    )
    best_a, best_b = (load_file(tmp_path / run / "model.safetensors") for run in "ab")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_bf16_resume_takes_the_backward_ways_the_run_picked(shapes, tmp_path, monkeypatch):
    """bf16 on CPU picks each convolution gradient's way by timing (train/bf16_backward.py); last.pt
    keeps the picks, so a resumed run whose own timings would pick otherwise gives the same bits."""
    from convnets.accel import bf16_backward as bb
    from convnets.base.runtime import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        pytest.skip("--precision bf16 needs a CPU with native bf16")
    options = {**COMMON, "precision": "bf16"}
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "cache"))  # the machine's picks: kept apart
    monkeypatch.setattr(bb.FastBf16ConvBackward, "_fastest", _pick(bb.BF16))
    train(shapes, out=tmp_path / "a", **options)

    def interrupt(_out):
        os.kill(os.getpid(), signal.SIGINT)

    with on_training_forward(3, interrupt), pytest.raises(TrainingInterrupted):
        train(shapes, out=tmp_path / "b", **options)
    assert "bf16" in _final_state(tmp_path / "b")["precision_plan"]["backward_picks"]
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "empty"))  # only last.pt knows the picks now
    monkeypatch.setattr(bb.FastBf16ConvBackward, "_fastest", _pick(bb.FP32))  # timings now say fp32
    train(None, out=tmp_path / "b", resume=True, quiet=True)
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def _pick(way):
    from convnets.accel import bf16_backward as bb

    return staticmethod(lambda ways: way if way in ways else bb.BF16)


def test_bf16_runs_with_one_seed_take_this_machines_picks(shapes, tmp_path, monkeypatch):
    """A second fresh run reads the picks the first made on this machine (cache_root()/bf16_backward),
    so the two are bit-identical although the second's own timings would pick otherwise."""
    from convnets.accel import bf16_backward as bb
    from convnets.base.runtime import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        pytest.skip("--precision bf16 needs a CPU with native bf16")
    options = {**COMMON, "precision": "bf16", "epochs": 1}
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bb.FastBf16ConvBackward, "_fastest", _pick(bb.BF16))
    train(shapes, out=tmp_path / "first", **options)
    assert bb.machine_choices_file().is_file()
    monkeypatch.setattr(bb.FastBf16ConvBackward, "_fastest", _pick(bb.FP32))
    train(shapes, out=tmp_path / "second", **options)
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "elsewhere"))  # no picks: fp32 ways this time
    train(shapes, out=tmp_path / "third", **options)
    first, second, third = (_final_state(tmp_path / r)["model"] for r in ("first", "second", "third"))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)  # the picks do change the bits


def _wait_for_epochs(run: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no epoch finished in time")


def test_sigterm_exits_143_and_kill9_resumes_from_last_epoch(shapes, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "convnets",
        "train",
        str(shapes),
        "--model",
        "lenet5",
        "--out",
        str(run),
        "--epochs",
        "500",
        "--workers",
        "0",
        "--image-size",
        "16",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    _wait_for_epochs(run, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "--resume" in err and str(run) in err
    torch.load(run / "last.pt", weights_only=True)

    # Resume in a new process and kill -9 it after it has finished another epoch.
    proc = subprocess.Popen(
        cmd[:5] + ["--out", str(run), "--resume", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    done = len((run / "metrics.jsonl").read_text().splitlines())
    _wait_for_epochs(run, done + 1, proc)
    proc.kill()
    proc.communicate()
    state = torch.load(run / "last.pt", weights_only=True)  # never half-written
    n = state["epoch"]
    result = train(None, out=run, resume=True, epochs=n + 1, quiet=True)
    assert [h["epoch"] for h in result.history] == list(range(1, n + 2))  # continued from the last epoch
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, n + 2))


_KILL_MID_SAVE = """
import os, signal, sys, torch
import convnets.base.atomic
import convnets.train.checkpoint as ckpt
# die after writing, before the rename
convnets.base.atomic.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
ckpt.atomic_torch_save({"version": torch.full((1000,), 2.0)}, sys.argv[1])
"""


def test_atomic_checkpoint_survives_a_kill_mid_save(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"version": torch.full((1000,), 1.0)}, path)
    proc = subprocess.run([sys.executable, "-c", _KILL_MID_SAVE, str(path)], cwd=ROOT, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(path, weights_only=True)["version"][0] == 1.0  # the previous good file
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(name.startswith(".last.pt.") for name in leftovers)  # only a hidden temp file


def test_failed_save_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    import convnets.base.atomic

    path = tmp_path / "last.pt"
    atomic_torch_save({"v": 1}, path)

    def broken(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(convnets.base.atomic.os, "replace", broken)
    with pytest.raises(OSError):
        atomic_torch_save({"v": 2}, path)
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_non_finite_loss_stops_with_clear_message(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train",
        str(shapes),
        "--model",
        "lenet5",
        "--out",
        str(run),
        "--epochs",
        "3",
        "--workers",
        "0",
        "--image-size",
        "16",
        "--quiet",
    ]
    with on_training_forward(3, lambda out: out * float("nan")):  # epoch 2, step 1
        rc = main(args)
    err = capsys.readouterr().err
    assert rc == 1
    assert "non-finite" in err and "epoch 2, step 1" in err and "last.pt" in err
    state = torch.load(run / "last.pt", weights_only=True)  # the last good checkpoint (epoch 1)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
