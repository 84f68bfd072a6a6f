"""Responses accel makes itself when it cannot relay one: built-in pages or the operator's ErrorDocuments."""

from __future__ import annotations

import html
from http import HTTPStatus

from twisted.web.server import Request


class ErrorPages:
    """Error responses by status code; a configured document replaces the built-in page for its code.

    Documents are read once at start-up (the configuration check made sure they are readable), so a file
    removed at run time cannot turn an error page into a second error.
    """

    def __init__(self, documents: dict[int, str] | None = None):
        self.documents: dict[int, tuple[bytes, bytes]] = {}
        for code, path in (documents or {}).items():
            with open(path, "rb") as f:
                self.documents[code] = (f.read(), _content_type(path))

    def page(self, code: int, detail: str = "") -> tuple[bytes, bytes]:
        """(body, content type) for a status code."""
        if code in self.documents:
            return self.documents[code]
        reason = _reason(code)
        text = f"<!DOCTYPE html>\n<html><head><title>{code} {reason}</title></head>\n<body><h1>{code} {reason}</h1>\n"
        if detail:
            text += f"<p>{html.escape(detail)}</p>\n"
        return (text + "</body></html>\n").encode("utf-8"), b"text/html; charset=utf-8"

    def send(self, request: Request, code: int, detail: str = "", headers: dict[bytes, bytes] | None = None) -> None:
        """Answer ``request`` with the error page for ``code`` and finish it."""
        body, content_type = self.page(code, detail)
        send_own(request, code, content_type, body, headers)


def send_own(request: Request, code: int, content_type: bytes, body: bytes,
             headers: dict[bytes, bytes] | None = None) -> None:
    """Answer ``request`` with a response accel made itself (an error page, a health or purge answer), which no
    cache should store, and finish it."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.setHeader(b"cache-control", b"no-store")
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    request.write(body)
    request.finish()


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _content_type(path: str) -> bytes:
    lower = path.lower()
    if lower.endswith((".html", ".htm")):
        return b"text/html; charset=utf-8"
    if lower.endswith(".json"):
        return b"application/json"
    return b"text/plain; charset=utf-8"
