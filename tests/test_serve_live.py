"""`convnets serve` as a real process on a loopback port: a headless browser uses the page, and SIGTERM
stops it gracefully (requests in flight answered, exit code 0)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("onnxruntime")

from serve_helpers import free_port, headless_chromium, image_bytes, make_run, start_server  # noqa: E402

from convnets.deploy.engines import ExportedModel  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("serve-live") / "run")
    ExportedModel.open(run)
    return run


def test_page_in_a_headless_browser(run_dir, tmp_path):
    webdriver, browser = headless_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "owl.png"
    image.write_bytes(image_bytes(7))
    expected = ExportedModel.open(run_dir).predict([(image.name, image.read_bytes())], top=1)[0].label
    port = free_port()
    server = start_server(run_dir, port, "--no-access-log", log=tmp_path / "server.log")
    try:
        browser.set_page_load_timeout(30)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 30)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-meta"), "validation accuracy 75.0%"))
        assert browser.find_element(By.ID, "title").text == "run (lenet5)"
        browser.find_element(By.ID, "files").send_keys(str(image))
        label = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#results .result .label")))
        assert label.text == expected
        assert (
            browser.find_element(By.CSS_SELECTOR, "#results img").get_attribute("alt")
            == "Uploaded image owl.png"
        )
        assert f"First: {expected}" in browser.find_element(By.ID, "status").text
    finally:
        browser.quit()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def _slow_post(port: int, body: bytes, started: threading.Event, go: threading.Event, out: list) -> None:
    """POST an image in two halves, the second only after ``go``: in flight while the server stops."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/predict?top_k=1")
        conn.putheader("Content-Type", "image/png")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body[: len(body) // 2])
        started.set()
        go.wait(30)
        conn.send(body[len(body) // 2 :])
        response = conn.getresponse()
        out.append((response.status, json.loads(response.read())))
    except OSError as e:
        out.append((None, str(e)))
    finally:
        conn.close()


def test_sigterm_finishes_requests_in_flight_and_exits_0(run_dir, tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    server = start_server(run_dir, port, "--batch-wait-ms", "50", log=log)
    n = 6
    results: list = []
    started = [threading.Event() for _ in range(n)]
    go = threading.Event()
    threads = [
        threading.Thread(target=_slow_post, args=(port, image_bytes(i), started[i], go, results))
        for i in range(n)
    ]
    try:
        for t in threads:
            t.start()
        assert all(e.wait(30) for e in started)
        time.sleep(0.3)  # the server has read the headers and the first halves
        server.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the server is stopping: it no longer accepts connections
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        go.set()
        for t in threads:
            t.join(30)
        assert server.wait(timeout=30) == 0, log.read_text()
    finally:
        go.set()
        if server.poll() is None:
            server.kill()
    assert len(results) == n
    assert all(status == 200 and body["predictions"][0]["top"] for status, body in results), results
