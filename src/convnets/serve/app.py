"""The HTTP server around a run's exported model: routes, upload limits, errors, API key.

``create_app(run_dir, ...)`` returns a Starlette (ASGI) app. Starlette rather than FastAPI on top of it:
five fixed routes need no request models, and FastAPI's import (pydantic models) alone took 0.4-0.5 s
of the start-up budget on the 2-core test machine. The model is the run's ``model.onnx`` on
ONNX Runtime (:class:`convnets.deploy.engines.ExportedModel`), so nothing here imports torch once the run
has been exported. Requests are decoded in worker threads and their images run through one
:class:`MicroBatcher`, so concurrent requests share batches and the event loop never runs inference.

Every bad input is answered with a JSON ``{"error": ...}`` and a 4xx status, never a 5xx: an unusable
file among good ones gets its error row (like ``predict --json``) and the others are answered.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from ..base.predictions import Prediction, top_k
from ..base.runs import RunConfig, weights_path
from ..data.decode import ImageReadError
from ..deploy.engines import EngineError, ExportedModel, choose_engine
from ..trust.fit import RunTrust
from .batching import MicroBatcher, choose_batch_limit
from .model_info import ModelInfo, read_cost, start_cost_job, write_cost

_log = logging.getLogger("convnets.serve")

RAW_BODY_TYPES = ("application/octet-stream",)  # besides image/*
# Pillow's message names the in-memory stream ("<_io.BytesIO object at 0x...>"): say what it means.
_UNIDENTIFIED = re.compile(r"cannot identify image file <_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class ApiError(Exception):
    """A request the server refuses: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass(frozen=True)
class ServeOptions:
    backend: str = "auto"
    max_batch: int | None = None  # None: chosen at start-up by tune_batch (up to AUTO_BATCH_CEILING)
    batch_wait_ms: float = 5.0
    max_upload_mb: float = 20.0
    max_files: int = 64
    top_k: int = 5
    api_key: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_files", "top_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be at least 0, got {self.batch_wait_ms}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key is empty")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def open_model(
    run_dir: str | os.PathLike,
    backend: str = "auto",
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportedModel:
    """The run's exported model on ``backend`` (exported first, with torch, if it never was); with
    the penultimate features as a second output when the run has an out-of-distribution detector
    (served without the ``ood`` field where the graph has none: :func:`choose_engine`)."""
    choice = choose_engine(
        run_dir,
        backend,
        threads=threads,
        spin=False,  # the server's own threads need the cores between operators
        features=RunConfig.read(run_dir).ood is not None,
        features_optional=True,
        log=log,
    )
    if choice.note:
        _log.warning("convnets serve: %s", choice.note)
    return choice.model


AUTO_BATCH_CEILING = 32  # the most `--max-batch auto` tries


def warm_up(model: ExportedModel, sizes: Sequence[int] = (1, 2)) -> None:
    """Run the engine once per batch size so the first requests don't pay for its set-up."""
    c, h, w = model.config.input_shape
    for n in sizes:
        model.predict_views([np.zeros((h, w, c), np.uint8)] * n)


def tune_batch(model: ExportedModel, ceiling: int = AUTO_BATCH_CEILING) -> tuple[int, dict[int, float]]:
    """``--max-batch auto``: the largest batch that is still cheaper per image on this machine
    (:func:`choose_batch_limit`; best of 3 timed calls per size, after one untimed call)."""
    c, h, w = model.config.input_shape
    view = np.zeros((h, w, c), np.uint8)

    def seconds_for(n: int) -> float:
        views = [view] * n
        model.predict_views(views)  # the first call at a new shape sets up buffers
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            model.predict_views(views)
            best = min(best, time.perf_counter() - start)
        return best

    return choose_batch_limit(seconds_for, ceiling)


