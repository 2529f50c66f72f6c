"""`convnets review DATA`: fix what doctor found in a page (keep, move to class X, set aside, keep one
copy); every change a journalled move, `--undo` restores the folder. Imports nothing heavy at the top."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from . import CLIError
from .serve import API_KEY_ENV, _is_loopback


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "review",
        help="fix the data doctor found, in a web page (every change undoable)",
        description="Open what `convnets doctor` finds in DATA (duplicate and leakage groups side by side, "
        "likely label errors with the given and the suggested class, with --run that run's top losses) in "
        "a page on this machine, and act on each: keep, move to class X, set aside (to DATA/.quarantine/), "
        "keep one copy of a duplicate group. Every action is a file move written first to "
        "DATA/.review-journal.jsonl; nothing is deleted, and `convnets review DATA --undo` puts every file "
        "back. Needs `pip install 'convnets[serve]'`.",
    )
    p.add_argument("data", metavar="DATA", help="folder of class folders (or a root with train/ and val/)")
    p.add_argument("--port", type=int, default=8010, help="port (default 8010)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--run", metavar="RUN_DIR", help="also show this run's top-loss images of DATA")
    p.add_argument(
        "--doctor-json", metavar="FILE", help="read doctor's findings from `doctor --json` output instead"
    )
    p.add_argument("--no-labels", action="store_true", help="skip doctor's label check (the slowest part)")
    p.add_argument(
        "--api-key", default=None, help=f"also require this key on /api/* (default: ${API_KEY_ENV})"
    )
    p.add_argument(
        "--undo",
        action="store_true",
        help="undo every change the review made to DATA (the journal is kept as the record) and exit",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..review import DataFolder, ReviewError, undo_all

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.undo:
        try:
            moves = undo_all(args.data)
        except (ReviewError, OSError) as e:
            raise CLIError(str(e)) from e
        for m in moves:
            print(f"{m.src} -> {m.dst}")
        say(f"convnets review --undo: {len(moves)} file(s) moved back in {args.data}")
        return 0
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be 0-65535, got {args.port}")
    try:
        import uvicorn

        from ..review import create_app, load_findings
    except ImportError as e:
        raise CLIError(f"review needs: pip install 'convnets[serve]' ({e})") from e
    from ..base.runs import RunFolderError
    from ..doctor import DoctorError

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    try:
        folder = DataFolder(args.data)
        findings = load_findings(
            folder, doctor_json=args.doctor_json, run=args.run, labels=not args.no_labels
        )
        app = create_app(args.data, findings, api_key=api_key, loopback_only=_is_loopback(args.host), log=say)
    except (ReviewError, DoctorError, RunFolderError, ValueError, KeyError, OSError) as e:
        raise CLIError(str(e).strip("'\"")) from e

    host = f"[{args.host}]" if ":" in args.host else args.host
    say(f"convnets review: {len(findings.items)} item(s) from {findings.source}")
    say(
        f"convnets review: open http://{host}:{args.port}/  "
        f"(undo everything: convnets review {args.data} --undo)"
    )
    if not _is_loopback(args.host) and api_key is None:
        say(
            f"convnets review: warning: listening on {args.host} without an API key "
            f"(--api-key or ${API_KEY_ENV})"
        )
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)  # uvicorn stops gracefully; exit 0
    server.run()
    return 0 if server.started else 1
