"""The access log: Apache's combined format, then the duration in microseconds (%D), the origin and the
cache outcome.

    127.0.0.1 - - [22/Nov/2026:10:00:00 +0000] "GET /a HTTP/1.1" 200 512 "-" "curl/8.5" 1840 origin=http://10.0.0.5:8000 cache=hit
"""

from __future__ import annotations

import sys
import time


def _quoted(value: bytes | None) -> str:
    if not value:
        return "-"
    return value.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')


def access_log_line(timestamp: str, request) -> str:
    """One line for a finished request (``timestamp`` is Twisted's cached "[%d/%b/%Y:%H:%M:%S +0000]")."""
    duration_us = int((time.monotonic() - request.started) * 1_000_000)
    peer = request.getClientAddress()
    first_line = _quoted(b"%s %s %s" % (request.method, request.uri, request.clientproto))
    return (
        f'{getattr(peer, "host", "-")} - - {timestamp} "{first_line}" {request.code} {request.sentLength or "-"}'
        f' "{_quoted(request.getHeader(b"referer"))}" "{_quoted(request.getHeader(b"user-agent"))}"'
        f" {duration_us} origin={request.log_origin} cache={request.log_cache}"
    )


class StandardOutput:
    """Log file object for ``access_log = "-"``: the process's real standard output (twistd redirects
    ``sys.stdout`` into its own log)."""

    def write(self, line: str) -> None:
        sys.__stdout__.write(line)
        sys.__stdout__.flush()

    def close(self) -> None:
        pass
