# ruff: noqa: E501 - long Markdown prose lines in the report
"""Serving benchmark: `convnets serve` against the servers users write by hand, on loopback.

    .venv/bin/python bench/serve.py                 # ~4 min on 2 cores; prints Markdown, --json FILE for data
    .venv/bin/python bench/serve.py --quick         # short bursts, 1,000-request soak: checks the script

Model: mobilenet_v2 @224, 1000 classes, random weights, one run folder shared by every peer. Peers, each
its own process on a 127.0.0.1 port, all alive for the whole run and measured interleaved (c=1, 8, 32 in
turn for each peer, repeated), so a burst of load from the shared machine hits every peer alike:

* ``convnets``: ``convnets serve RUN`` (defaults: ONNX Runtime, micro-batching up to 32, 5 ms wait);
* ``eager``: what users write by hand: FastAPI + the torchvision model in eager mode under
  ``torch.no_grad()``, torchvision transforms, one image per call (a sync endpoint, FastAPI's thread pool);
* ``onnxruntime``: the same FastAPI server on ONNX Runtime (the run's model.onnx), no batching.

The client is this process: N threads with one keep-alive ``http.client`` connection each, POSTing
a 320x240 JPEG as multipart (what ``curl -F`` and browsers send); each burst is bounded in requests
and seconds. Also measured: the bare backend call (``ExportedModel.predict`` on the same JPEG, in
process) plus HTTP (``GET /healthz`` round trip), launch-to-``/readyz`` of ``convnets serve`` (and
whether libtorch was mapped into it), and a soak of ``--soak`` requests with 1% malformed uploads.
"""

import argparse
import http.client
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BOUNDARY = "convnetsbenchboundary"


# --- the hand-written peers (run as `python bench/serve.py --peer KIND --run RUN --port P`) -----------


