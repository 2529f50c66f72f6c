"""bench/whole_process.py without running the processes (the bench measures; tests keep it working):
the start-up / training / finish split from epoch-line arrival times, the peer scripts parse, the
table, and a clear skip when the shared data is missing."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import whole_process as wp  # noqa: E402


def test_split_times_from_epoch_line_arrivals():
    lines = [
        (3.0, "mobilenet_v2: 2 classes, ..."),
        (7.0, "cached base features: 262 training vectors (1 view(s) per image) of size 1280 in 3.5s"),
        (7.5, "epoch   1/2 [head] train loss 0.6 ... | 0.4s 600 img/s  *best"),
        (8.0, "epoch   2/2 [head] train loss 0.3 ... | 0.5s 500 img/s"),
        (11.0, "best validation accuracy 0.9"),
    ]
    run = wp.split_times(12.0, lines, [0.4, 0.5], cache_s=3.5)
    assert run.startup_s == pytest.approx(7.5 - 0.4 - 3.5)
    assert run.finish_s == pytest.approx(4.0)
    assert run.training_s == pytest.approx(4.4)


def test_peer_epoch_lines_give_their_seconds():
    line = "epoch 3/10 val acc 0.8750 time 1.234s"
    assert wp.EPOCH_LINE.match(line) and float(wp.PEER_SECONDS.search(line).group(1)) == 1.234


@pytest.mark.parametrize("script", [wp.TORCHVISION_SCRIPT, wp.KERAS_SCRIPT])
def test_peer_scripts_are_valid_python(script):
    compile(script, "peer.py", "exec")


def test_markdown_table_and_ratios():
    ours = wp.ProcessRun(10.0, [3.0, 3.0], 0.0, 2.0, 2.0, 0.9)
    peer = wp.ProcessRun(13.0, [5.0, 5.0], 0.0, 2.5, 0.5, 0.8)
    results = {
        "load_start": 0.5,
        "load_end": 0.7,
        "comparisons": {
            "A": {
                "epochs": 2,
                "command": "convnets train DATA ...",
                "peer_name": "plain torchvision script",
                "ours": [vars(ours)],
                "peer": [vars(peer)],
                "ratios": [1.3],
            }
        },
    }
    machine = {"cpu": "Test CPU", "cores": 2, "flags": ["avx2"], "torch": "x", "torchvision": "y"}
    md = wp.markdown(results, machine, SimpleNamespace(quick=False, reps=1), {"images": 327})
    assert "| convnets | 10.0 (10.0-10.0) | 2.0 (2.0-2.0) | - | 6.0 (6.0-6.0) |" in md
    assert "median **1.30x** (goal 1.3x: met)" in md and "Test CPU" in md


def test_missing_data_is_a_clear_skip(tmp_path, capsys):
    assert wp.main(["--data", str(tmp_path / "absent"), "--only", "A"]) == 0
    assert "skipped: no image folder" in capsys.readouterr().out
