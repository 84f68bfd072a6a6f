"""The client side of accel: a strict HTTP/1.1 channel, a request that streams its body, and the Site.

Twisted's ``HTTPChannel`` parses requests; accel tightens it (RFC 9112) and changes one thing about when a
request is processed:

* Refused before anything reaches an origin: obs-folded header lines (§5.2), a missing or repeated ``Host``
  on HTTP/1.1 (§3.2), ``Content-Length`` together with ``Transfer-Encoding`` or conflicting lengths and
  invalid chunk sizes (§6.3; Twisted's decoder rejects those), header sections over the limit (431),
  request-targets over the limit (414).
* A request with a body is handed to the resource as soon as its header section is complete, and its body
  then streams through ``AccelRequest.body`` with backpressure, instead of being buffered whole (Twisted's
  default) before processing starts. Requests without a body follow Twisted's normal path.
"""

from __future__ import annotations

import io
import time
from urllib.parse import parse_qs

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http import NO_BODY_CODES

from accel.http.accesslog import PerTurnWriter, StandardOutput, access_log_line
from accel.http.body import RequestBody
from accel.http.errors import ErrorPages
from accel.config import Limits



class _HTTPDate:
    """``http.datetimeToString()`` for now, formatted once per second rather than once per request."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.second: int | None = None
        self.value = b""

    def __call__(self) -> bytes:
        second = int(self.clock())
        if second != self.second:
            self.value = http.datetimeToString(second)
            self.second = second
        return self.value


http_date = _HTTPDate()


class AccelChannel(http.HTTPChannel):
    """HTTPChannel with accel's parsing limits and early dispatch of requests that carry a body."""

    _log = Logger()
    # Twisted's own limits answer 400; ours (checked first, from the Site's Limits) answer 414 / 431.
    totalHeadersSize = 1 << 30
    maxHeaders = 1 << 30
    MAX_LENGTH = 65536
    _refused = False
    # A connection's addresses and security never change: Twisted asks the transport for them for every
    # request (getHost is a getsockname call), accel asks once per connection.
    _secure: bool | None = None
    _peer = None
    _host = None
    _limits: Limits | None = None

    def isSecure(self) -> bool:
        if self._secure is None:
            self._secure = super().isSecure()
        return self._secure

    def getPeer(self):
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def getHost(self):
        if self._host is None:
            self._host = super().getHost()
        return self._host

    @property
    def limits(self) -> Limits:
        if self._limits is None:
            limits = getattr(self.site, "limits", None)
            self._limits = Limits() if limits is None else limits
        return self._limits

    def _in_request_line(self) -> bool:
        return bool(self._HTTPChannel__first_line)  # type: ignore[attr-defined]

    def lineReceived(self, line: bytes) -> None:
        limits = self.limits
        first = self._HTTPChannel__first_line  # type: ignore[attr-defined]  # as _in_request_line
        if first:
            self._header_lines = 0
            parts = line.split(b" ")
            if len(parts) == 3 and len(parts[1]) > limits.max_target_length:
                return self.refuse(414)
        elif line:
            if line[:1] in (b" ", b"\t"):
                return self.refuse(400)  # RFC 9112 §5.2: obs-fold
            self._header_lines += 1
            if self._header_lines > limits.max_headers:
                return self.refuse(431)
        if self._receivedHeaderSize + len(line) > limits.max_header_bytes:
            return self.refuse(414 if first else 431)
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(414 if self._in_request_line() else 431)

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        hosts = request.requestHeaders.getRawHeaders(b"host", [])
        if len(hosts) > 1 or (self._version == b"HTTP/1.1" and not hosts):
            return self.refuse(400)  # RFC 9112 §3.2
        super().allHeadersReceived()
        if self.length != 0:
            request.dispatch(self._command, self._path, self._version)

    def allContentReceived(self) -> None:
        if not self._refused:
            super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400)

    def refuse(self, code: int) -> None:
        """Answer a request that must not be processed, and close: the rest of the stream can't be trusted.

        The body is the site's error page for ``code`` (an ``error_documents`` file when one is configured).
        """
        if self._refused:
            return
        self._refused = True
        self._log.info("refused request from {peer}: {code}", peer=self.transport.getPeer(), code=code)
        site = self.site
        body, content_type = site.errors.page(code)
        fields = [b"HTTP/1.1 %d %s\r\n" % (code, http.RESPONSES.get(code, b"Error"))]
        if site.server_header:
            fields.append(b"Server: %s\r\n" % site.server_header)
        fields.append(b"Date: %s\r\n" % http_date())
        if site.hsts is not None and self.isSecure():
            fields.append(b"Strict-Transport-Security: %s\r\n" % site.hsts)
        fields.append(b"Content-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
                      b"Connection: close\r\n\r\n" % (content_type, len(body)))
        self.transport.writeSequence(fields + [body])
        self.stop_reading()
        self.loseConnection()

    def stop_reading(self) -> None:
        """Ignore whatever else the client sends on this connection."""
        self.persistent = False
        self.dataReceived = self.lineReceived = lambda *args: None  # type: ignore[method-assign]