def serve_peer(kind: str, run_dir: Path, port: int) -> None:
    import numpy as np
    import uvicorn
    from fastapi import FastAPI, File, UploadFile
    from PIL import Image

    config = json.loads((run_dir / "config.json").read_text())
    names, mean, std = config["class_names"], config["mean"], config["std"]
    if kind == "eager":
        import torch
        import torchvision
        from safetensors.torch import load_file
        from torchvision import transforms

        model = torchvision.models.mobilenet_v2(num_classes=len(names))
        model.load_state_dict(load_file(run_dir / "model.safetensors"))
        model.eval()
        preprocess = transforms.Compose(
            [
                transforms.Resize(256),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

        def infer(image: Image.Image) -> np.ndarray:
            with torch.no_grad():
                return model(preprocess(image)[None]).softmax(1)[0].numpy()
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def infer(image: Image.Image) -> np.ndarray:
            w, h = image.size
            scale = 256 / min(w, h)
            image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
            w, h = image.size
            left, top = (w - 224) // 2, (h - 224) // 2
            x = (
                np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32).transpose(2, 0, 1)[
                    None
                ]
                / 255
            )
            (logits,) = session.run(None, {input_name: x})
            e = np.exp(logits[0] - logits[0].max())
            return e / e.sum()

    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    @app.post("/v1/predict")
    def predict(file: UploadFile = File(...)) -> dict:  # noqa: B008 - FastAPI's own idiom
        probs = infer(Image.open(file.file).convert("RGB"))
        top = np.argsort(-probs)[:5]
        return {
            "predictions": [
                {"file": file.filename, "top": [{"class": names[i], "prob": float(probs[i])} for i in top]}
            ]
        }

    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


# --- set-up ------------------------------------------------------------------------------------------


def make_run(out: Path) -> Path:
    """mobilenet_v2 @224, random weights, exported, with its cost cached (what a trained run has)."""
    import torch

    from convnets import create_model
    from convnets.base.runs import BestEpoch, RunConfig
    from convnets.deploy.engines import ExportedModel
    from convnets.serve.model_info import write_cost
    from convnets.weights import save_state_dict

    torch.manual_seed(0)
    save_state_dict(create_model("mobilenet_v2", num_classes=1000), out / "model.safetensors")
    RunConfig(
        model="mobilenet_v2",
        num_classes=1000,
        class_names=[f"class_{i}" for i in range(1000)],
        image_size=(224, 224),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        best=BestEpoch(epoch=1, val_acc=0.001),
    ).write(out)
    ExportedModel.open(out)
    write_cost(out)
    return out


def test_jpeg() -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)  # smooth photo-like blocks, not noise
    image = Image.fromarray(small).resize((320, 240), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def multipart(name: str, data: bytes, content_type: str = "image/jpeg") -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def malformed_bodies(jpeg: bytes) -> list[tuple[str, bytes]]:
    """What the soak mixes in: (kind, multipart body)."""
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("L", (8, 8)).save(bomb, "PNG")
    png = bytearray(bomb.getvalue())
    import zlib

    i = png.index(b"IHDR")
    png[i + 4 : i + 12] = (100_000).to_bytes(4, "big") * 2
    png[i + 17 : i + 21] = zlib.crc32(bytes(png[i : i + 17])).to_bytes(4, "big")
    return [
        ("not an image", multipart("notes.jpg", b"this is not an image" * 50)),
        ("truncated JPEG", multipart("half.jpg", jpeg[: len(jpeg) // 2])),
        ("empty file", multipart("empty.jpg", b"")),
        ("decompression bomb", multipart("bomb.png", bytes(png), "image/png")),
    ]


def env_for_child() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 180) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"server on port {port} not ready in {timeout} s")


def start(kind: str, run_dir: Path, log_dir: Path) -> tuple[subprocess.Popen, int, float]:
    port = free_port()
    if kind.startswith("convnets"):  # "convnets" (defaults) or "convnets --max-batch N"
        cmd = [
            sys.executable,
            "-m",
            "convnets",
            "serve",
            str(run_dir),
            "--port",
            str(port),
            "--no-access-log",
        ]
        cmd += kind.split()[1:]
    else:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--peer",
            kind,
            "--run",
            str(run_dir),
            "--port",
            str(port),
        ]
    log = open(log_dir / f"{kind.replace(' ', '_')}.log", "ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env_for_child())
    wait_ready(port, proc)
    return proc, port, time.perf_counter() - t0


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


# --- the load client -----------------------------------------------------------------------------------


def load(port: int, bodies, concurrency: int, max_requests: int, max_seconds: float, expect=None) -> dict:
    """``concurrency`` threads POST ``bodies(i)`` (-> (kind, body)) until ``max_requests`` or ``max_seconds``.

    ``expect(kind, status) -> bool`` says whether a response is right (default: 200). Returns requests/s,
    p50/p99 latency (ms, right answers of the good kind), failures, and status counts.
    """
    counter = itertools.count()
    deadline = time.perf_counter() + max_seconds
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    statuses: dict[str, int] = {}
    expect = expect or (lambda kind, status: status == 200)

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        while time.perf_counter() < deadline:
            i = next(counter)
            if i >= max_requests:
                break
            kind, body = bodies(i)
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                status, why = None, f"{type(e).__name__}: {e}"
            ms = 1000 * (time.perf_counter() - t0)
            with lock:
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status is not None and expect(kind, status):
                    if kind == "good":
                        latencies.append(ms)
                else:
                    failures.append(f"{kind}: {status if status is not None else why}")
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = sum(statuses.values())
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {
        "requests": done,
        "seconds": wall,
        "rps": done / wall,
        "p50_ms": statistics.median(latencies) if latencies else None,
        "p99_ms": q[98],
        "failed": len(failures),
        "failures": failures[:10],
        "statuses": statuses,
    }


def bare_backend_ms(run_dir: Path, jpeg: bytes, n: int) -> float:
    """Median ms of ExportedModel.predict on one JPEG in process (decode + resize + ORT + top-5), the
    model opened as the server opens it."""
    from convnets.serve.app import open_model

    model = open_model(run_dir)
    for _ in range(5):
        model.predict([("x.jpg", jpeg)], top=5)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        model.predict([("x.jpg", jpeg)], top=5)
        times.append(1000 * (time.perf_counter() - t0))
    del model
    return statistics.median(times)


def http_ms(port: int, n: int) -> float:
    """Median ms of a GET /healthz round trip on a keep-alive connection (the HTTP part of a call)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        times.append(1000 * (time.perf_counter() - t0))
    conn.close()
    return statistics.median(times[5:])


def engine_sweep(run_dir: Path, reps: int = 4) -> dict:
    """ONNX Runtime alone on the run's model.onnx (2 threads): CPU and wall ms per image by batch size,
    with its threads spinning between operators (ORT's default) and sleeping (what the server uses).
    Interleaved: each repetition runs every (setting, batch) once, 32 images each."""
    import numpy as np
    import onnxruntime as ort

    sessions = {}
    for spin in (True, False):
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        sessions["spin" if spin else "no spin"] = ort.InferenceSession(
            str(run_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
    name = sessions["spin"].get_inputs()[0].name
    batches = (1, 2, 4, 8, 16, 32)
    x = {n: np.random.default_rng(0).random((n, 3, 224, 224), dtype=np.float32) for n in batches}
    for session in sessions.values():
        for n in batches:
            session.run(None, {name: x[n]})
    raw: dict = {}
    for _ in range(reps):
        for setting, session in sessions.items():
            for n in batches:
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for _ in range(32 // n):
                    session.run(None, {name: x[n]})
                raw.setdefault(f"{setting}|{n}", []).append(
                    (1000 * (time.process_time() - cpu0) / 32, 1000 * (time.perf_counter() - wall0) / 32)
                )
    return {
        key: {"cpu_ms": statistics.median(c for c, _ in v), "wall_ms": statistics.median(w for _, w in v)}
        for key, v in raw.items()
    } | {"load": os.getloadavg(), "reps": reps}


def engine_markdown(sweep: dict) -> str:
    rows = [
        "| ORT threads between operators | " + " | ".join(f"batch {n}" for n in (1, 2, 4, 8, 16, 32)) + " |"
    ]
    rows.append("|---" * 7 + "|")
    for setting in ("spin", "no spin"):
        cells = [
            f"{sweep[f'{setting}|{n}']['cpu_ms']:.2f} / {sweep[f'{setting}|{n}']['wall_ms']:.2f}"
            for n in (1, 2, 4, 8, 16, 32)
        ]
        rows.append(f"| {setting} | " + " | ".join(cells) + " |")
    return (
        f"ONNX Runtime alone on the same model.onnx, {os.cpu_count()} threads: CPU ms / wall ms per image by batch size "
        f"(median of {sweep['reps']} interleaved repetitions of 32 images; load average {sweep['load'][0]:.2f}).\n\n"
        + "\n".join(rows)
    )


# --- the run -------------------------------------------------------------------------------------------


def run(quick: bool, reps: int, soak_n: int) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    jpeg = test_jpeg()
    good = ("good", multipart("photo.jpg", jpeg))
    burst_requests, burst_seconds = (200, 2.0) if quick else (3000, 6.0)
    # "--max-batch 32": a fixed batch ceiling, against the default (auto: measured at start-up)
    peers = ["convnets", "convnets --max-batch 32", "onnxruntime", "eager"]
    data: dict = {"cpu": cpu_line(), "load_before": os.getloadavg(), "quick": quick, "reps": reps}
    with tempfile.TemporaryDirectory(prefix="convnets-bench-serve-") as tmp:
        tmp = Path(tmp)
        run_dir = make_run(tmp / "mobilenet_v2")
        data["image_bytes"] = len(jpeg)

        # Launch to /readyz, 3 launches of a run that is already exported (what every later start is).
        launches = []
        for _ in range(3):
            proc, port, seconds = start("convnets", run_dir, tmp)
            launches.append({"seconds": seconds, "libtorch_mapped": maps_torch(proc.pid)})
            proc.terminate()
            proc.wait(30)
        data["ready"] = {
            "median_s": statistics.median(x["seconds"] for x in launches),
            "launches": launches,
        }

        data["engine"] = engine_sweep(run_dir, reps=1 if quick else 4)
        servers = {kind: start(kind, run_dir, tmp) for kind in peers}
        try:
            for _, port, _ in servers.values():  # warm every peer up (thread pools, arenas)
                load(port, lambda i: good, 8, 64, 30)

            # c=1 reference: the bare backend call in process + the HTTP round trip.
            data["bare_backend_ms"] = bare_backend_ms(run_dir, jpeg, 30 if quick else 100)
            data["http_ms"] = http_ms(servers["convnets"][1], 50 if quick else 200)

            results: dict = {kind: {c: [] for c in (1, 8, 32)} for kind in peers}
            for _ in range(reps):
                for c in (1, 8, 32):
                    for kind in peers:
                        proc, port, _ = servers[kind]
                        cpu0 = cpu_seconds(proc.pid)
                        r = load(port, lambda i: good, c, burst_requests, burst_seconds)
                        r["server_cpu_ms_per_request"] = (
                            1000 * (cpu_seconds(proc.pid) - cpu0) / max(1, r["requests"])
                        )
                        results[kind][c].append(r)
            data["load"] = results
            with urllib.request.urlopen(
                f"http://127.0.0.1:{servers['convnets'][1]}/v1/model", timeout=10
            ) as r:
                data["convnets_batching"] = json.loads(r.read())["batching"]

            # Soak: 1% malformed uploads mixed in; every good one must be answered 200, no 5xx at all.
            proc, port, _ = servers["convnets"]
            bad = malformed_bodies(jpeg)

            def soak_body(i: int):
                return ("bad", bad[(i // 100) % len(bad)][1]) if i % 100 == 99 else good

            def soak_expect(kind: str, status: int) -> bool:
                return status == 200 if kind == "good" else 400 <= status < 500

            warm = load(port, soak_body, 32, 500, 120, soak_expect)
            after_warmup = rss_kib(proc.pid)
            soak = load(port, soak_body, 32, soak_n, 600, soak_expect)
            end = rss_kib(proc.pid)
            data["soak"] = {
                "warmup": warm,
                "run": soak,
                "rss_after_warmup_kib": after_warmup["VmRSS"],
                "rss_end_kib": end["VmRSS"],
                "peak_rss_end_kib": end["VmHWM"],
                "peak_vs_warmup": end["VmHWM"] / after_warmup["VmRSS"],
                "malformed": [kind for kind, _ in bad],
            }
            data["libtorch_in_convnets_server"] = maps_torch(proc.pid)
        finally:
            for proc, _, _ in servers.values():
                proc.terminate()
            for proc, _, _ in servers.values():
                try:
                    data.setdefault("exit_codes", []).append(proc.wait(30))
                except subprocess.TimeoutExpired:
                    proc.kill()
    data["load_after"] = os.getloadavg()
    return data


def cpu_line() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def _med(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def markdown(data: dict) -> str:
    load = data["load"]
    peers = list(load)
    rows = [
        "| peer | concurrency | requests/s | p50 ms | p99 ms | server CPU ms / request | failed | requests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary: dict = {}
    for c in (1, 8, 32):
        for kind in peers:
            runs = load[kind][str(c)] if str(c) in load[kind] else load[kind][c]
            rps, p50, p99 = _med(runs, "rps"), _med(runs, "p50_ms"), _med(runs, "p99_ms")
            summary[(kind, c)] = {"rps": rps, "p50": p50}
            rows.append(
                f"| {kind} | {c} | {rps:.1f} ({min(r['rps'] for r in runs):.1f}-{max(r['rps'] for r in runs):.1f}) "
                f"| {p50:.1f} | {p99:.1f} | {_med(runs, 'server_cpu_ms_per_request'):.1f} "
                f"| {sum(r['failed'] for r in runs)} | {sum(r['requests'] for r in runs)} |"
            )
    ours32, eager32, ort32 = (summary[(k, 32)]["rps"] for k in ("convnets", "eager", "onnxruntime"))
    reference = data["bare_backend_ms"] + data["http_ms"]
    p50_1 = summary[("convnets", 1)]["p50"]
    soak = data["soak"]
    s = soak["run"]
    goals = {
        "vs_eager_c32": ours32 / eager32,
        "vs_onnxruntime_c32": ours32 / ort32,
        "c1_p50_vs_bare_plus_http": p50_1 / reference,
        "soak_failed_good": sum(1 for f in s["failures"] if f.startswith("good")) if s["failed"] else 0,
        "soak_5xx": sum(n for k, n in s["statuses"].items() if k.startswith("5")),
        "soak_peak_vs_warmup": soak["peak_vs_warmup"],
    }
    data["goals"] = goals
    launches = data["ready"]["launches"]
    launch_s = ", ".join(f"{x['seconds']:.2f}" for x in launches)

    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    return "\n".join(
        [
            engine_markdown(data["engine"]) if "engine" in data else "",
            "",
            f"mobilenet_v2 @224 (random weights), {data['image_bytes'] // 1024} kB 320x240 JPEG as multipart, loopback, "
            f"client threads in the benchmark process. {data['cpu']}; load average before {data['load_before'][0]:.2f}, "
            f"after {data['load_after'][0]:.2f} (shared machine: absolute figures describe this run; compare the ratios). "
            f"Median of {data['reps']} interleaved repetitions (min-max for requests/s); bursts bounded in requests and seconds. "
            "Peers: `convnets` = `convnets serve RUN` (defaults: ONNX Runtime, `--max-batch auto`, which chose "
            f"{data['convnets_batching']['max_batch']} here from ms per image by batch size "
            f"{data['convnets_batching']['ms_per_image_by_batch']}; mean batch over the run "
            f"{data['convnets_batching']['mean_batch']}); `convnets --max-batch 32` = the same with batches of up to 32; "
            "server CPU ms / request = the server process's CPU time over the burst / requests (less sensitive to "
            "the machine's other load than requests/s); `eager` = FastAPI + torchvision "
            "model in eager mode, one image per call (what users write by hand); `onnxruntime` = the same FastAPI "
            "server on ONNX Runtime without batching. `bench/serve.py` explains the set-up.",
            "",
            *rows,
            "",
            "| goal | measured | |",
            "|---|---|---|",
            f"| c=32 requests/s vs hand-written eager >= 5x | {goals['vs_eager_c32']:.2f}x | {met(goals['vs_eager_c32'] >= 5)} |",
            f"| c=32 requests/s vs unbatched ONNX Runtime >= 1.5x | {goals['vs_onnxruntime_c32']:.2f}x | {met(goals['vs_onnxruntime_c32'] >= 1.5)} |",
            f"| c=1 p50 <= 1.3x (bare backend call {data['bare_backend_ms']:.1f} ms + HTTP {data['http_ms']:.2f} ms) | "
            f"{p50_1:.1f} ms = {goals['c1_p50_vs_bare_plus_http']:.2f}x | {met(goals['c1_p50_vs_bare_plus_http'] <= 1.3)} |",
            f"| soak: {s['requests']:,} requests at c=32, 1% malformed ({', '.join(soak['malformed'])}): failed good requests = 0 | "
            f"{goals['soak_failed_good']} (statuses {s['statuses']}, {s['rps']:.1f} req/s) | {met(goals['soak_failed_good'] == 0)} |",
            f"| soak: 5xx = 0 | {goals['soak_5xx']} | {met(goals['soak_5xx'] == 0)} |",
            f"| soak: peak RSS at the end within 10% of RSS after warm-up | {soak['peak_rss_end_kib'] / 1024:.0f} MiB vs "
            f"{soak['rss_after_warmup_kib'] / 1024:.0f} MiB = {goals['soak_peak_vs_warmup']:.3f}x (RSS at the end {soak['rss_end_kib'] / 1024:.0f} MiB) "
            f"| {met(goals['soak_peak_vs_warmup'] <= 1.10)} |",
            f"| launch to /readyz (exported run, 3 launches) <= 2 s | median {data['ready']['median_s']:.2f} s "
            f"({launch_s}); libtorch mapped: "
            f"{any(x['libtorch_mapped'] for x in launches) or data['libtorch_in_convnets_server']} | {met(data['ready']['median_s'] <= 2)} |",
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short bursts, 1 repetition, 1,000-request soak")
    p.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 2, quick 1)")
    p.add_argument("--soak", type=int, default=None, help="soak requests (default 10,000, quick 1,000)")
    p.add_argument("--json", type=Path, default=None, help="write the raw figures here")
    p.add_argument("--engine-only", action="store_true", help="only the ONNX Runtime batch/spin table")
    p.add_argument("--peer", choices=["eager", "onnxruntime"], help=argparse.SUPPRESS)
    p.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.peer:
        serve_peer(args.peer, args.run, args.port)
        return 0
    if args.engine_only:
        sys.path.insert(0, str(ROOT / "src"))
        with tempfile.TemporaryDirectory(prefix="convnets-bench-serve-") as tmp:
            sweep = engine_sweep(make_run(Path(tmp)), reps=args.reps or 4)
        if args.json:
            args.json.write_text(json.dumps(sweep, indent=1) + "\n")
        print(engine_markdown(sweep))
        return 0
    data = run(
        args.quick, args.reps or (1 if args.quick else 2), args.soak or (1000 if args.quick else 10_000)
    )
    if args.json:
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    md = markdown(data)
    if args.json:  # again, with the goals markdown() worked out
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
