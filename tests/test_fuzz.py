"""Property-based fuzzing (hypothesis) of the two doors hostile input comes through: the image loader
and POST /v1/predict. A short run, derandomized (the same examples every time, so CI is stable) and
bounded in examples and time; bench/fuzz.py runs the same strategies longer, with random seeds.

Properties: an image is either the model's view (uint8, the run's size and channels) or an
``ImageReadError`` with a message, never another exception; a request gets 200 with a row per image
(its top classes or its error) or a 4xx with a JSON error, never a 5xx, and the server stays ready.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis")

from fuzz_strategies import image_files, requests  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from convnets.data.decode import ImageReadError  # noqa: E402
from convnets.data.images import read_image  # noqa: E402

# Short and repeatable: the suite's budget is seconds. A slow example fails the run (deadline).
SUITE = settings(
    max_examples=40,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize(
    "size, in_chans, resize", [((32, 32), 3, "center-crop"), ((24, 40), 1, "resize")], ids=["rgb", "grey"]
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on corrupt EXIF/TIFF tags
@SUITE
@given(data=image_files(extreme=True))
def test_loader_gives_a_view_or_a_clear_error(data, size, in_chans, resize):
    try:
        view = read_image(data, size, in_chans, resize)
    except ImageReadError as e:
        assert str(e).strip()
        return
    assert view.dtype == np.uint8 and view.shape == (*size, in_chans)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    pytest.importorskip("onnxruntime")
    from serve_helpers import make_run
    from starlette.testclient import TestClient

    from convnets.deploy.engines import ExportedModel
    from convnets.serve import create_app

    run = make_run(tmp_path_factory.mktemp("fuzz") / "run")
    ExportedModel.open(run)
    with TestClient(create_app(run, max_upload_mb=0.1, max_files=4, max_batch=4)) as c:
        yield c


@SUITE
@given(request=requests(extreme=True))
def test_predict_answers_every_request_with_a_row_or_a_4xx(client, request):
    r = client.post(**request)
    assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text[:200])
    body = r.json()
    if r.status_code == 200:
        assert body["predictions"]
        for row in body["predictions"]:
            assert row.get("top") or row.get("error")
    else:
        assert body["error"].strip()


def test_server_is_still_ready_after_the_fuzzing(client):
    assert client.get("/readyz").status_code == 200