class AccelRequest(server.Request):
    """A request whose body is a stream (``self.body``) and which knows when it started (for %D)."""

    defaultContentType = None  # never invent a Content-Type the origin did not send

    def __init__(self, channel, queued=None):
        super().__init__(channel, queued)
        self.started = time.monotonic()
        self.body: RequestBody | None = None
        self.log_origin = "-"
        self.log_cache = "-"
        self._dispatched = False

    def gotLength(self, length: int | None) -> None:
        # The body is streamed, never stored: see handleContentChunk.
        self.content = io.BytesIO()
        self.body = RequestBody(self, length) if length != 0 else None

    def handleContentChunk(self, data: bytes) -> None:
        if self.body is not None:
            self.body.feed(data)

    def dispatch(self, command: bytes, path: bytes, version: bytes) -> None:
        """Start processing now that the header section is complete; the body follows as a stream."""
        self._dispatched = True
        self.method, self.uri, self.clientproto = command, path, version
        self.path, _, query = path.partition(b"?")
        self.args = parse_qs(query, 1) if query else {}
        self.process()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._dispatched:
            if self.body is not None:
                self.body.finish()
        else:
            self.dispatch(command, path, version)

    def process(self) -> None:
        self.site = self.channel.site
        if self.site.server_header:
            self.setHeader(b"server", self.site.server_header)
        self.setHeader(b"date", http_date())
        try:
            self.render(self.site.getResourceFor(self))
        except Exception:
            self.processingFailed(Failure())

    def write_prepared(
        self, code: int, reason: bytes, section: bytes, taken: frozenset, replaced: bytes | None, body: bytes | None
    ) -> bool:
        """Start the response with a header section that is mostly encoded already (a cache hit's).

        What is written equals ``setResponseCode(code, reason)``, then replacing this request's own
        header field named ``replaced`` (e.g. b"Date") and adding the fields ``section`` encodes, then
        ``write(body)``: the status line, this request's own fields (Server, Date, Connection: close)
        as Twisted would write them, ``section`` (encoded field lines and the empty line; they must
        include Content-Length), then ``body`` unless this is a HEAD request. Nothing is written and
        False is returned when one of this request's own fields is named in ``taken`` (the canonical
        names ``section`` sets): merging those is the general path's job.
        """
        parts = [self.clientproto, b" %d " % code, reason, b"\r\n"]
        for name, values in self.responseHeaders.getAllRawHeaders():
            if name == replaced:
                continue
            if name in taken:
                return False
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        parts.append(section)
        self.setResponseCode(code, reason)
        self.startedWriting = 1
        if self.method == b"HEAD" or code in NO_BODY_CODES:
            self.write = lambda data: None  # as twisted.web.http.Request.write does
        elif body:
            parts.append(body)
            self.sentLength += len(body)
        self.channel.writeSequence(parts)
        return True

    def finish(self) -> None:
        if self.body is not None and not self.body.complete and not self._disconnected:
            # Answered before the client finished sending its body: close rather than resynchronise.
            self.setHeader(b"connection", b"close")
            self.channel.stop_reading()
            self.body.abandon()
        super().finish()

    def processingFailed(self, reason):
        self._log.failure("processing {uri} failed", failure=reason, uri=self.uri)
        if self.startedWriting:
            self.close_incomplete()
            return None
        self.site.errors.send(self, 500)
        return None

    def close_incomplete(self) -> None:
        """Close the client connection mid-response: what was sent goes out, then the connection ends,
        without the final chunk or the promised length, so the client can tell the response is incomplete."""
        if not self._disconnected and getattr(self, "channel", None) is not None:
            self.channel.stop_reading()
            self.channel.transport.loseConnection()


class AccelSite(server.Site):
    """A Site using accel's channel and request; carries the front-end settings both of them read."""

    protocol = AccelChannel  # type: ignore[assignment]
    requestFactory = AccelRequest
    displayTracebacks = False

    def __init__(
        self,
        resource,
        *,
        limits: Limits = Limits(),
        server_header: str | None = "accel",
        access_log: str | None = None,
        errors: ErrorPages | None = None,
        hsts: bytes | None = None,
        reactor=None,
    ):
        super().__init__(resource, logFormatter=access_log_line, reactor=reactor)
        self.limits = limits
        self.errors = errors or ErrorPages()  # the pages of the channel's refusals and of failures (500)
        self.hsts = hsts  # Strict-Transport-Security of refusals over TLS (requests: accel.tls.https.with_hsts)
        self.server_header = server_header.encode("latin-1") if server_header else None
        self.access_log = access_log

    def _openLogFile(self, path):
        """The access log, opened for appending (line-buffered), as twisted.web's HTTPFactory does.

        Not twisted.web.server.Site's rotating LogFile: it renames the file every 1 MB, on the reactor
        thread, keeping every old file; with ``--access-log /dev/null`` (the bench) it renamed the
        device itself and put a regular file in its place. Rotate with logrotate (copytruncate).
        """
        return http.HTTPFactory._openLogFile(self, path)

    def startFactory(self) -> None:
        super().startFactory()
        if self.access_log == "-":
            self._logFile = PerTurnWriter(StandardOutput(), self.reactor)
        elif self.access_log:
            self._logFile = PerTurnWriter(self._openLogFile(self.access_log), self.reactor)

    def log(self, request) -> None:
        if self.access_log:
            super().log(request)
