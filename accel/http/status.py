"""The status page at ``[status] path`` (default ``/accel-status``), served only to ``[status] allow``.

The page is made of *parts* that other layers provide (the balancer manager is one; ``accel.app`` wires them):

    part.title                   the heading of its HTML section
    part.prefix                  POSTs to ``<path>/<prefix>/...`` go to this part
    part.describe() -> dict      its keys of the JSON document (``<path>?format=json``)
    part.html(path) -> str       its HTML section; forms post to ``path + "/" + prefix + ...``
    part.change(rest, form)      a POST: ``rest`` are the path segments after the prefix, ``form`` the fields
                                 (form-encoded or a JSON object); returns a JSON-able answer or raises
                                 ``StatusError``

A form-encoded POST (a browser's form) is answered with 303 See Other back to the page; a JSON one with JSON.
A POST whose ``Origin`` names another site than ``Host`` is refused (a page elsewhere must not drive it).
"""

from __future__ import annotations

import html
import json
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import succeed
from twisted.logger import Logger

from accel.config import StatusSettings
from accel.http.addresses import peer_in, peer_name
from accel.http.errors import ErrorPages

log = Logger()

MAX_FORM_BYTES = 16384


class StatusError(Exception):
    """A change the status page refuses, with its status code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class StatusPage:
    def __init__(self, settings: StatusSettings, parts, errors: ErrorPages):
        self.settings = settings
        self.path = settings.path
        self.parts = list(parts)
        self.errors = errors

    def claims(self, path: str) -> bool:
        """Whether a (normalised) request path is the page's or below it."""
        return path == self.path or path.startswith(self.path + "/")

    def handle(self, request, target: str) -> None:
        if not peer_in(request.getClientAddress(), self.settings.allow, self.settings.allow_unix_peers):
            log.warn("status page refused to {peer}", peer=peer_name(request.getClientAddress()))
            self.errors.send(request, 403, "The status page is not served to this address.")
            return
        path, _, query = target.partition("?")
        method = request.method
        if path == self.path:
            if method not in (b"GET", b"HEAD"):
                self.errors.send(request, 405, "GET the status page; POST to its members' addresses.", {b"allow": b"GET, HEAD"})
            elif parse_qs(query).get("format") == ["json"]:
                self.answer(request, 200, self.describe())
            else:
                self.send(request, 200, self.page().encode("utf-8"), b"text/html; charset=utf-8")
            return
        rest = path[len(self.path) + 1 :].split("/")
        part = next((p for p in self.parts if p.prefix == rest[0]), None)
        if part is None:
            self.errors.send(request, 404, "Nothing on the status page has this address.")
        elif method != b"POST":
            self.errors.send(request, 405, "POST changes here.", {b"allow": b"POST"})
        elif not self.same_site(request):
            self.errors.send(request, 403, "A change must come from the status page's own site.")
        else:
            read_form(request).addCallback(lambda form: self.change(request, part, rest[1:], form))

    def change(self, request, part, rest: list[str], form) -> None:
        if request._disconnected:
            return
        if isinstance(form, StatusError):
            self.errors.send(request, form.code, str(form))
            return
        fields, from_browser = form
        try:
            answer = part.change(rest, fields)
        except StatusError as e:
            self.errors.send(request, e.code, str(e))
            return
        log.info("status page: {path} changed by {peer}: {fields}", path=request.path.decode("latin-1"),
                 peer=peer_name(request.getClientAddress()), fields=fields)
        if from_browser:
            request.setHeader(b"location", self.path.encode("latin-1"))
            self.send(request, 303, b"", b"text/plain")
        else:
            self.answer(request, 200, answer)

    @staticmethod
    def same_site(request) -> bool:
        origin = request.getHeader(b"origin")
        if origin is None:
            return True
        return urlsplit(origin.decode("latin-1")).netloc.lower() == (request.getHeader(b"host") or b"").decode("latin-1").lower()

    def describe(self) -> dict:
        document: dict = {}
        for part in self.parts:
            document.update(part.describe())
        return document

    def page(self) -> str:
        sections = "\n".join(f"<section><h2>{html.escape(p.title)}</h2>\n{p.html(self.path)}</section>" for p in self.parts)
        return (
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>accel status</title>\n"
            f"<style>{_STYLE}</style></head>\n<body><h1>accel status</h1>\n{sections}\n"
            f"<p><a href=\"{html.escape(self.path)}?format=json\">JSON</a></p></body></html>\n"
        )

    def answer(self, request, code: int, document) -> None:
        self.send(request, code, json.dumps(document, indent=1).encode("utf-8") + b"\n", b"application/json")

    @staticmethod
    def send(request, code: int, body: bytes, content_type: bytes) -> None:
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(body)
        request.finish()


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:left}th{background:#eee}"
    "form{display:inline}.up{color:#070}.out{color:#b00}.disabled{color:#777}.draining{color:#a60}"
    ".standby{color:#057}input[type=number]{width:4em}"
)


class _Collector:
    def __init__(self):
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)


def read_form(request):
    """Fires with (fields, whether form-encoded) for a POST's body, or a ``StatusError``."""
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    body = request.body
    if body is None:
        return succeed(_parse(b"", content_type))
    if isinstance(body.length, int) and body.length > MAX_FORM_BYTES:
        body.abandon()
        return succeed(StatusError(413, f"A change takes at most {MAX_FORM_BYTES} bytes."))
    collector = _Collector()
    done = body.startProducing(collector)

    def parsed(_):
        if collector.size > MAX_FORM_BYTES:
            return StatusError(413, f"A change takes at most {MAX_FORM_BYTES} bytes.")
        return _parse(b"".join(collector.chunks), content_type)

    return done.addCallbacks(parsed, lambda failure: StatusError(400, "The request body broke off."))


def _parse(data: bytes, content_type: bytes):
    if content_type == b"application/json":
        try:
            fields = json.loads(data or b"{}")
        except ValueError:
            return StatusError(400, "The body is not valid JSON.")
        if not isinstance(fields, dict):
            return StatusError(400, "The body must be a JSON object.")
        return {str(k): str(v) for k, v in fields.items()}, False
    try:
        pairs = parse_qs(data.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(data))
    except (UnicodeDecodeError, ValueError):
        return StatusError(400, "The body is not a valid form.")
    return {name: values[-1] for name, values in pairs.items()}, True
