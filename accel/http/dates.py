"""The Date field accel sends (RFC 9110 §6.6.1), formatted once per second rather than once per response."""

from __future__ import annotations

import time

from twisted.web import http


class HTTPDate:
    """``http.datetimeToString()`` for now, and the whole ``Date: ...`` field line, cached for the second."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.second: int | None = None
        self.value = b""
        self.line = b""

    def __call__(self) -> bytes:
        second = int(self.clock())
        if second != self.second:
            self.value = http.datetimeToString(second)
            self.line = b"Date: %s\r\n" % self.value
            self.second = second
        return self.value

    def field(self) -> bytes:
        """``Date: <now>\\r\\n``."""
        if int(self.clock()) != self.second:
            self()
        return self.line


http_date = HTTPDate()
