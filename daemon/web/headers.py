"""The security headers of the surfaces a browser loads: the web client and the operator API."""

from __future__ import annotations

from collections.abc import Mapping

from quart import Blueprint, Response

# 'self' in connect-src also allows ws:// and wss:// to this host (CSP level 3), which the live
# feed needs; everything else (inline script or style, eval, frames, forms, plugins) is refused.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",  # task data and a page that holds a token: never cached
}


def send_with(bp: Blueprint, headers: Mapping[str, str]) -> None:
    """Give every answer of ``bp`` these headers, unless the view set one of them itself."""

    @bp.after_request
    async def add_headers(response: Response) -> Response:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response
