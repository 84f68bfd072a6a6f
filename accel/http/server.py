"""The client side of accel: the request twisted.web resources see, and the Site.

Connections are ``accel.http.connection.HTTPConnection`` (llhttp parsing, strict checks, fast cache
hits); what they don't answer themselves becomes an ``AccelRequest`` for the Site's resource. Its body is
a stream (``AccelRequest.body``) that starts before the body has arrived.
"""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import NO_BODY_CODES
from twisted.web.http import Request as HTTPRequest

from accel.http.accesslog import (access_log_line, format_access_line, json_access_line, open_access_log,
                                  request_label, tls_version)
from accel.http.body import RequestBody
from accel.http.errors import ErrorPages
from accel.http.header_rules import NO_RULES, HeaderRules
from accel.http.header_table import HeaderTable
from accel.http.connection import DeadlineSweep, HTTPConnection, field_kinds
from accel.http.traffic import Traffic
from accel.http.dates import http_date
from accel.config import Limits

KEEP_ALIVE_GRACE = 1.0  # stopping: seconds an idle keep-alive connection is kept for a request on its way


class AccelRequest(server.Request):
    """A request whose body is a stream (``self.body``) and which knows when it started (for %D).

    ``header_rules``' response rules are applied when the header section is written: the server's until
    a route is chosen, then the route's (``ReverseProxy``).
    """

    defaultContentType = None  # never invent a Content-Type the origin did not send
    header_rules: HeaderRules = NO_RULES
    _rules_applied = False
    # The state of a new request (class attributes: a request sets only what differs).
    queued = False
    _parsePOSTFormSubmission = False  # (accel streams bodies: ``body``)
    started = 0.0  # set_message gives the time the request's first byte arrived
    body: RequestBody | None = None
    log_origin = "-"
    log_cache = "-"
    log_extra = ""  # appended to the access-log line
    log_route = "-"  # the route's label (accel.http.traffic.route_label)
    log_tier = "memory"  # where a hit's body came from: "memory" or "disk"
    forwarded = False  # sent to an origin
    request_id = b"-"

    def __init__(self, channel, queued=None):
        # What twisted.web's Request.__init__ (and Componentized's) set, with HeaderTables for the fields: in
        # one call rather than three.
        self.notifications = []
        self.channel = channel
        self.client = channel.getPeer()
        self.host = channel.getHost()
        self.requestHeaders = HeaderTable()
        self.responseHeaders = HeaderTable()
        self.received_cookies = {}
        self.cookies = []
        self.transport = channel.transport
        self._adapterCache = {}
        self._secure = channel.isSecure()
        self._when_over: list = []

    def getHeader(self, key):
        if type(key) is bytes:
            return self.requestHeaders.last(key)  # (twisted.web's asks getRawHeaders: a call more)
        return super().getHeader(key)

    def isSecure(self) -> bool:
        return self._secure  # the connection's, asked once (``__init__``)

    def when_over(self, callback) -> None:
        """``callback(None)`` once the response is finished, or ``callback(reason)`` when the connection is
        lost before: ``notifyFinish`` without a Deferred for each watcher (several per proxied request)."""
        self._when_over.append(callback)

    def _over(self, reason) -> None:
        watchers, self._when_over = self._when_over, []
        for callback in watchers:
            try:
                callback(reason)
            except Exception:
                self._log.failure("a watcher of {request} failed", request=request_label(self))

    def _cleanup(self) -> None:
        super()._cleanup()
        self._over(None)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self._over(reason)  # (none left once the response finished: _cleanup took them)

    def set_message(self, message) -> None:
        """Take the parsed request line and header section (an ``accel.http.connection.Message``)."""
        self.started = message.started
        self.request_id = message.request_id
        self.method, self.uri, self.clientproto = message.method, message.target, message.version
        self.path, _, query = message.target.partition(b"?")
        self.args = parse_qs(query, 1) if query else {}
        self.requestHeaders.add_fields(message.headers)
        if not message.keep_alive and message.version == b"HTTP/1.1":
            self.responseHeaders.setRawHeaders(b"connection", [b"close"])  # RFC 9112 §9.6
        if message.length != 0:
            self.body = RequestBody(self, message.length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body is not None:
            self.body.feed(data)

    def body_complete(self) -> None:
        if self.body is not None:
            self.body.finish()

    def dispatch(self) -> None:
        """Start processing (the request's turn on its connection has come); a body follows as a stream."""
        if self.body is not None and not self.body.complete and self.clientproto == b"HTTP/1.1":
            expect = self.requestHeaders.getRawHeaders(b"expect")
            if expect and expect[0].lower() == b"100-continue":
                self.channel.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # RFC 9110 §10.1.1
        self.process()

    def process(self) -> None:
        self.site = self.channel.site
        self.header_rules = self.site.header_rules
        own = [(b"date", http_date())]  # (set in one call: setHeader is two each)
        if self.site.server_header:
            own.insert(0, (b"server", self.site.server_header))
        if self.request_id != b"-":
            own.append((b"x-request-id", self.request_id))
        self.responseHeaders.set_fields(own)
        try:
            resource = self.site.resource
            if not resource.isLeaf:  # (accel's ReverseProxy is: it takes every path)
                resource = self.site.getResourceFor(self)
            self.render(resource)
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
        rules = self.header_rules
        if rules.response and not self._rules_applied:
            if rules.touches(code, taken):
                return False  # a rule changes a stored field: the general path writes it
            rules.to_client(self.responseHeaders, code)
            self._rules_applied = True
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

    def write(self, data: bytes) -> None:
        if not self.startedWriting and not self._rules_applied and self.header_rules.response:
            self._rules_applied = True
            self.header_rules.to_client(self.responseHeaders, self.code)
        # twisted.web.http's own: server.Request.write adds a default Content-Type (accel has none) and an
        # encoder (accel's own compression runs in the relay).
        HTTPRequest.write(self, data)
        if not data or self.method == b"HEAD" or self.code in NO_BODY_CODES:  # (else the data took the head along)
            self.channel.release_head()

    def finish(self) -> None:
        if self.body is not None and not self.body.complete and not self._disconnected:
            # Answered before the client finished sending its body: close rather than resynchronise.
            self.setHeader(b"connection", b"close")
            self.channel.stop_reading()
            self.body.abandon()
        HTTPRequest.finish(self)  # (server.Request.finish only flushes the encoder accel does not use)

    def processingFailed(self, reason):
        self._log.failure("processing {request} failed", failure=reason, request=request_label(self))
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
            self.channel.loseConnection()


class AccelSite(server.Site):
    """The factory of client connections; carries the front-end settings connections and requests read.

    ``fast_hits`` (injected by ``accel.app``) answers cache hits from prepared bytes; ``hsts_field`` is
    the ``Strict-Transport-Security`` field line sent over TLS (``accel.tls.https``).
    """

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
        fast_hits=None,
        header_rules: HeaderRules = NO_RULES,
    ):
        super().__init__(resource, logFormatter=access_log_line, reactor=reactor)
        self.limits = limits
        self.errors = errors or ErrorPages()  # the pages of the channel's refusals and of failures (500)
        self.hsts = hsts  # Strict-Transport-Security of refusals over TLS (requests: accel.tls.https.with_hsts)
        self.draining = False  # stopping: requests read from now on are answered with Connection: close
        self.keep_alive_grace: float | None = None  # stopping: how long an idle connection may stay
        self.connections: set[HTTPConnection] = set()  # open client connections
        self.deadlines = DeadlineSweep(self.connections, self.reactor)  # their header and idle timeouts
        self._all_closed: list[Deferred] = []
        self.server_header = server_header.encode("latin-1") if server_header else None
        self.server_field = b"Server: %s\r\n" % self.server_header if self.server_header else b""
        self.hsts_field = b"Strict-Transport-Security: %s\r\n" % hsts if hsts else b""  # on fast hits over TLS
        self.access_log = access_log
        self.use_fast_hits(fast_hits)
        self.header_rules = header_rules  # the [server] header rules, for requests no route has taken
        self.traffic = Traffic()  # this process's figures; accel.app gives every generation's Site the same
        self.access_log_format = "combined"
        self.trusts = lambda peer: False  # whether a peer is a trusted proxy (its X-Request-Id is kept)
        self._request_ids = 0
        self._request_id_prefix = b"%08x-" % int.from_bytes(os.urandom(4), "big")

    def use_fast_hits(self, fast_hits) -> None:
        """Answer cache hits with ``fast_hits`` (None: every request takes the general path) on the connections
        made from now on."""
        self.fast_hits = fast_hits
        self.field_kinds = field_kinds(fast_hits)  # what the connections' check_fields note of request fields

    def buildProtocol(self, addr) -> HTTPConnection:
        return HTTPConnection(self)

    def stop_serving(self, grace: float = KEEP_ALIVE_GRACE) -> Deferred:
        """Stopping: fires once every client connection has closed. Requests read from now on are answered
        with ``Connection: close``, and each keep-alive connection stays open for its next request, which a
        client may be sending already, unless it is idle for ``grace`` seconds (RFC 9112 §9.6: closing an
        idle connection races with the client's next request, so a connection is closed after a response
        that announced it, or when its client has clearly stopped sending)."""
        self.draining = True
        self.keep_alive_grace = grace
        for connection in list(self.connections):
            connection.drain()
        if not self.connections:
            return succeed(None)
        d = Deferred()
        self._all_closed.append(d)
        return d

    def connection_closed(self, connection: HTTPConnection) -> None:
        connections = self.connections
        connections.discard(connection)
        if connections:
            return
        if not self.numPorts:
            # Not listening (any more): no timer outlives the connections. While listening, the sweep stops
            # by itself when it finds none left, rather than being cancelled and made again for each connection.
            self.deadlines.idle()
        if self._all_closed:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def new_request_id(self) -> bytes:
        """A request id unique to this process's life: a random prefix and a count."""
        self._request_ids += 1
        return self._request_id_prefix + b"%x" % self._request_ids

    def log_hit(self, peer, message, code: int, sent: int, origin: str, route: str, transport) -> None:
        """The access-log line of a request the connection answered itself (a fast cache hit)."""
        if self._logFile is None:
            return
        if self.access_log_format == "json":
            line = json_access_line(peer, message.method, message.target, code, sent, message.started, route,
                                    origin, "memory", tls_version(transport), message.request_id)
        else:
            referer = user_agent = None
            for name, value in message.headers:
                lower = name.lower()
                if lower == b"referer":
                    referer = value
                elif lower == b"user-agent":
                    user_agent = value
            line = format_access_line(
                self._logDateTime, peer, message.method, message.target, message.version, code, sent, referer,
                user_agent, message.started, origin, "hit",
            )
        self._logFile.write(line + "\n")

    _log_open = False

    def startFactory(self) -> None:
        super().startFactory()
        self._log_open = True
        self._logFile = open_access_log(self.access_log, self.reactor) if self.access_log else None

    def use_access_log(self, path: str | None) -> None:
        """Write the access log to ``path`` from now on (a reload); the same path is reopened (a rotation).

        Not twisted.web.server.Site's rotating LogFile: it renames the file every 1 MB, on the reactor thread,
        keeping every old file. Rotate with logrotate, then SIGUSR1 (or SIGHUP) makes accel reopen the file.
        """
        writer = getattr(self, "_logFile", None)
        if path == self.access_log and writer is not None:
            writer.reopen()
            return
        if writer is not None:
            writer.close()
            self._logFile = None
        self.access_log = path
        if path and self._log_open:
            self._logFile = open_access_log(path, self.reactor)

    def stopFactory(self) -> None:
        if not self.connections:
            self.deadlines.idle()  # (connection_closed stops it once the last connection has closed)
        self._log_open = False
        if getattr(self, "_logFile", None) is not None:
            self._logFile.close()
            self._logFile = None
        super().stopFactory()

    def log(self, request) -> None:
        """A finished request: counted in the traffic figures, and its access-log line written."""
        outcome = outcome_of(request)
        self.traffic.request(request.log_route, request.method, request.code, outcome,
                             time.monotonic() - request.started, request.uri)
        if not self.access_log or self._logFile is None:
            return
        if self.access_log_format == "json":
            self._logFile.write(json_access_line(
                request.getClientAddress(), request.method, request.uri, request.code, request.sentLength,
                request.started, request.log_route, request.log_origin, outcome, tls_version(request.channel.transport),
                request.request_id) + "\n")
        else:
            super().log(request)


def outcome_of(request) -> str:
    """The request's cache outcome in the figures (``accel.http.traffic.OUTCOMES``)."""
    cache = request.log_cache
    if cache == "hit":
        return request.log_tier
    if cache == "miss":
        return "miss"
    if cache == "bypass" or request.forwarded:
        return "pass"
    return "none"
