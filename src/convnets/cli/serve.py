"""`convnets serve RUN_DIR`: the run's model behind an HTTP server (page, JSON API, micro-batching).

Imports nothing heavy at module level: Starlette, uvicorn and the model load inside ``run``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys

from ..base.choices import EXPORTED_PATH_CHOICES
from . import CLIError

API_KEY_ENV = "CONVNETS_API_KEY"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a trained run over HTTP (web page + JSON API)",
        description="Start an HTTP server for a trained run: a page at / to classify images in the "
        "browser, POST /v1/predict (multipart files or one raw image body; ?top_k=), GET /v1/model, "
        "/healthz and /readyz. Concurrent requests are run together in batches. The model runs on "
        "the run's exported model.onnx (exported once, on first use). Needs `pip install 'convnets[serve]'`.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `convnets train`")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=EXPORTED_PATH_CHOICES,
        help="what runs the exported model: auto (default) = the fastest engine here that passed its check",
    )
    p.add_argument(
        "--max-batch",
        type=_max_batch,
        default=None,
        metavar="N|auto",
        help="most images run together; auto (default): the largest batch up to 32 that is still cheaper "
        "per image on this machine, measured at start-up",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="longest a batch waits for requests that are already arriving (default 5)",
    )
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20)")
    p.add_argument("--max-files", type=int, default=64, help="most images in one request (default 64)")
    p.add_argument("--top-k", type=int, default=5, help="classes per image unless ?top_k= says (default 5)")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require this key on /v1/* (Authorization: Bearer KEY or X-API-Key); default: ${API_KEY_ENV}",
    )
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("--no-access-log", action="store_true", help="don't log one line per request")
    p.set_defaults(func=run)


def _max_batch(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number >= 1, got {value!r}")
    return n


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve import create_app
        from ..serve.app import open_model
    except ImportError as e:
        raise CLIError(f"serving needs: pip install 'convnets[serve]' ({e})") from e
    from ..base.runs import RunConfig, RunFolderError, weights_path

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be 0-65535, got {args.port}")

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        config = RunConfig.read(args.run_dir)
        weights_path(args.run_dir)
        model = open_model(args.run_dir, args.backend, args.threads, log=say)  # errors here, not later
        app = create_app(
            args.run_dir,
            backend=args.backend,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            max_upload_mb=args.max_upload_mb,
            max_files=args.max_files,
            top_k=args.top_k,
            api_key=api_key,
            threads=args.threads,
            model=model,
            log=say,
        )
    except (RunFolderError, ValueError, ImportError, OSError) as e:
        raise CLIError(str(e)) from e

    sock = listen_socket(args.host, args.port)  # before the URL is printed: a busy port is told, not a URL
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    say(
        f"convnets serve: {config.model} ({config.num_classes} classes) from {args.run_dir} "
        f"on {model.backend}"
    )
    say(f"convnets serve: open http://{host}:{port}/  (API: POST /v1/predict, GET /v1/model)")
    if not _is_loopback(args.host) and api_key is None:
        say(
            f"convnets serve: warning: listening on {args.host} without an API key "
            f"(--api-key or ${API_KEY_ENV})"
        )

    server = uvicorn.Server(
        uvicorn.Config(
            app, host=args.host, port=args.port, access_log=not args.no_access_log, log_level="info"
        )
    )
    # uvicorn finishes the requests in flight on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was installed before it started; a no-op there makes a graceful stop exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (what uvicorn would bind), or a one-line error naming them."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise CLIError(f"--host {host}: cannot listen there ({e.strerror or e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise CLIError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock
