"""Which engine runs a run's export: one named (``make_engine``), or ``auto``, the fastest measured here.

``auto`` times the installed engines that passed their check on the user's own CPU, once per run folder
and machine (the figures stay in ``export.json``), and runs the fastest: which one wins depends on the
CPU and the model (bench/RESULTS.md, "Inference backends"), so it is measured, not assumed from the
CPU's name or flags. Small jobs run on ONNX Runtime fp32, which opens fastest.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ...base import runtime
from ...base.choices import EXPORTED_BACKENDS
from ...base.runs import INT8_ONNX_FILE, ONNX_FILE, OPENVINO_CACHE_DIR, RunConfig
from ..export_record import EngineError, ExportInfo, file_sha256
from .check import check_engine, check_pixels, engine_key
from .engine import Engine, thread_count
from .onnxruntime_engine import OrtEngine
from .openvino_engine import OpenVinoEngine, openvino_available

# auto times the installed engines on the user's CPU once per run folder (speeds in export.json):
# which one is fastest depends on the CPU (OpenVINO bf16 8.8x ONNX Runtime fp32 on an AMX Xeon,
# bench/RESULTS.md "Inference backends") and on the model, so it is measured, never assumed.
SPEED_BATCH = 8
SPEED_ROUNDS = 3
# Under auto, a job known to be smaller than this runs on ONNX Runtime fp32: importing OpenVINO and
# loading its compiled graph took ~0.3 s more than opening an ONNX Runtime session (cache warm,
# mobilenet_v2), more than a faster engine saves on a few images.
AUTO_MIN_IMAGES = 32


def int8_runner_order(weights: str = "s8") -> tuple[str, ...]:
    """Which library runs ``model.int8.onnx``: OpenVINO was 2-4x faster than ONNX Runtime on the same
    int8 file on the AMX Xeon (bench/RESULTS.md), so OpenVINO when installed; u8 weights (U8U8, CPUs
    without VNNI) only ONNX Runtime, whose kernel widens them before multiplying (OpenVINO's oneDNN
    forced down to AVX2 could not compile them, and lost 1.5 points of top-1 where it could)."""
    if weights == "u8" or not openvino_available():
        return ("onnxruntime",)
    return ("openvino", "onnxruntime")


def make_engine(
    run_dir: str | os.PathLike,
    backend: str,
    *,
    threads: int | None = None,
    precision: str | None = None,
    spin: bool = True,
    features: bool = False,
) -> Engine:
    """The engine ``backend`` (not ``auto``) on the run's fresh export; :class:`EngineError` if unusable.
    ``spin=False``: ONNX Runtime's threads sleep between operators instead of busy-waiting (servers).
    ``features=True``: the engine also gives the penultimate features (``run_with_features``)."""
    run_dir = Path(run_dir)
    cache = run_dir / OPENVINO_CACHE_DIR
    if backend == "onnxruntime":
        return OrtEngine(run_dir / ONNX_FILE, threads, spin=spin, features=features)
    if backend == "openvino":
        return OpenVinoEngine(run_dir / ONNX_FILE, threads, precision, cache_dir=cache, features=features)
    if backend == "int8":
        info = ExportInfo.read(run_dir)
        path = run_dir / INT8_ONNX_FILE
        int8 = info.int8 if info is not None else None
        if int8 is not None and int8.weights_sha256 != info.weights_sha256:
            raise EngineError(f"{path} is from older weights: run `convnets export {run_dir} --int8` again")
        if int8 is not None and not int8.accepted:
            raise EngineError(
                f"the int8 model was refused: validation top-1 changed by {int8.delta_points:+.2f} points "
                f"(allowed -{int8.max_drop:g})"
            )
        if int8 is None or not path.is_file():
            raise EngineError(f"{run_dir} has no int8 model: run `convnets export {run_dir} --int8` first")
        if int8.int8_sha256 is None or int8.int8_sha256 != file_sha256(path):
            raise EngineError(
                f"{path} is not the file `convnets export --int8` wrote and checked (its sha256 differs "
                f"from export.json's): run `convnets export {run_dir} --int8` again"
            )
        if int8_runner_order(int8.weights)[0] == "openvino":
            return OpenVinoEngine(path, threads, precision, name="int8", cache_dir=cache, features=features)
        return OrtEngine(path, threads, name="int8", spin=spin, features=features)
    raise EngineError(
        f"unknown exported-model backend {backend!r}; choose from {', '.join(EXPORTED_BACKENDS)}"
    )


def auto_candidates(run_dir: str | os.PathLike) -> list[str]:
    """The exported backends ``auto`` chooses among on this machine: an accepted, fresh int8 model and
    OpenVINO where installed, and always ONNX Runtime fp32 (last: the reference, and the fallback)."""
    info = ExportInfo.read(run_dir)
    out = []
    int8 = info.int8 if info is not None else None
    if (
        int8 is not None
        and int8.accepted
        and int8.weights_sha256 == info.weights_sha256
        and (Path(run_dir) / INT8_ONNX_FILE).is_file()
        and int8.int8_sha256 is not None
    ):
        out.append("int8")
    if openvino_available():
        out.append("openvino")
    return [*out, "onnxruntime"]


def machine_key(threads: int | None = None) -> str:
    """What an engine's speed depends on besides the model: the CPU (model name and instruction sets,
    so a hypervisor's bare "AMD EPYC" on AVX2 and on AVX-512 parts differ) and the thread count."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    text = f"{model}|{' '.join(sorted(runtime.cpu_flags()))}|{thread_count(threads)}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def time_engines(engines: Sequence[Engine], pixels: np.ndarray, rounds: int = SPEED_ROUNDS) -> list[float]:
    """Milliseconds per image of each engine on ``pixels`` (one batch): a warm-up call each, then
    ``rounds`` rounds that call every engine once in turn (so a busy moment hits all alike); the median."""
    for engine in engines:
        engine.run(pixels)
    times: list[list[float]] = [[] for _ in engines]
    for _ in range(rounds):
        for i, engine in enumerate(engines):
            t0 = time.perf_counter()
            engine.run(pixels)
            times[i].append(time.perf_counter() - t0)
    return [1000 * float(np.median(t)) / len(pixels) for t in times]


