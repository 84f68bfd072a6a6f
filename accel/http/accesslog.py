"""The access log: Apache's combined format, then the duration in microseconds (%D), the origin and the
cache outcome; or (``access_log_format = "json"``) one JSON object a line. Also how error-log lines name a
request (``request_label``): plain text, never a Python repr.

    127.0.0.1 - - [22/Nov/2026:10:00:00 +0000] "GET /a HTTP/1.1" 200 512 "-" "curl/8.5" 1840 origin=http://10.0.0.5:8000 cache=hit

    {"time": "2026-11-22T10:00:00.123456Z", "client": "127.0.0.1", "method": "GET", "target": "/a", "status": 200, ...}

A WebSocket tunnel is logged when it closes, as a 101 whose duration is the tunnel's, with the bytes each
way: ``... cache=- ws_in=<from the client> ws_out=<to the client>``.
"""

from __future__ import annotations

import json
import sys
import time

from accel.http.addresses import peer_name


def _quoted(value: bytes | None) -> str:
    if not value:
        return "-"
    return value.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')


def _text(value: bytes | str | None) -> str:
    if not value:
        return "-"
    return value.decode("latin-1") if isinstance(value, bytes) else value


def peer_label(peer) -> str:
    """A client or peer as log lines show it: its address (``peer_name``) and port, "127.0.0.1:52344",
    "[::1]:52344"; "unknown" for a UNIX socket's peer."""
    name, port = peer_name(peer), getattr(peer, "port", None)
    if port is None:
        return name
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def request_label(request) -> str:
    """How an error-log line names a request: client address, Host, method and target.

        127.0.0.1:52344 www.example.com GET /slow?d=5
    """
    return (f"{peer_label(request.getClientAddress())} {_text(request.getHeader(b'host'))}"
            f" {_text(getattr(request, 'method', None))} {_text(getattr(request, 'uri', None))}")


def access_log_line(timestamp: str, request) -> str:
    """One line for a finished request (``timestamp`` is Twisted's cached "[%d/%b/%Y:%H:%M:%S +0000]")."""
    return format_access_line(
        timestamp, request.getClientAddress(), request.method, request.uri, request.clientproto, request.code,
        request.sentLength, request.getHeader(b"referer"), request.getHeader(b"user-agent"), request.started,
        request.log_origin, request.log_cache, request.log_extra,
    )


def format_access_line(
    timestamp: str, peer, method: bytes, uri: bytes, version: bytes, code: int, sent: int,
    referer: bytes | None, user_agent: bytes | None, started: float, origin: str, cache: str, extra: str = "",
) -> str:
    """The line for one answered request; ``started`` is its ``time.monotonic()`` at the first byte;
    ``extra`` ends the line (a WebSocket tunnel's bytes each way)."""
    duration_us = int((time.monotonic() - started) * 1_000_000)
    first_line = _quoted(b"%s %s %s" % (method, uri, version))
    return (
        f'{getattr(peer, "host", "-")} - - {timestamp} "{first_line}" {code} {sent or "-"}'
        f' "{_quoted(referer)}" "{_quoted(user_agent)}" {duration_us} origin={origin} cache={cache}{extra}'
    )


_json_string = json.encoder.encode_basestring_ascii  # a str as a JSON string (C, and safe for any byte)


def _json_or_null(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


class _Second:
    """The ISO 8601 date and time of the current second, formatted once a second."""

    second = -1
    text = ""


def json_access_line(peer, method: bytes, target: bytes, status: int, sent: int, started: float, route: str,
                     origin: str, cache: str, tls: str | None, request_id: bytes) -> str:
    """The JSON line for one answered request: every field always present (null when it does not apply).
    Written by hand in ``json.dumps``' form: it is on the hit path, and this is several times faster."""
    now = time.time()
    second = int(now)
    if second != _Second.second:
        _Second.second, _Second.text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return (
        f'{{"time": "{_Second.text}.{int((now - second) * 1e6):06d}Z", '
        f'"client": {_json_or_null(getattr(peer, "host", None))}, '
        f'"method": {_json_string(method.decode("latin-1"))}, "target": {_json_string(target.decode("latin-1"))}, '
        f'"status": {int(status)}, "bytes": {int(sent or 0)}, "duration": {time.monotonic() - started:.6f}, '
        f'"route": {"null" if route == "-" else _json_string(route)}, '
        f'"origin": {"null" if origin == "-" else _json_string(origin)}, "cache": {_json_string(cache)}, '
        f'"tls": {_json_or_null(tls)}, "request_id": {_json_string(request_id.decode("latin-1"))}}}'
    )


def tls_version(transport) -> str | None:
    """The TLS version of a client connection ("TLSv1.3"), None when it is plain."""
    handle = getattr(transport, "getHandle", None)
    connection = handle() if handle is not None else None
    version = getattr(connection, "get_protocol_version_name", None)
    return version() if version is not None else None


class LogFile:
    """The access log file, opened for appending; ``reopen`` opens the path again, so that after a rotation
    (the file renamed away) lines go to a new file by the old name."""

    def __init__(self, path: str):
        self.path = path
        self.file = self._open()

    def _open(self):
        return open(self.path, "a", encoding="utf-8", errors="replace")

    def write(self, text: str) -> None:
        self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def reopen(self) -> None:
        replacement = self._open()  # an error leaves the old file in use
        self.file.close()
        self.file = replacement

    def close(self) -> None:
        self.file.close()


class StandardOutput:
    """Log file object for ``access_log = "-"``: the process's real standard output (twistd redirects
    ``sys.stdout`` into its own log)."""

    def write(self, line: str) -> None:
        sys.__stdout__.write(line)
        sys.__stdout__.flush()

    def flush(self) -> None:
        sys.__stdout__.flush()

    def close(self) -> None:
        pass

    def reopen(self) -> None:
        pass


class PerTurnWriter:
    """Writes the access-log lines of one reactor iteration together, at the start of the next one.

    Under load one iteration finishes many requests: one write (and flush) for all of them instead of
    one per line. A line is written before the reactor next waits for I/O, so it still appears while
    its response is on its way; only lines of the iteration in progress are lost if the process dies.
    """

    def __init__(self, file, reactor) -> None:
        self.file = file
        self.reactor = reactor
        self.pending: list[str] = []
        self.call = None

    def write(self, line: str) -> None:
        self.pending.append(line)
        if self.call is None:
            self.call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self.call = None
        if self.pending:
            lines, self.pending = self.pending, []
            self.file.write("".join(lines))
            self.file.flush()

    def reopen(self) -> None:
        self.flush()
        self.file.reopen()

    def close(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.flush()
        self.file.close()


def open_access_log(path: str, reactor) -> PerTurnWriter:
    """The writer for ``access_log``: a file path, or "-" for standard output."""
    return PerTurnWriter(StandardOutput() if path == "-" else LogFile(path), reactor)
