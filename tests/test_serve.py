"""The server through the ASGI test client: every endpoint, every bad input, the API key, batching."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")

import httpx  # noqa: E402
from serve_helpers import CLASSES, child_env, image_bytes, make_run, png_bomb  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from convnets.deploy.engines import ExportedModel  # noqa: E402
from convnets.serve import create_app  # noqa: E402


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("serve") / "run")
    ExportedModel.open(run)  # export once for the whole session
    return run


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir, max_upload_mb=0.05, max_files=4)) as c:
        yield c


def files_of(*items):
    return [("file", (name, data, "image/png")) for name, data in items]


def test_health_ready_and_model(client, run_dir):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    info = client.get("/v1/model").json()
    assert info["name"] == "run" and info["model"] == "lenet5"
    assert info["classes"] == CLASSES and info["input_size"] == [3, 32, 32]
    assert info["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert info["validation"] == {"accuracy": 0.75, "epoch": 1, "loss": 0.5}
    import torch

    from convnets import create_model

    expected = sum(p.numel() for p in create_model("lenet5", num_classes=3, in_chans=3).parameters())
    assert info["params"] == expected and info["macs"] > 0  # cost.json written at the first start
    assert json.loads((run_dir / "cost.json").read_text())["params"] == expected
    del torch


def test_page_is_offline_and_accessible(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "http://" not in html and "https://" not in html  # no CDN, fonts or other hosts
    assert '<label for="files"' in html and 'type="file"' in html and "multiple" in html
    assert 'aria-live="polite"' in html and "img.alt" in html


def test_predict_multipart_matches_exported_model(client, run_dir):
    images = [(f"img{i}.png", image_bytes(i)) for i in range(3)]
    r = client.post("/v1/predict?top_k=3", files=files_of(*images))
    assert r.status_code == 200
    rows = r.json()["predictions"]
    expected = [p.to_dict() for p in ExportedModel.open(run_dir).predict(images, top=3)]
    assert rows == expected
    assert [len(row["top"]) for row in rows] == [3, 3, 3]
    assert all(abs(sum(c["prob"] for c in row["top"]) - 1) < 1e-5 for row in rows)


def test_predict_raw_body_and_default_top_k(client):
    r = client.post(
        "/v1/predict?name=cat.jpg", content=image_bytes(5, fmt="JPEG"), headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200
    (row,) = r.json()["predictions"]
    assert row["file"] == "cat.jpg" and len(row["top"]) == 3  # 5 asked, only 3 classes
    r = client.post(
        "/v1/predict", content=image_bytes(5), headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 200 and r.json()["predictions"][0]["file"] == "body"


def test_one_bad_file_among_good_ones_gets_its_error_row(client):
    good = image_bytes(1)
    r = client.post(
        "/v1/predict",
        files=files_of(
            ("good.png", good), ("bad.png", b"not an image"), ("half.png", good[: len(good) // 2])
        ),
    )
    assert r.status_code == 200
    good_row, bad_row, half_row = r.json()["predictions"]
    assert good_row["file"] == "good.png" and good_row["top"]
    assert (
        bad_row["file"] == "bad.png"
        and "cannot decode" in bad_row["error"]
        and "BytesIO" not in bad_row["error"]
    )
    assert half_row["file"] == "half.png" and half_row["error"]


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"content": b"GIF89a broken", "headers": {"content-type": "image/gif"}}, 400, "cannot decode"),
        ({"content": image_bytes(2)[:200], "headers": {"content-type": "image/png"}}, 400, "cannot decode"),
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty request body"),
        (
            {"content": b"{}", "headers": {"content-type": "application/json"}},
            415,
            "unsupported content-type",
        ),
        ({"content": png_bomb(), "headers": {"content-type": "image/png"}}, 400, "decompression bomb"),
        ({"content": b"x" * 60_000, "headers": {"content-type": "image/png"}}, 413, "larger than the limit"),
        ({"files": files_of(*[(f"{i}.png", image_bytes(i)) for i in range(5)])}, 413, "too many files"),
        ({"data": {"note": "no file"}, "files": []}, 400, "no files"),
        (
            {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}},
            400,
            "",
        ),
    ],
    ids=[
        "not-image",
        "truncated",
        "empty",
        "json",
        "bomb",
        "too-large",
        "too-many-files",
        "no-files",
        "bad-multipart",
    ],
)
def test_bad_requests_get_a_clear_4xx(client, kwargs, status, words):
    if kwargs.get("data") is not None:  # a form with only a text field
        kwargs = {"data": kwargs["data"], "headers": {"content-type": "application/x-www-form-urlencoded"}}
        status, words = 415, "unsupported content-type"
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["error"].lower()
    assert client.get("/readyz").status_code == 200  # nothing else disturbed


def test_form_without_files_and_bad_top_k(client):
    r = client.post("/v1/predict", files={"note": (None, b"hello")})
    assert r.status_code == 400 and "no files" in r.json()["error"]
    r = client.post("/v1/predict?top_k=0", content=image_bytes(1), headers={"content-type": "image/png"})
    assert r.status_code == 400 and "top_k" in r.json()["error"]


def test_upload_limit_is_enforced_while_streaming(run_dir):
    """A body without Content-Length over the limit is refused without reading the rest of it."""
    app = create_app(run_dir, max_upload_mb=0.05)
    received, sent = [], []

    async def receive():
        received.append(1)  # 1000 x 10 kB would be 10 MB; the limit is 50 kB
        return {"type": "http.request", "body": b"x" * 10_000, "more_body": len(received) < 1000}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "query_string": b"",
        "headers": [(b"content-type", b"image/png"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "root_path": "",
    }

    async def main():
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    asyncio.run(main())
    assert sent[0]["status"] == 413 and b"larger than the limit" in sent[1]["body"]
    assert len(received) <= 6


def test_api_key(run_dir):
    with TestClient(create_app(run_dir, api_key="s3cret")) as c:
        image = {"content": image_bytes(1), "headers": {"content-type": "image/png"}}
        assert c.post("/v1/predict", **image).status_code == 401
        assert c.get("/v1/model").status_code == 401
        wrong = c.post(
            "/v1/predict", content=image_bytes(1), headers={"content-type": "image/png", "x-api-key": "nope"}
        )
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        ok = c.post(
            "/v1/predict",
            content=image_bytes(1),
            headers={"content-type": "image/png", "authorization": "Bearer s3cret"},
        )
        assert ok.status_code == 200
        assert c.get("/v1/model", headers={"x-api-key": "s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


def test_bad_run_folder_is_refused_at_once(tmp_path):
    from convnets.base.runs import RunFolderError

    with pytest.raises(RunFolderError, match="not a run folder"):
        create_app(tmp_path)


def test_concurrent_requests_share_batches_and_match_predict(run_dir):
    """N requests at once: fewer engine calls than N, and the probabilities of ExportedModel.predict
    (what `convnets predict` runs on an exported run)."""
    n = 12
    images = [(f"{i}.png", image_bytes(100 + i)) for i in range(n)]
    app = create_app(run_dir, max_batch=32, batch_wait_ms=500)

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                posts = [
                    c.post(
                        "/v1/predict?top_k=3",
                        content=data,
                        headers={"content-type": "image/png"},
                        params={"name": name},
                    )
                    for name, data in images
                ]
                return await asyncio.gather(*posts)

    responses = asyncio.run(main())
    stats = app.state.served.batcher.stats
    assert all(r.status_code == 200 for r in responses)
    assert stats.rows == n and stats.calls < n, stats
    got = [r.json()["predictions"][0] for r in responses]
    expected = [p.to_dict() for p in ExportedModel.open(run_dir).predict(images, top=3)]
    assert got == expected


def test_predict_cli_gives_the_same_probabilities(run_dir, tmp_path, capsys):
    from convnets.cli import main

    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(image_bytes(200 + i))
        paths.append(path)
    # One engine for both: under auto a 3-image `predict` runs ONNX Runtime fp32 while a server on an
    # AMX CPU runs OpenVINO bf16 (convnets.deploy.engines), whose probabilities differ in the 5th decimal.
    cli = ["predict", str(run_dir), *map(str, paths), "--json", "--top-k", "3", "--backend", "onnxruntime"]
    assert main(cli) == 0
    cli_rows = json.loads(capsys.readouterr().out)
    with TestClient(create_app(run_dir, backend="onnxruntime")) as c:
        r = c.post(
            "/v1/predict?top_k=3", files=[("file", (str(p), p.read_bytes(), "image/png")) for p in paths]
        )
    served = r.json()["predictions"]
    for a, b in zip(cli_rows, served):
        assert a["file"] == b["file"]
        assert [c["class"] for c in a["top"]] == [c["class"] for c in b["top"]]
        np.testing.assert_allclose([c["prob"] for c in a["top"]], [c["prob"] for c in b["top"]], atol=1e-5)


def test_serving_an_exported_run_imports_neither_torch_nor_torchvision(run_dir):
    code = (
        "import sys, asyncio\n"
        "from convnets.serve import create_app\n"
        f"app = create_app({str(run_dir)!r})\n"
        "async def go():\n"
        "    async with app.router.lifespan_context(app):\n"
        "        assert app.state.served.ready.is_set()\n"
        "asyncio.run(go())\n"
        "import convnets.cli.serve\n"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cli_module_imports_nothing_heavy():
    code = (
        "import sys, convnets.cli.serve\n"
        "print(sorted(m for m in ('torch', 'starlette', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert out.stdout.strip() == "[]", out.stderr


def test_cost_is_computed_in_a_child_process_when_missing(run_dir, tmp_path):
    """A server that did not need torch leaves params/multiply-adds to a child process and reads
    the file it writes."""
    import shutil

    from convnets.base.runs import RunConfig
    from convnets.serve.model_info import read_cost, start_cost_job

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "cost.json").unlink(missing_ok=True)
    config = RunConfig.read(run)
    assert read_cost(run, config) is None
    job = start_cost_job(run)
    assert job.wait(timeout=120) == 0
    cost = read_cost(run, config)
    assert cost is not None and cost.params > 0 and cost.macs > 0
    config.image_size = (64, 64)  # a different input size: the cached cost no longer applies
    assert read_cost(run, config) is None


def test_batch_limit_grows_only_while_batches_are_cheaper_per_image():
    from convnets.serve.batching import choose_batch_limit

    overhead_bound = choose_batch_limit(lambda n: 1.0 + 0.01 * n, 32)  # per-call overhead dominates
    assert overhead_bound[0] == 32 and sorted(overhead_bound[1]) == [1, 2, 4, 8, 16, 32]
    cache_bound = choose_batch_limit(lambda n: 0.006 * n * (1 + 0.05 * n), 32)  # bigger is dearer
    assert cache_bound == (1, {1: pytest.approx(0.0063), 2: pytest.approx(0.0066)})
    assert choose_batch_limit(lambda n: 1.0, 12)[0] == 12  # the ceiling need not be a power of 2
    assert choose_batch_limit(lambda n: 1.0, 1)[0] == 1


def test_auto_batch_size_is_measured_and_reported(client):
    client.post("/v1/predict", content=image_bytes(9), headers={"content-type": "image/png"})
    batching = client.get("/v1/model").json()["batching"]
    assert batching["chosen"] == "auto" and 1 <= batching["max_batch"] <= 32
    assert "1" in batching["ms_per_image_by_batch"] and batching["engine_calls"] >= 1


def test_batcher_waits_only_for_requests_on_their_way():
    import time

    from convnets.serve.batching import MicroBatcher

    async def main():
        batcher = MicroBatcher(lambda xs: [2 * x for x in xs], max_batch=8, wait_ms=2000)
        await batcher.start()
        start = time.perf_counter()
        assert await batcher.submit([1]) == [2]  # nobody else coming: no waiting for company
        alone = time.perf_counter() - start

        async def late():
            with batcher.incoming():  # announced, still being read
                await asyncio.sleep(0.05)
            return await batcher.submit([3])

        task = asyncio.create_task(late())
        await asyncio.sleep(0)
        together = await asyncio.gather(batcher.submit([5, 7]), task)
        await batcher.stop()
        return alone, together, batcher.stats

    alone, together, stats = asyncio.run(main())
    assert alone < 1.0
    assert together == [[10, 14], [6]]
    assert stats.calls == 2 and stats.largest == 3  # the late request joined the waiting batch


def test_extreme_aspect_and_decode_bombs_are_cheap_rows(run_dir, tmp_path):
    """Issue #25: a 20000x1 PNG (140 bytes) took 7 s and 2.85 GB in the server; a blank 36-megapixel
    PNG decodes to 144 MB before any conversion. One gets a prediction, the other its reason, fast."""
    import shutil
    import time

    from test_data_bounds import blank_png

    from convnets.base.runs import RunConfig

    crop_run = shutil.copytree(run_dir, tmp_path / "crop_run")  # the repro's mode: centre crop
    config = RunConfig.read(crop_run)
    config.resize = "center-crop"
    config.write(crop_run)
    wide = io.BytesIO()
    Image.new("RGB", (20000, 1), (200, 30, 30)).save(wide, "PNG")
    bomb = blank_png(tmp_path / "bomb.png", 6000, 6000).read_bytes()
    with TestClient(create_app(crop_run)) as c:
        start = time.perf_counter()
        r = c.post("/v1/predict", files=files_of(("wide.png", wide.getvalue()), ("bomb.png", bomb)))
        seconds = time.perf_counter() - start
    assert r.status_code == 200
    wide_row, bomb_row = r.json()["predictions"]
    assert wide_row["file"] == "wide.png" and len(wide_row["top"]) == 3
    assert bomb_row["file"] == "bomb.png" and "refused" in bomb_row["error"] and "MB" in bomb_row["error"]
    assert seconds < 3.0
