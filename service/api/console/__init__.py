"""The browser console: one page for every view path, its assets, and strict security headers."""

from __future__ import annotations

import json
import logging
import mimetypes
from pathlib import Path
from typing import Any

from aiohttp import web

from service.api.openapi import operation
from service.api.state import SETTINGS

logger = logging.getLogger(__name__)

# The static files of the console (committed; no build step).
ASSETS_DIR = Path(__file__).resolve().parent
INDEX = ASSETS_DIR / "index.html"
MESSAGES = ASSETS_DIR / "messages.json"
OPERATOR_MESSAGES = "console-messages.json"  # in AUDITQ_DATA_DIR: replaces or adds entries
_SERVED_SUFFIXES = frozenset({".js", ".css", ".json", ".svg", ".png"})

# Everything from this origin only; no inline script or style, no framing, no plugins.
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), clipboard-write=(self)",
    # Revalidate every time: an upgraded auditq serves its new assets at once.
    "Cache-Control": "no-cache",
}


def _asset_table() -> dict[str, Path]:
    """Every servable file under the console directory, by its URL path: nothing else is."""
    return {
        path.relative_to(ASSETS_DIR).as_posix(): path
        for path in sorted(ASSETS_DIR.rglob("*"))
        if path.is_file() and path.suffix in _SERVED_SUFFIXES
    }


ASSETS = _asset_table()


@operation(summary="Redirect to the console", responses={302: None})
async def root(request: web.Request) -> web.StreamResponse:
    """Send a browser to the console."""
    raise web.HTTPFound("/console/")


@operation(summary="The console's page (every view path serves it)", media_types=("text/html",))
async def index(request: web.Request) -> web.StreamResponse:
    """The single page of the console; the view is chosen in the browser from the path."""
    if request.path == "/console":
        raise web.HTTPFound("/console/")
    return web.FileResponse(INDEX, headers={**SECURITY_HEADERS, "Content-Type": "text/html"})


@operation(summary="A static file of the console", media_types=("application/octet-stream",))
async def asset(request: web.Request) -> web.StreamResponse:
    """One of the console's files, or 404."""
    name = request.match_info["name"]
    path = ASSETS.get(name)
    if path is None:
        raise web.HTTPNotFound(reason=f"the console has no file {name[:200]}")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix == ".js":
        content_type = "text/javascript"
    headers = {**SECURITY_HEADERS, "Content-Type": f"{content_type}; charset=utf-8"}
    return web.FileResponse(path, headers=headers)


def load_messages(data_dir: Path) -> dict[str, Any]:
    """The message catalogue: the shipped English one, overlaid by the operator's file if any."""
    messages: dict[str, Any] = json.loads(MESSAGES.read_text(encoding="utf-8"))
    own = data_dir / OPERATOR_MESSAGES
    try:
        loaded = json.loads(own.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return messages
    except (OSError, ValueError) as exc:
        logger.warning("console messages %s not used: %s", own, exc)
        return messages
    if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
        logger.warning("console messages %s not used: must map codes to strings", own)
        return messages
    return messages | loaded


@operation(
    summary="The console's message catalogue: presentation code -> sentence template",
    responses={200: {"type": "object", "additionalProperties": {"type": "string"}}},
)
async def messages(request: web.Request) -> web.Response:
    """The presentation messages; <AUDITQ_DATA_DIR>/console-messages.json overlays them."""
    return web.json_response(
        load_messages(request.app[SETTINGS].data_dir), headers=SECURITY_HEADERS
    )


ROUTES = [
    web.get("/", root, allow_head=False),
    web.get("/console/assets/messages.json", messages),
    web.get("/console/assets/{name:.+}", asset),
    web.get("/console", index, allow_head=False),
    web.get("/console/", index),
    web.get("/console/{view:.+}", index),
]
