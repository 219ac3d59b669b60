"""Errors as RFC 9457 problem documents (``application/problem+json``), and the bearer token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

PROBLEM_TYPE = "application/problem+json"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """Raised by a handler to answer with a problem document."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int, detail: str, *, instance: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status, "detail": detail}
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def bearer_ok(request: Request, token: str | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (compared in constant time)."""
    if token is None:
        return False
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Digests of both, so that neither the content nor the length of the token leaks in timing.
    return hmac.compare_digest(_digest(given.strip()), _digest(token))


def reader_ok(request: Request, token: str | None) -> bool:
    """Whether the request may read: the bearer token, or HTTP Basic credentials whose password
    is the token (any user name), which is what a browser can send for a page and for the
    requests the page makes. Reads only: a browser sends Basic credentials by itself, so a
    write accepting them could be forged by another site's form."""
    if bearer_ok(request, token):
        return True
    if token is None:
        return False
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(given.strip(), validate=True).decode("utf-8", "surrogateescape")
    except ValueError:
        return False
    return hmac.compare_digest(_digest(decoded.partition(":")[2]), _digest(token))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def require_reader(request: Request, token: str | None) -> None:
    if not reader_ok(request, token):
        raise Problem(
            401,
            "this endpoint needs the bearer token: send `Authorization: Bearer $RUNNER_HTTP_TOKEN`",
            headers={"WWW-Authenticate": 'Bearer realm="runner"'},
        )


def require_token(request: Request, token: str | None) -> None:
    if not bearer_ok(request, token):
        raise Problem(
            401,
            "this endpoint needs the bearer token: send `Authorization: Bearer $RUNNER_HTTP_TOKEN`",
            headers={"WWW-Authenticate": 'Bearer realm="runner"'},
        )