def open_engine(
    run_dir: str | os.PathLike,
    backend: str = "auto",
    *,
    threads: int | None = None,
    config: RunConfig | None = None,
    images: int | None = None,
    spin: bool = True,
    features: bool = False,
    log: Callable[[str], None] | None = None,
) -> Engine:
    """The engine for ``backend`` on the run's (fresh) export. ``auto``: the fastest, as timed on this
    machine, of :func:`auto_candidates` that open and pass their check against ONNX Runtime fp32 (the
    int8 model passed its accuracy gate when written); timed once per run folder and machine, the
    figures kept in export.json. A job of fewer than :data:`AUTO_MIN_IMAGES` ``images`` runs on ONNX
    Runtime, which opens fastest. An engine ``auto`` passes over is named on ``log`` with the reason."""
    if backend != "auto":
        return make_engine(run_dir, backend, threads=threads, spin=spin, features=features)
    names = auto_candidates(run_dir)
    if (images is not None and images < AUTO_MIN_IMAGES) or names == ["onnxruntime"]:
        return make_engine(run_dir, "onnxruntime", threads=threads, spin=spin, features=features)
    say = log or (lambda _msg: None)
    engines: dict[str, Engine] = {}
    failure: EngineError | None = None
    for name in names:
        try:
            engine = make_engine(run_dir, name, threads=threads, spin=spin, features=features)
            check = None if name in ("int8", "onnxruntime") else check_engine(run_dir, engine, config)
            if check is not None and not check.passed:
                say(
                    f"not using {engine.description}: against ONNX Runtime fp32 top-1 agreed on "
                    f"{check.top1_agreement:.0%}, probabilities moved up to {check.max_prob_diff:.3f}"
                )
                continue
        except Exception as e:  # noqa: BLE001 - an engine that cannot compile this graph: the next one
            if not isinstance(e, EngineError):
                say(f"not using {name}: {e}")
            failure = e if isinstance(e, EngineError) else EngineError(f"{name}: {e}")
            continue
        engines[name] = engine
    if not engines:  # not even ONNX Runtime, the last: its reason, as when it is the only candidate
        raise failure
    if len(engines) == 1:
        return next(iter(engines.values()))
    machine = machine_key(threads)
    info = ExportInfo.read(run_dir)
    known = info.speeds.get(machine, {}) if info is not None else {}
    keys = {name: engine_key(e) for name, e in engines.items()}
    if not all(k in known for k in keys.values()):
        config = config or RunConfig.read(run_dir)
        pixels, _ = check_pixels(config, SPEED_BATCH)
        timed = time_engines(list(engines.values()), pixels)
        known = {**known, **{keys[n]: round(t, 4) for n, t in zip(engines, timed)}}
        if info is not None:
            info.speeds[machine] = known
            try:
                info.write(run_dir)
            except OSError:  # a read-only run folder: measured again next time
                pass
        say("timed on this CPU (ms per image): " + ", ".join(f"{k} {t:.3g}" for k, t in known.items()))
    fastest = min(engines, key=lambda n: known[keys[n]])
    return engines[fastest]
