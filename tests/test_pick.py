"""pick.py: the most accurate candidate within a budget, from published top-1 and counted cost."""

from __future__ import annotations

import json

import pytest

from convnets.cli import main
from convnets.studies.pick import candidates, pick


def test_candidate_table_has_every_width_and_resolution_with_a_source():
    v1 = candidates(("mobilenet_v1",))
    assert len(v1) == 16
    by_label = {c.label: c for c in v1}
    # Paper Table 6 (alpha at 224) and Table 7 (rho at alpha 1.0); the rest from the released checkpoints.
    assert (
        by_label["mobilenet_v1 a=0.5 r=224"].top1 == 63.7
        and "Table 6" in by_label["mobilenet_v1 a=0.5 r=224"].source
    )
    assert (
        by_label["mobilenet_v1 a=1 r=160"].top1 == 67.2
        and "Table 7" in by_label["mobilenet_v1 a=1 r=160"].source
    )
    assert (
        by_label["mobilenet_v1 a=0.5 r=160"].top1 == 59.1
        and "slim" in by_label["mobilenet_v1 a=0.5 r=160"].source
    )
    effnets = candidates(("efficientnet",))
    assert [c.resolution for c in effnets] == [224, 240, 260, 300, 380, 456, 528, 600]


def test_pick_by_params_takes_the_most_accurate_that_fits():
    result = pick(max_params=1_000_000, families=("mobilenet_v1",), image_sizes=(128, 160))
    # Only alpha = 0.25 (0.47 M params) fits under 1 M; at 160 it is more accurate (45.5 > 41.5).
    assert result.choice.label == "mobilenet_v1 a=0.25 r=160"
    assert result.choice.params < 1_000_000 and result.choice.latency_ms is None  # no latency asked
    excluded = [c for c in result.table if c.status.startswith("excluded")]
    assert len(excluded) == 6 and all("params" in c.status for c in excluded)


def test_pick_with_latency_measures_and_nothing_fits_is_said(capsys):
    # At 128 px only alpha 0.5 (49 M) and 0.25 (14 M) pass the 60 M mult-add filter; only they are run.
    result = pick(latency_ms=1e6, max_macs=60_000_000, families=("mobilenet_v1",), image_sizes=(128,))
    assert result.choice.label == "mobilenet_v1 a=0.5 r=128" and result.choice.latency_ms > 0
    measured = [c.label for c in result.table if c.latency_ms is not None]
    assert sorted(measured) == ["mobilenet_v1 a=0.25 r=128", "mobilenet_v1 a=0.5 r=128"]
    rc = main(["pick", "--max-params", "1k", "--family", "mobilenet_v1", "--image-size", "128", "--json"])
    assert rc == 1
    out = json.loads(capsys.readouterr().out)
    assert out["choice"] is None and "nothing fits" in out["message"]


def test_pick_needs_a_budget():
    with pytest.raises(ValueError, match="budget"):
        pick()
