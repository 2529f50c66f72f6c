"""compare.py: two tiny models trained on digits under one budget, leaderboard files and plot."""

from __future__ import annotations

import json

from convnets.cli import main


def test_compare_on_digits_writes_a_consistent_leaderboard(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(
        ["compare", "digits", "--models", "lenet5,mobilenet_v1_025", "--epochs", "1", "--image-size", "32",
         "--batch-size", "64", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    board = json.loads((out / "leaderboard.json").read_text())
    rows = board["rows"]
    assert {r["model"] for r in rows} == {"lenet5", "mobilenet_v1_025"}
    assert board["same_split"] is True
    accs = [r["val_acc"] for r in rows]
    assert accs == sorted(accs, reverse=True)  # ranked, best first
    by_name = {r["model"]: r for r in rows}
    # LeNet-5 on a 1x32x32 input: 61,706 parameters with a 10-class head (the paper's C1..F6 + output).
    assert by_name["lenet5"]["params"] == 61_706
    for r in rows:
        assert 0 <= r["val_acc"] <= 1 and r["macs"] > 0 and r["latency_ms"] > 0 and r["train_seconds"] > 0
        config = json.loads((out / r["model"] / "config.json").read_text())
        assert r["val_acc"] == config["best"]["val_acc"]
    md = (out / "leaderboard.md").read_text()
    assert "| 1 | " + rows[0]["model"] in md and "mobilenet_v1_025" in md
    assert (out / "accuracy_vs_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
