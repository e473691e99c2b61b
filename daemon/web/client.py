"""The phone's web client: its shell at ``/``, its files at ``/app/<name>``, its service worker at
``/sw.js`` (so that its scope is the whole origin) and its manifest at ``/manifest.webmanifest``.

The files are those of ``static/app/`` with a known extension, read once when this module is
imported and kept in memory: the list of what can be served is fixed then, and a request's
path is only ever a key into it, so no path from a request reaches the filesystem. A file
missing at import is not served (the rest is). Each answer carries a strong ETag and
``Cache-Control: no-cache``: a browser or the service worker asks again each time and gets a
304 while the daemon serves the same files. The Content-Security-Policy is the operator API's
(``headers.CONTENT_SECURITY_POLICY``: this origin only, no inline script or style), allowing the
manifest and the worker from this origin too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from quart import Blueprint, Response, request
from quart.typing import ResponseReturnValue
from quart_schema import hide

from .errors import ApiError
from .headers import CONTENT_SECURITY_POLICY as OPERATOR_API_POLICY, SECURITY_HEADERS, send_with

APP_DIR = Path(__file__).parent / "static" / "app"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".webmanifest": "application/manifest+json",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
CONTENT_SECURITY_POLICY = f"{OPERATOR_API_POLICY}; manifest-src 'self'; worker-src 'self'"
HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",  # kept, but asked again each time (a 304 while unchanged)
}
# Served at the root of the origin rather than under /app/: the shell, the service worker (its
# scope is where it is served from) and the manifest.
AT_ROOT = {"/": "index.html", "/sw.js": "sw.js", "/manifest.webmanifest": "manifest.webmanifest"}


@dataclass(frozen=True)
class Asset:
    """One file of the client, as served."""

    body: bytes
    content_type: str
    etag: str


def load_assets(directory: Path) -> dict[str, Asset]:
    """Every regular file under ``directory`` with a type in ``CONTENT_TYPES``, by its path
    relative to it ("app.js", "vendor/x.js"); hidden files and directories, and symbolic
    links, are left out. Blocking: call at import or in a worker thread."""
    assets: dict[str, Asset] = {}
    if not directory.is_dir():
        return assets
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        content_type = CONTENT_TYPES.get(path.suffix.lower())
        hidden = any(part.startswith(".") for part in relative.parts)
        if content_type is None or hidden or path.is_symlink() or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[relative.as_posix()] = Asset(body, content_type, etag)
    return assets


ASSETS = load_assets(APP_DIR)
NOT_FOUND = ApiError(404, "not_found", "no such file")


def _fresh(etag: str) -> bool:
    """Whether the request's If-None-Match names ``etag`` (the client's copy is current)."""
    header = request.headers.get("If-None-Match", "")
    return header.strip() == "*" or etag in (tag.strip() for tag in header.split(","))


def serve(name: str, **headers: str) -> Response:
    """The asset ``name`` (a key of ``ASSETS``), or 304 when the client's copy is current."""
    asset = ASSETS.get(name)
    if asset is None:
        raise NOT_FOUND
    if _fresh(asset.etag):
        response = Response(b"", status=304)
    else:
        response = Response(asset.body, content_type=asset.content_type)
    response.headers["ETag"] = asset.etag
    response.headers.update(headers)
    return response


bp = Blueprint("client", __name__)
send_with(bp, HEADERS)


@bp.get("/")
@hide
async def shell() -> ResponseReturnValue:
    return serve(AT_ROOT["/"])


@bp.get("/sw.js")
@hide
async def service_worker() -> ResponseReturnValue:
    return serve(AT_ROOT["/sw.js"], **{"Service-Worker-Allowed": "/"})


@bp.get("/manifest.webmanifest")
@hide
async def manifest() -> ResponseReturnValue:
    return serve(AT_ROOT["/manifest.webmanifest"])


@bp.get("/app/<path:name>")
@hide
async def app_file(name: str) -> ResponseReturnValue:
    if name in AT_ROOT.values():  # each file at one address
        raise NOT_FOUND
    return serve(name)
