"""Timing harness shared by the benchmarks.

Every peer (convnets, plain torchvision, Keras/TF, ONNX Runtime, or a convnets variant with one
setting changed) runs in **its own worker process**, so process-wide settings -- the malloc tuning,
thread pools, TensorFlow's runtime -- never leak from one peer into another. The workers stay alive
for the whole comparison and the parent asks them for one repetition each in turn (A, B, C, A, B,
C, ...): on a shared, noisy machine a burst of load then hits every peer alike, which is why results
are reported as **ratios from the same run**; absolute times only describe that run.

A worker is ``python bench/common.py MODULE`` with the peer's spec (JSON) on its first stdin line.
``MODULE.make_peer(spec)`` returns an object with ``warmup()`` and ``rep() -> {"seconds", "items"}``
(and optionally ``meta``, a dict reported with the results). Lines starting with ``@@bench`` on
stdout carry the protocol; anything else a library prints is ignored.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SHARED_DATA = Path(os.environ.get("CONVNETS_SHARED_DATA", ROOT.parent / "shared" / "data"))
_TAG = "@@bench "


@dataclass
class Stat:
    """Median, min and max of one figure over the timed repetitions (warm-up excluded)."""

    median: float
    min: float
    max: float
    n: int
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values), len(values), list(values))

    def to_dict(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n, "values": self.values}

    def fmt(self, digits: int = 1) -> str:
        return f"{self.median:.{digits}f} ({self.min:.{digits}f}-{self.max:.{digits}f})"


@dataclass
class PeerResult:
    """One peer of a comparison: per-rep seconds/items, warm-up time, or the error that stopped it."""

    name: str
    seconds: list[float] = field(default_factory=list)
    items: list[float] = field(default_factory=list)
    warmup_s: float | None = None
    meta: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.seconds)

    def rate(self) -> Stat:
        """Items per second (images/s)."""
        return Stat.of([i / s for i, s in zip(self.items, self.seconds)])

    def per_item_ms(self) -> Stat:
        """Milliseconds per item (latency for batch-1 calls)."""
        return Stat.of([1000 * s / i for i, s in zip(self.items, self.seconds)])

    def to_dict(self) -> dict:
        d = {"name": self.name, "warmup_s": self.warmup_s, "meta": self.meta, "error": self.error}
        if self.ok:
            d.update(
                seconds=self.seconds,
                items=self.items,
                rate=self.rate().to_dict(),
                per_item_ms=self.per_item_ms().to_dict(),
            )
        return d


class Worker:
    """A peer living in its own process; see the module docstring for the protocol."""

    def __init__(
        self,
        name: str,
        module: str,
        spec: dict,
        env: dict[str, str] | None = None,
        setup_timeout: float = 900.0,
    ) -> None:
        self.name = name
        self.result = PeerResult(name)
        self._stderr = tempfile.TemporaryFile(mode="w+")
        full_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), os.environ.get("PYTHONPATH", "")]),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "KERAS_BACKEND": "tensorflow",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(BENCH_DIR / "common.py"), module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=full_env,
            cwd=str(ROOT),
        )
        self.setup_timeout = setup_timeout
        self._send(spec)

    def _send(self, obj) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def _receive(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(_TAG):
                return json.loads(line[len(_TAG) :])
        self._stderr.seek(0)
        tail = self._stderr.read()[-1500:].strip()
        raise RuntimeError(f"worker exited (code {self.proc.wait()}): {tail or 'no error output'}")

    def ready(self) -> bool:
        """Wait for the peer's setup and warm-up; False (with ``result.error``) when it failed or took
        longer than ``setup_timeout`` seconds (the process is then killed)."""
        import threading

        timer = threading.Timer(self.setup_timeout, self.proc.kill)
        timer.start()
        try:
            msg = self._receive()
        except RuntimeError as e:
            self.result.error = (
                f"setup took longer than {self.setup_timeout:.0f}s (killed)"
                if not timer.is_alive()
                else str(e)
            )
            return False
        finally:
            timer.cancel()
        if "error" in msg:
            self.result.error = msg["error"]
            return False
        self.result.warmup_s = msg.get("warmup_s")
        self.result.meta = msg.get("meta", {})
        return True

    def rep(self) -> None:
        if self.result.error:
            return
        try:
            self._send("rep")
            msg = self._receive()
        except (RuntimeError, BrokenPipeError) as e:
            self.result.error = str(e)
            return
        if "error" in msg:
            self.result.error = msg["error"]
            return
        self.result.seconds.append(msg["seconds"])
        self.result.items.append(msg["items"])
        if "meta" in msg:  # per-repetition details (e.g. a training run's epochs)
            self.result.meta.setdefault("reps", []).append(msg["meta"])

    def close(self) -> None:
        try:
            self._send("quit")
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - a dead or stuck worker is killed below
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def compare(
    peers: dict[str, tuple[str, dict, dict | None]],
    reps: int,
    log=print,
    setup_timeout: float = 900.0,
    settle_s: float = 0.3,
) -> dict[str, PeerResult]:
    """Run each peer ``(module, spec, env)`` in its own process, warm them up one after another (so the
    warm-up times are not inflated by each other), then time ``reps`` interleaved repetitions.

    ``settle_s`` pauses before each repetition: thread pools (OpenMP, ONNX Runtime) spin-wait for a
    while after their last call, and on 2 cores the previous peer's spinning threads slowed the next
    peer's first calls (a batch-1 ONNX Runtime peer measured 0.70x of itself when timed right after
    another ORT process, 0.94x with one thread, where there is no pool to spin)."""
    workers: list[Worker] = []
    try:
        for name, (module, spec, env) in peers.items():
            worker = Worker(name, module, spec, env, setup_timeout=setup_timeout)
            t0 = time.perf_counter()
            ok = worker.ready()
            log(
                f"    {name}: {'ready' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f}s"
                + ("" if ok else f" -- {worker.result.error.splitlines()[-1][:200]}")
            )
            workers.append(worker)
        for _ in range(reps):
            for worker in workers:
                time.sleep(settle_s)
                worker.rep()
    finally:
        for worker in workers:
            worker.close()
    return {w.name: w.result for w in workers}


def ratio(a: PeerResult | None, b: PeerResult | None, higher_is_better: bool = True) -> float | None:
    """How many times better ``a`` is than ``b`` (median images/s ratio); None when either failed."""
    if a is None or b is None or not a.ok or not b.ok:
        return None
    ra, rb = a.rate().median, b.rate().median
    return ra / rb if higher_is_better else rb / ra


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def cell(result: PeerResult | None, kind: str = "rate", digits: int = 1) -> str:
    """Markdown table cell: ``median (min-max)`` or the reason the peer has no number."""
    if result is None:
        return "not run"
    if not result.ok:
        first = (result.error or "failed").strip().splitlines()
        return f"failed: {first[-1][:80] if first else ''}"
    stat = result.rate() if kind == "rate" else result.per_item_ms()
    return stat.fmt(digits)


# --- machine description ---------------------------------------------------------------------


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - not installed
        return None


def describe_machine() -> dict:
    """CPU (runtime.describe_cpu), library versions, and the load average as a noise indicator."""
    from convnets.base.runtime import describe_cpu

    info = describe_cpu()
    info.update(
        python=platform.python_version(),
        torchvision=_version("torchvision"),
        onnxruntime=_version("onnxruntime"),
        onnx=_version("onnx"),
        tensorflow=_version("tensorflow-cpu") or _version("tensorflow"),
        keras=_version("keras"),
        loadavg_1m=round(os.getloadavg()[0], 2),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    return info


def matmul_peaks(size: int = 2048, reps: int = 5) -> dict[str, Stat]:
    """Measured fp32 GEMM rate (GFLOP/s) of this process through each of torch's two GEMM libraries.

    ``torch.mm`` goes to the BLAS (MKL), the convolutions to oneDNN. They differ by CPU: on an AMD
    EPYC with AVX-512 MKL's path reached ~205 GFLOP/s and oneDNN ~440 on the same (size x size) @
    (size x size) product, so a peak from ``torch.mm`` alone would let conv layers read as > 100%.
    The oneDNN figure is that product as a 1x1 convolution (size channels in and out, size pixels).
    """
    import torch
    import torch.nn.functional as F

    from convnets.base.runtime import tune_malloc

    tune_malloc()
    a, b = torch.randn(size, size), torch.randn(size, size)
    h = 32 if size >= 1024 else 16
    x, w = torch.randn(1, size, h, size // h), torch.randn(size, size, 1, 1)
    kernels = {"torch.mm (BLAS)": lambda: a @ b, "1x1 conv (oneDNN)": lambda: F.conv2d(x, w)}
    rates: dict[str, list[float]] = {k: [] for k in kernels}
    for f in kernels.values():
        for _ in range(2):
            f()
    for _ in range(reps):  # interleaved, like the peers
        for name, f in kernels.items():
            n = 3
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            rates[name].append(n * 2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return {k: Stat.of(v) for k, v in rates.items()}


def matmul_peak(size: int = 2048, reps: int = 5, log=print) -> Stat:
    """The machine's fp32 GEMM ceiling: per repetition, the faster of the BLAS and oneDNN."""
    peaks = list(matmul_peaks(size, reps).values())
    return Stat.of([max(vals) for vals in zip(*(p.values for p in peaks))])


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# --- worker side -------------------------------------------------------------------------------


def _emit(obj: dict) -> None:
    sys.stdout.write(_TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _worker_main(module_name: str) -> None:
    spec = json.loads(sys.stdin.readline())
    try:
        module = importlib.import_module(module_name)
        t0 = time.perf_counter()
        peer = module.make_peer(spec)
        peer.warmup()
        _emit({"warmup_s": time.perf_counter() - t0, "meta": getattr(peer, "meta", {})})
    except BaseException:  # noqa: BLE001 - report any failure (ImportError of an optional peer, OOM...)
        _emit({"error": traceback.format_exc(limit=3)})
        return
    for line in sys.stdin:
        if json.loads(line) != "rep":
            break
        try:
            _emit(peer.rep())
        except BaseException:  # noqa: BLE001
            _emit({"error": traceback.format_exc(limit=3)})
            return


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    _worker_main(sys.argv[1])
