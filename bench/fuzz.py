"""Longer fuzzing of hostile input than the suite's (tests/test_fuzz.py), with the same strategies
(tests/fuzz_strategies.py) and random seeds, bounded in examples and seconds, on loopback only.

    .venv/bin/python bench/fuzz.py                        # loader + server in-process, 300 examples each
    .venv/bin/python bench/fuzz.py --live                 # the server as `convnets serve` on 127.0.0.1
    .venv/bin/python bench/fuzz.py --extreme --examples 50  # + PNG headers of extreme aspect (80000 x 1)

Targets:

* ``loader``: ``data.images.read_image`` at 160 px, center-crop (the MobileNetV2 run of issue #25) on
  noise, real images in random formats/modes (damaged or not) and PNGs whose headers lie about their size;
  the property: the model's view or an ``ImageReadError``; also the time and the peak-RSS rise per image
  (``ru_maxrss`` before and after each), checked against ``--max-mb`` / ``--max-seconds``.
* ``server``: POST /v1/predict with random bodies, content types, multipart shapes and queries, on a
  tiny LeNet-5 run (center-crop at 32 px); the property: 200 with a row per image, or a 4xx with a JSON
  error, never a 5xx or a dropped connection, and /readyz still 200 after. ``--live`` runs the server
  as a child process on a 127.0.0.1 port (its peak RSS, VmHWM, read from /proc), else in-process.

While the loader is fuzzed the process's address space is capped (``--memory-limit-gb``, default 4), so
an image that would take more fails with MemoryError here (reported) instead of taking the shared
machine down.
Exit code 1 when a property or a budget failed. ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import resource
import sys
import tempfile
import time
import urllib.parse
import warnings
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # fuzz_strategies, serve_helpers

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_peak_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Tally:
    """Counts, failures (first few kept), the slowest example and the largest memory rise."""

    def __init__(self, name: str):
        self.name, self.n, self.outcomes = name, 0, {}
        self.failures: list[str] = []
        self.slowest = (0.0, "")
        self.largest_rise = (0.0, "")

    def add(self, outcome: str, seconds: float, rise_mb: float, what: str, failure: str | None = None):
        self.n += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if seconds > self.slowest[0]:
            self.slowest = (seconds, what)
        if rise_mb > self.largest_rise[0]:
            self.largest_rise = (rise_mb, what)
        if failure is not None:
            self.failures.append(failure[:300])

    def to_dict(self) -> dict:
        return {
            "examples": self.n,
            "outcomes": self.outcomes,
            "failures": self.failures[:20],
            "failure_count": len(self.failures),
            "slowest_s": round(self.slowest[0], 3),
            "slowest_example": self.slowest[1],
            "largest_rss_rise_mb": round(self.largest_rise[0], 1),
            "largest_rise_example": self.largest_rise[1],
        }


def describe_bytes(data: bytes) -> str:
    from PIL import Image

    head = data[:8]
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            return f"{im.format} {im.mode} {im.size[0]}x{im.size[1]} ({len(data)} B)"
    except Exception:  # noqa: BLE001 - any undecodable bytes
        return f"{len(data)} B starting {head!r}"


def run_hypothesis(strategy, check, examples: int, deadline: float, rng_seed: int) -> None:
    """``check(example)`` on ``examples`` drawn examples (generation only: failures are recorded by
    ``check``, not shrunk), stopping early at ``deadline`` (time.monotonic)."""

    @seed(rng_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def fuzz(example):
        if time.monotonic() < deadline:
            check(example)

    fuzz()


def fuzz_loader(args, deadline: float) -> Tally:
    from fuzz_strategies import image_files

    from convnets.data.decode import ImageReadError
    from convnets.data.images import read_image

    tally = Tally("loader")
    size = (args.image_size, args.image_size)

    def check(data: bytes) -> None:
        before, t0 = rss_peak_mb(), time.perf_counter()
        failure = None
        try:
            view = read_image(data, size, 3, "center-crop")
            outcome = "view"
            if view.shape != (*size, 3) or view.dtype != np.uint8:
                failure = f"wrong view {view.shape} {view.dtype} for {describe_bytes(data)}"
        except ImageReadError:
            outcome = "ImageReadError"
        except BaseException as e:  # noqa: BLE001 - the property: nothing else may escape
            outcome = type(e).__name__
            failure = f"{type(e).__name__}: {e} for {describe_bytes(data)}"
        seconds, rise = time.perf_counter() - t0, rss_peak_mb() - before
        if failure is None and (rise > args.max_mb or seconds > args.max_seconds):
            failure = f"over budget: {rise:.0f} MB, {seconds:.2f} s for {describe_bytes(data)}"
        tally.add(outcome, seconds, rise, describe_bytes(data), failure)

    run_hypothesis(image_files(args.extreme), check, args.examples, deadline, args.seed)
    return tally


def make_server_run(folder: Path) -> Path:
    from serve_helpers import make_run

    from convnets.base.runs import RunConfig
    from convnets.deploy.engines import ExportedModel

    run = make_run(folder / "run")
    config = RunConfig.read(run)
    config.resize = "center-crop"  # the mode where a resize multiplies an extreme aspect's pixels
    config.write(run)
    ExportedModel.open(run)
    return run


def fuzz_server(args, deadline: float, folder: Path) -> Tally:
    from fuzz_strategies import requests

    tally = Tally("server")
    run = make_server_run(folder)
    limits = ["--max-upload-mb", "0.5", "--max-files", "8", "--max-batch", "8"]
    if args.live:
        from serve_helpers import free_port, start_server

        port = free_port()
        proc = start_server(run, port, *limits, "--no-access-log", log=folder / "server.log")

        def post(request: dict) -> tuple[int, bytes]:
            query = urllib.parse.urlencode(request["params"])  # as httpx encodes it in-process
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("POST", request["url"] + ("?" + query if query else ""), request["content"],
                             request["headers"])  # fmt: skip
                r = conn.getresponse()
                return r.status, r.read()
            finally:
                conn.close()

        def ready() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/readyz")
            return conn.getresponse().status

        def peak() -> float:
            return child_peak_mb(proc.pid)
    else:
        from starlette.testclient import TestClient

        from convnets.serve import create_app

        client = TestClient(
            create_app(run, max_upload_mb=0.5, max_files=8, max_batch=8), raise_server_exceptions=False
        )
        client.__enter__()

        def post(request: dict) -> tuple[int, bytes]:
            r = client.post(**request)
            return r.status_code, r.content

        def ready() -> int:
            return client.get("/readyz").status_code

        proc, peak = None, rss_peak_mb

    def check(request: dict) -> None:
        what = f"{request['headers'].get('content-type', '-')!r} {len(request['content'])} B"
        before, t0 = peak(), time.perf_counter()
        failure = None
        try:
            status, body = post(request)
            outcome = str(status)
            if status not in (200, 400, 413, 415):
                failure = f"HTTP {status} for {what}: {body[:200]!r}"
            else:
                data = json.loads(body)
                if status == 200 and not all(r.get("top") or r.get("error") for r in data["predictions"]):
                    failure = f"a row without top or error for {what}"
        except Exception as e:  # noqa: BLE001 - a dropped connection, a body that is not JSON
            outcome = type(e).__name__
            failure = f"{type(e).__name__}: {e} for {what}"
        seconds, rise = time.perf_counter() - t0, peak() - before
        if failure is None and (rise > args.max_mb or seconds > args.max_seconds):
            failure = f"over budget: {rise:.0f} MB, {seconds:.2f} s for {what}"
        tally.add(outcome, seconds, rise, what, failure)

    try:
        run_hypothesis(requests(args.extreme), check, args.examples, deadline, args.seed)
        if ready() != 200:
            tally.failures.append("/readyz is not 200 after the fuzzing")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        else:
            client.__exit__(None, None, None)
    return tally


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=("loader", "server", "both"), default="both")
    p.add_argument("--examples", type=int, default=300, help="examples per target (default 300)")
    p.add_argument("--seconds", type=float, default=120, help="time limit per target (default 120)")
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    p.add_argument("--extreme", action="store_true", help="also PNG headers of extreme aspect (80000 x 1)")
    p.add_argument("--live", action="store_true", help="fuzz `convnets serve` on a 127.0.0.1 port")
    p.add_argument("--image-size", type=int, default=160, help="the loader's model input (default 160)")
    p.add_argument("--max-mb", type=float, default=200, help="budget: peak-RSS rise per example (MB)")
    p.add_argument("--max-seconds", type=float, default=1.0, help="budget: seconds per example")
    p.add_argument("--memory-limit-gb", type=float, default=4.0, help="address-space cap for this process")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)
    args.seed = args.seed if args.seed is not None else random.randrange(2**32)
    warnings.filterwarnings("ignore", module="PIL")  # Pillow's notes on the corrupt files it is fed
    print(f"fuzz: seed {args.seed}; {args.examples} examples / {args.seconds:g} s per target", flush=True)

    results = {"seed": args.seed, "cpu": cpu_name(), "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    targets = ["loader", "server"] if args.target == "both" else [args.target]
    with tempfile.TemporaryDirectory(prefix="convnets-fuzz-") as tmp:
        for target in targets:
            deadline = time.monotonic() + args.seconds
            t0 = time.perf_counter()
            tally = (
                fuzz_loader(args, deadline) if target == "loader" else fuzz_server(args, deadline, Path(tmp))
            )
            results[target] = {**tally.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
            r = results[target]
            print(
                f"{target}: {r['examples']} examples in {r['seconds']} s {r['outcomes']}; slowest "
                f"{r['slowest_s']} s ({r['slowest_example']}); largest RSS rise "
                f"{r['largest_rss_rise_mb']} MB ({r['largest_rise_example']}); "
                f"{r['failure_count']} failure(s)",
                flush=True,
            )
            for failure in r["failures"][:10]:
                print(f"  FAIL {failure}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if any(results[t]["failure_count"] for t in targets) else 0


@contextlib.contextmanager
def address_space_cap(gb: float):
    """RLIMIT_AS at ``gb`` while the loader runs (numpy and Pillow only: a cap torch would not fit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if gb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (int(gb * 2**30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return os.uname().machine


if __name__ == "__main__":
    sys.exit(main())
