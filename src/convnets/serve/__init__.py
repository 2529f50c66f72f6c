"""``convnets serve``: a trained run behind an HTTP server (needs ``pip install 'convnets[serve]'``).

``create_app(run_dir, ...)`` returns an ASGI app (Starlette) with a page at ``/``, ``POST /v1/predict``,
``GET /v1/model``, ``/healthz`` and ``/readyz``; see :mod:`convnets.serve.app`. Requests are gathered
into batches by :mod:`convnets.serve.batching`. Importing this package imports neither torch nor
Starlette; ``create_app`` imports it when first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        try:
            from .app import create_app  # optional: starlette, uvicorn (convnets[serve])
        except ImportError as e:
            if e.name in ("starlette", "uvicorn", "anyio", "multipart", "python_multipart"):
                raise ImportError("serving needs: pip install 'convnets[serve]'") from e
            raise
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
