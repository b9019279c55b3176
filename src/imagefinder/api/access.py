"""Write access control for the API: an ASGI middleware applying `imagefinder.access` to every write.

A write is any request that is not GET/HEAD/OPTIONS, except the searches (POST /search,
/search/batch and /search/matches read only). Classifying by method rather than by route means a mutating route
added later is protected without anyone remembering to protect it. Refusals are the API's
usual JSON `{"detail": ...}`, 401 with `WWW-Authenticate: Bearer` or 403.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from ..access import SAFE_METHODS, AccessDenied, WritePolicy, WriteRequest, check_write
from .settings import Settings

READ_ONLY_POSTS = frozenset({"/search", "/search/batch", "/search/matches"})


def policy_of(settings: Settings) -> WritePolicy:
    return WritePolicy(token=settings.token, read_only=settings.read_only,
                       read_only_reason=settings.read_only_reason, trusted_origins=settings.cors_origins)


def is_write(method: str, path: str) -> bool:
    return method.upper() not in SAFE_METHODS and path.rstrip("/") not in READ_ONLY_POSTS


def write_request(scope: Scope) -> WriteRequest:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        # repeated headers: joined as HTTP says; a second Origin or Host then fails every check
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    client = scope.get("client")
    return WriteRequest(client=client[0] if client else None, scheme=scope.get("scheme", "http"), headers=headers)


class WriteAccess:
    """Refuses writes that `imagefinder.access.check_write` refuses; passes everything else through."""

    def __init__(self, app: ASGIApp, policy: WritePolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_write(scope.get("method", "GET"), scope.get("path", "")):
            try:
                check_write(self.policy, write_request(scope))
            except AccessDenied as exc:
                await _refuse(send, exc)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, exc: AccessDenied) -> None:
    body = json.dumps({"detail": str(exc)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