class ServedModel:
    """The app's state: the run, the model once loaded, the batcher, and readiness."""

    def __init__(
        self, run_dir: Path, options: ServeOptions, model: ExportedModel | None, say: Callable[[str], None]
    ) -> None:
        self.run_dir, self.options, self.model, self.say = run_dir, options, model, say
        self.config = model.config if model is not None else RunConfig.read(run_dir)
        weights_path(run_dir)  # a clear error now, not on the first request
        # The run's out-of-distribution detector: each answered row gets an ``ood`` field, as in predict.
        self.trust = RunTrust.read(run_dir, self.config) if self.config.ood is not None else None
        self.batcher: MicroBatcher[np.ndarray, tuple[np.ndarray, np.ndarray | None]] = MicroBatcher(
            self._run_batch, max_batch=options.max_batch or 1, wait_ms=options.batch_wait_ms
        )
        self.batch_timings: dict[int, float] = {}  # seconds per image by batch size (auto only)
        self.ready = asyncio.Event()
        self.load_error: str | None = None
        self.cost = read_cost(run_dir, self.config)
        self.cost_job = None

    @property
    def backend(self) -> str:
        return self.model.backend if self.model is not None else self.options.backend

    def _run_batch(self, views: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(probabilities, features or None) per view."""
        if self.trust is not None:
            try:
                probs, features = self.model.predict_views_with_features(views)
                return list(zip(probs, features))
            except EngineError:  # opened without features (a model passed in): answer without the field
                pass
        return [(p, None) for p in self.model.predict_views(views)]

    def load(self) -> None:
        """Open (exporting once if needed) and warm up the model; runs in a worker thread."""
        if self.model is None:
            self.model = open_model(self.run_dir, self.options.backend, self.options.threads, self.say)
        warm_up(self.model)
        if self.options.max_batch is None:
            self.batcher.max_batch, self.batch_timings = tune_batch(self.model)
            self.say(
                f"convnets serve: batches of up to {self.batcher.max_batch} images, the largest that was "
                "cheaper per image here (ms per image by batch size: "
                + ", ".join(f"{n}: {1000 * t:.2f}" for n, t in self.batch_timings.items())
                + "; --max-batch N sets it)"
            )
        if self.cost is None and "torch" in sys.modules:  # exported just now: torch is loaded anyway
            try:
                self.cost = write_cost(self.run_dir)
            except Exception as e:  # the cost is a description; serving goes on without it
                _log.warning("convnets serve: params/multiply-adds not computed: %s", e)

    async def start(self) -> None:
        await self.batcher.start()
        try:
            await anyio.to_thread.run_sync(self.load)
        except Exception as e:  # reported by /readyz and every /v1/predict, the process stays up
            self.load_error = f"{type(e).__name__}: {e}"
            _log.error("convnets serve: the model could not be loaded: %s", self.load_error)
            return
        self.ready.set()
        if self.cost is None:
            self.cost_job = start_cost_job(self.run_dir)

    async def stop(self) -> None:
        await self.batcher.stop()
        if self.cost_job is not None and self.cost_job.poll() is None:
            self.cost_job.terminate()

    def info(self) -> ModelInfo:
        if self.cost is None:
            self.cost = read_cost(self.run_dir, self.config)  # written by the cost job meanwhile?
        return ModelInfo.of(self.run_dir, self.config, self.backend, self.cost)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        if not self.ready.is_set() and self.load_error is None:
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except TimeoutError:
                raise ApiError(
                    503, "the model is still loading; retry shortly", {"Retry-After": "1"}
                ) from None
        if self.load_error is not None:
            raise ApiError(503, f"the model could not be loaded: {self.load_error}")

    def _decode(self, files: Sequence[tuple[str, bytes]]) -> list[tuple[Prediction, np.ndarray | None]]:
        out = []
        for name, data in files:
            try:
                out.append((Prediction(name), self.model.read(data)))
            except ImageReadError as e:
                error = _UNIDENTIFIED.sub("not an image format Pillow can read", str(e))
                out.append((Prediction(name, error=error), None))
        return out

    async def decode(self, files: Sequence[tuple[str, bytes]]) -> list[tuple[Prediction, np.ndarray | None]]:
        """Rows (with the error for an unusable file) and views, decoded in a worker thread."""
        return await anyio.to_thread.run_sync(self._decode, files)

    async def predict(self, decoded: list[tuple[Prediction, np.ndarray | None]], k: int) -> list[Prediction]:
        good = [(row, view) for row, view in decoded if view is not None]
        if good:
            results = await self.batcher.submit([view for _, view in good])
            probs = np.stack([p for p, _ in results])
            for (row, _), classes in zip(good, top_k(probs, self.config.class_names, k)):
                row.top = classes
            if self.trust is not None and all(f is not None for _, f in results):
                self.trust.annotate([row for row, _ in good], np.stack([f for _, f in results]))
        return [row for row, _ in decoded]


# --- reading a request ---------------------------------------------------------------------------


async def read_body(request: Request, limit: int, limit_text: str) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload of {int(declared)} bytes is larger than the limit ({limit_text})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"upload is larger than the limit ({limit_text})")
    return bytes(body)


async def read_uploads(request: Request, options: ServeOptions) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` per uploaded file: multipart file fields, or the raw body as one image.

    Names are labels only (the form's file name); nothing a client sends is opened as a path.
    """
    limit_text = f"--max-upload-mb {options.max_upload_mb:g}"
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if (
        mime
        and mime != "multipart/form-data"
        and not mime.startswith("image/")
        and mime not in RAW_BODY_TYPES
    ):
        raise ApiError(
            415,
            f"unsupported Content-Type {mime!r}: send images as multipart/form-data file fields, "
            "or one image as the body (image/*, application/octet-stream)",
        )
    body = await read_body(request, options.max_upload_bytes, limit_text)
    if not body:
        raise ApiError(400, "empty request body: send one or more images")
    if mime != "multipart/form-data":
        return [(request.query_params.get("name") or "body", body)]

    async def replay():
        yield body

    parser = MultiPartParser(
        request.headers, replay(), max_files=options.max_files, max_fields=100, max_part_size=1024 * 1024
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        too_many_files = "files" in e.message.lower()
        raise ApiError(
            413 if too_many_files else 400,
            f"too many files in one request (at most {options.max_files})"
            if too_many_files
            else f"malformed multipart body: {e.message}",
        ) from None
    try:
        uploads = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
        files = [(upload.filename or key, await upload.read()) for key, upload in uploads]
    finally:
        await form.close()
    if not files:
        raise ApiError(400, "no files in the form: send images as file fields, e.g. curl -F file=@cat.jpg")
    return files


# --- the app -------------------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _key_check(api_key: str | None) -> Callable[[Request], None]:
    expected = api_key.encode() if api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("x-api-key", "")
        auth = request.headers.get("authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), expected):  # constant time
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                {"WWW-Authenticate": "Bearer"},
            )

    return check


def index_html() -> str:
    return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(
    run_dir: str | os.PathLike,
    *,
    backend: str = "auto",
    max_batch: int | None = None,
    batch_wait_ms: float = 5.0,
    max_upload_mb: float = 20.0,
    max_files: int = 64,
    top_k: int = 5,
    api_key: str | None = None,
    threads: int | None = None,
    model: ExportedModel | None = None,
    log: Callable[[str], None] | None = None,
) -> Starlette:
    """An ASGI app serving the run in ``run_dir`` (mount it, or run it with uvicorn).

    The model loads (and, the first time, exports) in a worker thread when the app starts: ``/healthz``
    answers at once, ``/readyz`` once the model is warmed up, and ``/v1/predict`` waits for it.
    ``max_batch=None`` picks the batch size at start-up: the largest (up to 32) that is still cheaper
    per image on this machine (:func:`tune_batch`). ``log`` gets the start-up messages (export, batch
    size). Pass ``model`` (an opened :class:`ExportedModel`) to skip loading. Raises ``RunFolderError``
    at once for a folder that is not a run.
    """
    options = ServeOptions(
        backend, max_batch, batch_wait_ms, max_upload_mb, max_files, top_k, api_key, threads
    )
    served = ServedModel(Path(run_dir), options, model, log or _log.info)
    page = index_html()
    check_key = _key_check(api_key)

    @asynccontextmanager
    async def lifespan(_app: Starlette):
        await served.start()
        try:
            yield
        finally:
            await served.stop()  # uvicorn has finished the requests in flight by now

    async def index(_request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> JSONResponse:
        if served.ready.is_set():
            return JSONResponse({"status": "ready", "model": served.config.model, "backend": served.backend})
        if served.load_error is not None:
            return JSONResponse({"status": "failed", "error": served.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})

    async def model_info(request: Request) -> JSONResponse:
        check_key(request)
        info = served.info().to_dict()
        stats = served.batcher.stats
        info["batching"] = {
            "max_batch": served.batcher.max_batch,
            "chosen": "auto" if options.max_batch is None else "--max-batch",
            "ms_per_image_by_batch": {n: round(1000 * t, 3) for n, t in served.batch_timings.items()},
            "wait_ms": options.batch_wait_ms,
            "engine_calls": stats.calls,
            "images": stats.rows,
            "mean_batch": round(stats.mean_batch, 2),
        }
        info["limits"] = {"max_upload_mb": options.max_upload_mb, "max_files": options.max_files}
        return JSONResponse(info)

    async def predict(request: Request) -> JSONResponse:
        check_key(request)
        k = _top_k_param(request, options.top_k)
        await served.wait_ready()
        # While this request is read and decoded, a batch being gathered may wait (--batch-wait-ms) for it.
        with served.batcher.incoming():
            files = await read_uploads(request, options)
            views = await served.decode(files)
        rows = await served.predict(views, k)
        body = {"model": served.config.model, "predictions": [row.to_dict() for row in rows]}
        if all(row.error is not None for row in rows):
            detail = rows[0].error if len(rows) == 1 else "none of the files is a usable image"
            return JSONResponse({"error": detail, **body}, status_code=400)
        return JSONResponse(body)

    async def api_error(_request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, ApiError)
        return _error(e.status, e.message, e.headers)

    async def http_error(_request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, HTTPException)
        return _error(e.status_code, str(e.detail), e.headers)

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/v1/model", model_info, methods=["GET"]),
            Route("/v1/predict", predict, methods=["POST"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.served = served
    return app


def _top_k_param(request: Request, default: int) -> int:
    raw = request.query_params.get("top_k")
    if raw is None or raw == "":
        return default
    try:
        k = int(raw)
    except ValueError:
        k = 0
    if k < 1:
        raise ApiError(400, f"top_k must be a whole number of at least 1, got {raw!r}")
    return k
