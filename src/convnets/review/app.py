"""The review page's server: doctor's findings, thumbnails of DATA, and actions that move files.

``create_app(data, findings, ...)`` returns a Starlette app. Reading is ``GET /api/state`` (the items,
the classes, where each moved file is now) and ``GET /api/thumb?path=REL`` (a small JPEG of one image
of DATA or its quarantine). Changing is ``POST /api/action`` (``{"action": "keep" | "relabel" |
"quarantine" | "keep-one", "path", "to", "group"}``) and ``POST /api/undo`` (the last action still in
effect); each is a journalled move (:class:`~convnets.review.journal.Journal`).

Care taken, as in ``convnets serve``: bodies over the limit are refused while being read (413), an
optional API key (401), every bad request answered 4xx with ``{"error": ...}``. Beyond it: every
path and class name from the page is checked by :class:`~convnets.review.journal.DataFolder` (no
request reads, moves or creates anything outside DATA and its quarantine), and a request that
changes files must carry the per-session token (made at start, written into the page, sent back in
the ``X-Review-Token`` header; 403 without it), so another page open in the same browser cannot
drive the server: it can send requests to it but cannot read the page to learn the token. On
loopback, requests whose Host header is not a loopback name are refused (DNS rebinding).
"""

from __future__ import annotations

import hmac
import io
import json
import os
import secrets
from collections.abc import Callable
from importlib import resources
from typing import Any

import anyio
from PIL import Image, ImageOps
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..serve.app import ApiError, _key_check, read_body
from .findings import Findings
from .journal import DataFolder, Journal, ReviewError

__all__ = ["TOKEN_HEADER", "create_app"]

TOKEN_HEADER = "X-Review-Token"
THUMB_SIDE = 192
MAX_BODY_BYTES = 256 * 1024  # an action is a few paths: far below this
MAX_IMAGE_PIXELS = 80_000_000  # thumbnails refuse decompression bombs
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_PAGE_CSP = (
    "default-src 'none'; img-src 'self' blob:; connect-src 'self'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def page_html(token: str) -> str:
    text = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
    return text.replace("__REVIEW_TOKEN__", token)


def _thumbnail(path: os.PathLike, name: str) -> bytes:
    """A JPEG of at most THUMB_SIDE pixels a side; ``ReviewError`` (400) for a file that is no image."""

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise ReviewError(f"{name}: {im.width}x{im.height} pixels, too large to show")
            im.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at a reduced scale
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((THUMB_SIDE, THUMB_SIDE))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
            return buf.getvalue()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # Pillow's errors
        raise ReviewError(f"{name}: cannot be read as an image ({e})") from None


def create_app(
    data: str | os.PathLike,
    findings: Findings,
    *,
    api_key: str | None = None,
    token: str | None = None,
    loopback_only: bool = True,
    log: Callable[[str], None] | None = None,
) -> Starlette:
    """The review app for DATA showing ``findings``. ``token``: the per-session token (default: a new
    random one; ``app.state.token``). ``loopback_only``: refuse requests whose Host is not loopback."""
    folder = DataFolder(data)
    journal = Journal(folder, exclusive=True)  # one review per folder at a time
    if journal.recovered and log is not None:
        log(f"convnets review: finished {len(journal.recovered)} step(s) an earlier session had journalled")
    token = token or secrets.token_urlsafe(32)
    page = page_html(token)
    check_key = _key_check(api_key)
    expected_token = token.encode()

    def check_host(request: Request) -> None:
        if not loopback_only:
            return
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if name not in LOOPBACK_HOSTS:
            raise ApiError(403, f"Host {host!r} refused: this server answers loopback names only")

    def check_token(request: Request) -> None:
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), expected_token):
            raise ApiError(403, f"missing or wrong {TOKEN_HEADER}: changes come from the review page only")

    def state() -> dict[str, Any]:
        return {
            "data": str(folder.root),
            "classes": folder.classes(),
            "presplit": bool(folder.split_dirs),
            "findings": findings.to_dict(),
            "where": journal.where(),
            "decisions": journal.decisions(),
            "can_undo": bool(journal.live_steps()),
            "journal": journal.summary(),
        }

    async def index(request: Request) -> HTMLResponse:
        check_host(request)
        return HTMLResponse(page, headers={**_SECURITY_HEADERS, "Content-Security-Policy": _PAGE_CSP})

    async def get_state(request: Request) -> JSONResponse:
        check_host(request)
        check_key(request)
        return JSONResponse(state(), headers=_SECURITY_HEADERS)

    async def thumb(request: Request) -> Response:
        check_host(request)
        check_key(request)
        name = request.query_params.get("path")
        path = folder.file(name, quarantine=True)
        body = await anyio.to_thread.run_sync(_thumbnail, path, name)
        return Response(body, media_type="image/jpeg", headers=_SECURITY_HEADERS)

    async def read_json(request: Request) -> dict[str, Any]:
        mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if mime != "application/json":
            raise ApiError(415, "send the action as application/json")
        body = await read_body(request, MAX_BODY_BYTES, f"{MAX_BODY_BYTES // 1024} KiB")
        try:
            value = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(value, dict):
            raise ApiError(400, "the body must be a JSON object")
        return value

    def act(body: dict[str, Any]) -> list[dict[str, str]]:
        action = body.get("action")
        path = body.get("path")
        if action == "keep":
            journal.keep(path)
            return []
        if action == "relabel":
            return [m.to_dict() for m in journal.relabel(path, body.get("to"))]
        if action == "quarantine":
            return [m.to_dict() for m in journal.set_aside([path])]
        if action == "keep-one":
            group = body.get("group")
            if (
                not isinstance(group, list)
                or not 2 <= len(group) <= 1000
                or not all(isinstance(p, str) for p in group)
            ):
                raise ReviewError("group must be a list of 2 to 1000 paths")
            return [m.to_dict() for m in journal.keep_one(group, path)]
        raise ReviewError(f"unknown action {action!r}: keep, relabel, quarantine or keep-one")

    async def action(request: Request) -> JSONResponse:
        check_host(request)
        check_key(request)
        check_token(request)
        body = await read_json(request)
        moves = await anyio.to_thread.run_sync(act, body)
        if log is not None:
            for m in moves:
                log(f"convnets review: {body.get('action')}: {m['src']} -> {m['dst']}")
        return JSONResponse({"moves": moves, **state()}, headers=_SECURITY_HEADERS)

    async def undo(request: Request) -> JSONResponse:
        check_host(request)
        check_key(request)
        check_token(request)
        moves = [m.to_dict() for m in await anyio.to_thread.run_sync(journal.undo_last)]
        return JSONResponse({"moves": moves, **state()}, headers=_SECURITY_HEADERS)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            {"error": message}, status_code=status, headers={**_SECURITY_HEADERS, **(headers or {})}
        )

    async def api_error(_request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, ApiError)
        return error(e.status, e.message, e.headers)

    async def review_error(_request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, ReviewError)
        return error(e.status, str(e))

    async def http_error(_request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, HTTPException)
        return error(e.status_code, str(e.detail), e.headers)

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/api/state", get_state, methods=["GET"]),
            Route("/api/thumb", thumb, methods=["GET"]),
            Route("/api/action", action, methods=["POST"]),
            Route("/api/undo", undo, methods=["POST"]),
        ],
        exception_handlers={ApiError: api_error, ReviewError: review_error, HTTPException: http_error},
    )
    app.state.token = token
    app.state.journal = journal
    app.state.folder = folder
    return app
