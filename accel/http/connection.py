"""The client connection: HTTP/1.1 parsed by llhttp (``httptools``), cache hits written from prepared bytes,
everything else handed to twisted.web as a ``Request``.

``HTTPConnection`` is a plain Twisted protocol in the shape of uvicorn's ``httptools_impl``: the parser
calls ``on_message_begin``, ``on_url``, ``on_header``, ``on_headers_complete``, ``on_body`` and
``on_message_complete``. When a request's header section is complete it is checked (below), then

* a GET or HEAD without a body, with nothing before it on the connection, is offered to ``fast_hits``
  (injected by ``accel.app``: the cache's memory tier). A ``FastHit`` is written at once — status line,
  the connection's own fields, the stored header section and body, all bytes prepared at store time — and
  no ``Request`` is built;
* anything else becomes an ``AccelRequest`` for the Site's resource (``ReverseProxy``). The connection is
  the request's channel (the part of ``twisted.web.http.HTTPChannel`` that ``Request`` uses: ``write``,
  ``writeHeaders``, ``registerProducer``, ``requestDone``...). A request with a body is processed as soon as
  its header section is complete and its body streams through ``AccelRequest.body`` with backpressure.

Pipelined requests wait in ``queue`` and are answered in order; a fast hit behind a slow request waits its
turn. At most ``PIPELINE_LIMIT`` requests wait before reading from the client stops.

Refused with 400 before anything reaches an origin (RFC 9112, RFC 9110), then the connection closes:
anything llhttp rejects — obs-fold (§5.2), bare CR (§2.2), whitespace before the colon (§5.1),
Content-Length with Transfer-Encoding or repeated or conflicting (§6.3), chunk sizes that are not hex or
overflow (§7.1) — and, checked here, a version other than HTTP/1.0 and HTTP/1.1, a transfer coding other
than ``chunked``, a missing (HTTP/1.1) or repeated Host, or a Host that is not a valid host (§3.2, RFC 3986
§3.2.2). A method llhttp does not know is 501 (RFC 9110 §9.1). Over the limits: a request-target longer
than ``max_target_length`` is 414, a header section over ``max_header_bytes`` or ``max_headers`` is 431.

Persistence (RFC 9112 §9.3): HTTP/1.1 keeps the connection unless the client sent ``Connection: close``
(answered with ``Connection: close``); HTTP/1.0 always closes after the response. A new connection that
sends nothing for ``header_timeout``, or one idle for ``idle_timeout`` after a response, is closed; a
request whose header section is not complete ``header_timeout`` after its first byte is answered 408.
These deadlines are checked every ``SWEEP_TICK`` seconds by one timer for all the site's connections
(``DeadlineSweep``), so they are met up to a tick late.
"""

from __future__ import annotations

import re
import time
from collections import deque
from http import HTTPStatus

import httptools
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import _PullToPush
from twisted.web.http_headers import Headers
from zope.interface import implementer

from accel.config import Limits
from accel.http.accesslog import peer_label
from accel.http.dates import http_date
from accel.http.header_rules import NO_RULES
from accel.http.immediate import PLAIN_TCP as _PLAIN_TCP
from accel.http.immediate import nothing_queued, write_now
from accel.http.traffic import Traffic

log = Logger()

PIPELINE_LIMIT = 16
SWEEP_TICK = 0.5  # seconds between two checks of the connections' deadlines (DeadlineSweep)
_JOIN_UP_TO = 16384  # a fast hit's body up to this size is sent in one piece with its header section

# RFC 9110 §7.2: Host = uri-host [ ":" port ]; uri-host is an IP-literal or a reg-name (RFC 3986 §3.2.2,
# IPv4 addresses are reg-names syntactically).
_VALID_HOST = re.compile(
    rb"(?:\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?\Z"
)


_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,200}\Z")  # visible ASCII, as in a log line

# What check_fields notes of a request field, by its lower-case name; the fast path's names (fast_hits.not_plain,
# fast_hits.conditional) join these in ``field_kinds``.
_HOST, _LENGTH, _CODING, _ACCEPT_ENCODING, _NOT_PLAIN, _REQUEST_ID_FIELD, _CONDITIONAL = range(7)
_FIELD_KINDS = {b"host": _HOST, b"content-length": _LENGTH, b"transfer-encoding": _CODING,
                b"accept-encoding": _ACCEPT_ENCODING,
                b"upgrade": _NOT_PLAIN,  # never a fast hit (accel.proxy.websocket may take it)
                b"x-request-id": _REQUEST_ID_FIELD}
_SEEN_HOSTS: set[bytes] = set()  # Host values found valid (a regular expression costs a microsecond or two)
_SEEN_HOSTS_KEPT = 1024


def field_kinds(fast_hits) -> dict[bytes, int]:
    """The table of the request fields ``check_fields`` notes, with ``fast_hits``'s (a site makes it once)."""
    if fast_hits is None:
        return _FIELD_KINDS
    return {**dict.fromkeys(fast_hits.conditional, _CONDITIONAL), **dict.fromkeys(fast_hits.not_plain, _NOT_PLAIN),
            **_FIELD_KINDS}


def valid_host(value: bytes) -> bool:
    """RFC 9112 §3.2: ``value`` is a Host field's valid value (``_VALID_HOST``)."""
    if value in _SEEN_HOSTS:
        return True
    if not _VALID_HOST.match(value):
        return False
    if len(_SEEN_HOSTS) >= _SEEN_HOSTS_KEPT:
        _SEEN_HOSTS.clear()
    _SEEN_HOSTS.add(value)
    return True

_CLOSED = Failure(ConnectionDone())  # the reason of every orderly close (one, as Twisted's reactor keeps one)


class Refused(Exception):
    """Raised from a parser callback: the request is answered with ``code`` and the connection closed."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class Message:
    """One request as parsed: what the fast path and ``AccelRequest`` are built from. (The defaults are class
    attributes: a message sets only what its request has.)"""

    method: bytes
    version: bytes
    keep_alive: bool
    length: int | None  # of the body: 0, a Content-Length, or None (chunked)
    target = b""
    host = b""
    request = None  # the AccelRequest, once one is built
    plain = True  # no field that keeps it off the fast path (fast_hits.not_plain)
    conditional = False  # a field in fast_hits.conditional (If-None-Match, If-Modified-Since)
    accept_encoding: bytes | None = None  # its lines joined, for the fast path's content coding
    request_id: bytes | None = None  # X-Request-Id as sent, then the one accel uses (request_id_for)

    started: float  # time.monotonic() when its first bytes were parsed
    headers: list[tuple[bytes, bytes]]  # as received (both set by on_message_begin, without an __init__ to call)


@implementer(IPushProducer)
class HTTPConnection(Protocol):
    # The state of a new connection (class attributes: a connection made per request sets only what differs).
    message: Message | None = None  # being parsed
    head_bytes = 0  # received while the header section of ``message`` is incomplete
    closing = False  # no further requests are read or answered
    reading = True  # False: what the client sends next is ignored
    _lost = False  # loseConnection was called
    _parsing = False  # inside parser.feed_data: closing waits until it returns
    _close_when_parsed = False
    paused_pipeline = False
    _requestProducer = None
    _requestProducerStreaming = None
    _deadline: float | None = None  # when the connection times out (DeadlineSweep), if it can
    _deadline_kind = "first"
    _held_head = b""  # a response's header section waiting for its first body bytes (writeHeaders)
    _secure: bool | None = None
    _producing = False  # registered as the transport's producer (with the first general-path request)
    _peer = _host = None
    tunnel = None  # after a protocol switch: the protocol given the client's bytes (take_over)
    _after_upgrade = b""  # what the client sent after its Upgrade request, until take_over

    def __init__(self, site):
        self.site = site
        self.factory = site  # Request.finish logs through channel.factory
        self.limits: Limits = site.limits
        self.reactor = site.reactor
        self.fast_hits = site.fast_hits
        self.traffic: Traffic = site.traffic
        self.queue: deque[Message] = deque()
        self.parser = httptools.HttpRequestParser(self)
        self.field_kinds = site.field_kinds

    # -- the connection ------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        site = self.site
        site.connections.add(self)
        self.traffic.connections += 1
        site.deadlines.watch()
        # A new connection's first request is due within header_timeout (nginx's client_header_timeout); its
        # _deadline_kind is "first" (the class attribute).
        self._deadline = self.reactor.seconds() + self.limits.header_timeout

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        traffic = self.traffic
        if traffic.counting:
            traffic.bytes_in += len(data)  # (Traffic.received, inline on the way of every request)
        if self.head_bytes >= 0:
            self.head_bytes += len(data)
        self._parsing = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, Refused):
                raise
            self.refuse(error.__context__.code)
        except httptools.HttpParserInvalidMethodError:
            self.refuse(501)
        except httptools.HttpParserUpgrade as upgrade:
            # No more HTTP after an Upgrade (or CONNECT): the request is answered (then the connection
            # closes), unless a WebSocket tunnel takes the connection over (take_over).
            self._after_upgrade = data[upgrade.args[0]:]
            self.closing_after_queue()
        except httptools.HttpParserError:
            self.refuse(400)
        else:
            if self.message is not None and self.head_bytes >= 0:  # a header section is incomplete
                if self.head_bytes > self.limits.max_header_bytes:
                    self.refuse(431)
                elif self._deadline_kind != "header":
                    # It is due header_timeout after its first bytes (these: a request that came whole, as
                    # nearly all do, never sets this deadline).
                    self._set_deadline("header", self.limits.header_timeout)
        finally:
            self._parsing = False
        if self._close_when_parsed:
            self._close_when_parsed = False
            self._close()

    def connectionLost(self, reason) -> None:
        self.closing = True
        self.traffic.connections -= 1
        self._deadline = None
        self.parser = None  # it holds this protocol's callbacks: no cycle outlives the connection
        self.site.connection_closed(self)
        if self.tunnel is not None:
            self.tunnel.connectionLost(reason)
            return
        queue = self.queue
        if queue:
            for message in queue:
                if message.request is not None:
                    message.request.connectionLost(reason)
            queue.clear()

    # -- parser callbacks -----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.message = message = Message()
        message.started = time.monotonic()
        message.headers = []

    def on_url(self, part: bytes) -> None:
        message = self.message
        message.target += part
        if len(message.target) > self.limits.max_target_length:
            raise Refused(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.message.headers
        headers.append((name, value))
        if len(headers) > self.limits.max_headers:
            raise Refused(431)

    def on_headers_complete(self) -> None:
        message = self.message
        parser = self.parser
        version = parser.get_http_version()
        if version == "1.1":
            message.version = b"HTTP/1.1"
        elif version == "1.0":
            message.version = b"HTTP/1.0"
        else:
            raise Refused(400)
        message.method = parser.get_method()
        # A stopping server answers with Connection: close, so clients move to the ones that go on serving.
        message.keep_alive = version == "1.1" and parser.should_keep_alive() and not self.site.draining
        self.check_fields(message)
        if message.request_id is None:
            message.request_id = self.site.new_request_id()
        else:
            message.request_id = self.request_id_for(message.request_id)
        self.head_bytes = -1  # the header section is complete: body bytes don't count
        self._deadline = None
        self._deadline_kind = "none"
        if message.length == 0 and not self.queue and message.plain and message.method in (b"GET", b"HEAD"):
            if self.fast_hits is not None and self.answer_fast(message):
                return
        self.queue.append(message)
        if message.length != 0 or len(self.queue) == 1:
            self.request_for(message)
            if len(self.queue) == 1:
                message.request.dispatch()
        if len(self.queue) > PIPELINE_LIMIT and not self.paused_pipeline:
            self.paused_pipeline = True
            self.transport.pauseProducing()

    def on_body(self, data: bytes) -> None:
        request = self.message.request
        if request is not None:
            request.handleContentChunk(data)

    def on_message_complete(self) -> None:
        message, self.message = self.message, None
        self.head_bytes = 0
        if message.request is not None:
            message.request.body_complete()
        if not message.keep_alive:
            self.closing_after_queue()
        elif not self.queue:
            self._deadline_kind = "idle"
            self._deadline = self.reactor.seconds() + (
                self.idle_timeout() if self.site.draining else self.limits.idle_timeout)

    # -- checks ---------------------------------------------------------------------------------------

    def check_fields(self, message: Message) -> None:
        """Host (RFC 9112 §3.2), framing (§6) and the size of the header section; notes what the fast
        path needs to know (a header field that makes a request not plain)."""
        hosts = 0
        length = 0
        size = len(message.target)
        kinds = self.field_kinds
        for name, value in message.headers:
            size += len(name) + len(value) + 4
            kind = kinds.get(name.lower())
            if kind is None:
                continue
            if kind == _HOST:
                hosts += 1
                message.host = value
                if not valid_host(value):
                    raise Refused(400)
            elif kind == _LENGTH:
                length = int(value)  # llhttp checked it: digits only, not repeated
            elif kind == _CODING:
                if value.strip().lower() != b"chunked":
                    raise Refused(400)  # RFC 9112 §6.1: chunked is the only coding accel decodes
                length = None
            elif kind == _ACCEPT_ENCODING:
                ae = message.accept_encoding
                message.accept_encoding = value if ae is None else ae + b", " + value
            elif kind == _NOT_PLAIN:
                message.plain = False
            elif kind == _REQUEST_ID_FIELD:
                message.request_id = value
            else:
                message.conditional = True
        if size > self.limits.max_header_bytes:
            raise Refused(431)
        if hosts > 1 or (hosts == 0 and message.version == b"HTTP/1.1"):
            raise Refused(400)
        message.length = length

    def request_id_for(self, given: bytes | None) -> bytes:
        """The request's id: the X-Request-Id it came with when the peer is a trusted proxy and the value is
        a plain token, else a new one. It is sent to the origin and echoed to the client."""
        if given is not None and _REQUEST_ID.match(given) and self.site.trusts(self.getPeer()):
            return given
        return self.site.new_request_id()

    def refuse(self, code: int) -> None:
        """Answer a request that must not be processed, and close: the rest of the stream can't be trusted.

        The body is the site's error page for ``code`` (an ``error_documents`` file when one is configured).
        """
        if self.closing:
            return
        log.info("refused a request from {peer}: {code}", peer=peer_label(self.getPeer()), code=code)
        site = self.site
        body, content_type = site.errors.page(code)
        fields = [b"HTTP/1.1 %d %s\r\n" % (code, HTTPStatus(code).phrase.encode("ascii"))]
        rules = getattr(site, "header_rules", NO_RULES)
        if rules.response:  # the server's "always" rules: the fields as a Headers they can change
            headers = Headers()
            if site.server_header:
                headers.setRawHeaders(b"Server", [site.server_header])
            headers.setRawHeaders(b"Date", [http_date()])
            if site.hsts and self.isSecure():
                headers.setRawHeaders(b"Strict-Transport-Security", [site.hsts])
            headers.setRawHeaders(b"Content-Type", [content_type])
            headers.setRawHeaders(b"Cache-Control", [b"no-store"])
            rules.to_client(headers, code)
            fields += [b"%s: %s\r\n" % (name, value) for name, values in headers.getAllRawHeaders() for value in values]
            fields.append(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        else:
            if site.server_header:
                fields.append(b"Server: %s\r\n" % site.server_header)
            fields.append(http_date.field())
            if site.hsts_field and self.isSecure():
                fields.append(site.hsts_field)
            fields.append(b"Content-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
                          b"Connection: close\r\n\r\n" % (content_type, len(body)))
        fields.append(body)
        self.writeSequence(fields)
        message = self.message
        self.traffic.request("-", getattr(message, "method", b""), code, "none",
                             time.monotonic() - message.started if message else 0.0,
                             message.target if message else b"")
        self.stop_reading()
        self.loseConnection()

    # -- answering ------------------------------------------------------------------------------------

    def answer_fast(self, message: Message) -> bool:
        """Write a cache hit from prepared bytes; False (nothing written) when the general path must answer.

        The fields are the general path's, in its order: the connection's own (Connection: close, Server,
        Date unless the stored response has one), the stored section, then HSTS on TLS.
        """
        secure = self._secure
        if secure is None:
            secure = self.isSecure()
        hit = self.fast_hits.answer(secure, message, self.getPeer)
        if hit is None:
            return False
        site = self.site
        hsts = site.hsts_field if secure else b""
        if (hsts and hit.has_hsts) or (site.server_field and hit.has_server):
            return False  # the general path merges those with the stored fields
        closing = not message.keep_alive and message.version == b"HTTP/1.1"
        line = (message.version, hit.status_line, b"Connection: close\r\n" if closing else b"", site.server_field,
                b"" if hit.replaces_date else http_date.field(), b"X-Request-Id: ", message.request_id)
        get = message.method != b"HEAD"
        if get and not hsts and hit.rest:
            data = b"".join((*line, hit.rest))  # the commonest: the rest joined when the hit was made
            apart = b""
        else:
            data = b"".join((*line, b"\r\n", hit.section, hsts, b"\r\n"))
            apart = hit.body if get else b""  # the body, sent after the header section if it is large
            if len(apart) <= _JOIN_UP_TO:
                data, apart = data + apart, b""
        last = not message.keep_alive  # (closed below: the FIN leaves with the last bytes)
        if apart:  # each part goes straight to the socket as far as it fits; Twisted sends the rest
            write_now(self.transport, data)
            write_now(self.transport, apart, last)
        else:
            write_now(self.transport, data, last)
        traffic = self.traffic
        if traffic.counting:
            traffic.bytes_out += len(data) + len(apart)  # (Traffic.sent, inline)
            traffic.answered(hit.counted_as, time.monotonic() - message.started, message.target)
        if site.access_log:
            site.log_hit(self.getPeer(), message, hit.status, len(hit.body) if get else 0, hit.origin, hit.route,
                         self.transport)
        if not message.keep_alive:
            self.loseConnection()
        return True

    def request_for(self, message: Message):
        """The twisted.web request for ``message``."""
        if not self._producing:
            # A full write buffer pauses a response's producer (fast hits have none): see pauseProducing.
            self._producing = True
            self.transport.registerProducer(self, True)
        request = self.site.requestFactory(self)
        request.set_message(message)
        message.request = request
        return request

    def requestDone(self, request) -> None:
        """Called by the request at the head of the queue when its response is complete."""
        message = self.queue.popleft()
        assert message.request is request
        if not message.keep_alive or self.closing:
            self.loseConnection()
            return
        self.next_in_queue()

    def next_in_queue(self) -> None:
        while self.queue:
            message = self.queue[0]
            if message.request is None:
                if message.plain and self.fast_hits is not None and message.method in (b"GET", b"HEAD"):
                    self.queue.popleft()
                    if self.answer_fast(message):
                        if self.closing:
                            return
                        continue
                    self.queue.appendleft(message)
                self.request_for(message)
            message.request.dispatch()
            return
        if not self.reading:
            self.loseConnection()
            return
        if self.paused_pipeline:
            self.paused_pipeline = False
            self.transport.resumeProducing()
        if self.message is None:
            self._set_deadline("idle", self.idle_timeout())

    def take_over(self, request, head: bytes, tunnel) -> None:
        """Switch protocols after ``request`` (the last one read: it asked to upgrade): write ``head`` (the
        101), then the connection is ``tunnel``'s: it gets every byte the client sends (``dataReceived``)
        and the close (``connectionLost``). The request is over without a response of its own."""
        assert self.queue and self.queue[0].request is request and len(self.queue) == 1
        self.queue.clear()
        self._deadline = None
        self._unregister()
        self.transport.write(head)
        self.tunnel = tunnel
        self.dataReceived = tunnel.dataReceived  # type: ignore[method-assign]
        after, self._after_upgrade = self._after_upgrade, b""
        if after:
            tunnel.dataReceived(after)

    def closing_after_queue(self) -> None:
        """Read nothing more; close once the queued requests are answered."""
        if self._lost:
            return  # closing already (a response that said Connection: close)
        self.stop_reading()
        if not self.queue and self.message is None:
            self.loseConnection()

    def stop_reading(self) -> None:
        """Ignore whatever else the client sends on this connection; close once the queue is answered."""
        self.reading = False
        self.dataReceived = lambda data: None  # type: ignore[method-assign]

    # -- timeouts -------------------------------------------------------------------------------------

    def idle_timeout(self) -> float:
        """How long an idle keep-alive connection waits for its next request: ``idle_timeout``, or while the
        server stops, the short grace its clients have to send one more request (``AccelSite.stop_serving``)."""
        grace = getattr(self.site, "keep_alive_grace", None)
        return self.limits.idle_timeout if grace is None else min(grace, self.limits.idle_timeout)

    def drain(self) -> None:
        """The server stops: a connection between requests (or that has sent nothing yet) waits for one more
        request only ``idle_timeout()``; the next response says Connection: close and ends it."""
        if self.tunnel is None and not self.closing and not self.queue and self.message is None:
            self._set_deadline("idle", self.idle_timeout())  # a WebSocket tunnel goes on until shutdown_timeout

    def _set_deadline(self, kind: str, seconds: float) -> None:
        """Time the connection out ``seconds`` from now (on the site's ``DeadlineSweep``)."""
        self._deadline_kind = kind
        self._deadline = self.reactor.seconds() + seconds

    def deadline_passed(self) -> None:
        """Called by the sweep once the deadline has passed: a header section still incomplete is 408, an idle
        connection (or a new one that sent nothing) is closed."""
        self._deadline = None
        if self.closing:
            return
        if self._deadline_kind == "header":
            self.refuse(408)
        else:
            self.loseConnection()

    # -- what twisted.web's Request needs of its channel ----------------------------------------------

    def isSecure(self) -> bool:
        if self._secure is None:
            transport = self.transport  # (plain TCP, the commonest, without asking zope.interface)
            self._secure = type(transport) not in _PLAIN_TCP and ISSLTransport(transport, None) is not None
        return self._secure

    def getPeer(self):
        if self._peer is None:
            self._peer = self.transport.getPeer()
        return self._peer

    def getHost(self):
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    def writeHeaders(self, version, code, reason, headers) -> None:
        """Twisted's Request writes its header section, then at once the first body bytes: the section is
        held until ``write`` (or ``release_head``) so that both leave in one ``send``."""
        parts = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        self._held_head = b"".join(parts)

    def release_head(self) -> None:
        """Send a held header section that no body bytes followed (HEAD, 204, 304, an empty body)."""
        if self._held_head:
            self.write(b"")

    def write(self, data: bytes) -> None:
        if self._held_head:
            data, self._held_head = self._held_head + data, b""
        self.traffic.sent(len(data))
        write_now(self.transport, data)  # sent at once when it can be (accel.http.immediate)

    def writeSequence(self, parts) -> None:
        if self._held_head:
            parts, self._held_head = [self._held_head, *parts], b""
        self.traffic.sent(sum(map(len, parts)))
        self.transport.writeSequence(parts)

    def loseConnection(self) -> None:
        """Close once what was written is sent (the transport waits for no producer of ours); called from
        a parser callback, the close waits until the parser returns (``dataReceived``)."""
        self.closing = True
        if not self._lost:
            self._lost = True
            self._unregister()
            if self._parsing:
                self._close_when_parsed = True
            else:
                self._close()

    def _unregister(self) -> None:
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()

    def _close(self) -> None:
        """The orderly close. Twisted's ``loseConnection`` watches for writability even when nothing is left to
        write, then sends nothing, then closes: two epoll_ctl, a loop iteration and an empty send per
        connection. On a plain TCP connection whose writes all went to the socket (``send``), it is done at once,
        as Twisted does it then (shutdown(SHUT_RDWR), close, ``connectionLost``)."""
        if nothing_queued(self.transport):
            self.transport.connectionLost(_CLOSED)
        else:
            self.transport.loseConnection()

    def registerProducer(self, producer, streaming: bool) -> None:
        if self._requestProducer is not None:
            raise RuntimeError(f"Cannot register producer {producer}: {self._requestProducer} is registered")
        if not streaming:
            producer = _PullToPush(producer, self)
        self._requestProducer = producer
        self._requestProducerStreaming = streaming
        if not streaming:
            producer.startStreaming()

    def unregisterProducer(self) -> None:
        if self._requestProducer is None:
            return
        if not self._requestProducerStreaming:
            self._requestProducer.stopStreaming()
        self._requestProducer = None
        self._requestProducerStreaming = None

    # IPushProducer, for the transport: a full write buffer pauses the response's producer.

    def pauseProducing(self) -> None:
        if self._requestProducer is not None:
            self._requestProducer.pauseProducing()

    def resumeProducing(self) -> None:
        if self._requestProducer is not None:
            self._requestProducer.resumeProducing()

    def stopProducing(self) -> None:
        if self._requestProducer is not None:
            self._requestProducer.stopProducing()


class DeadlineSweep:
    """The header and idle timeouts of a site's connections, checked every ``tick`` seconds by one delayed call
    rather than by a delayed call per connection (created and cancelled for nearly every one): a connection
    times out on the first tick at or after its deadline, as nginx's ``timer_resolution`` allows. The sweep
    runs while there are connections: ``watch`` when one opens; a tick that finds none stops it. ``idle``
    stops it at once (the site calls it when the last connection closes while no port listens, or when the
    last port stops with no connection open): while the site listens, a server answering one connection at
    a time does not make a delayed call and cancel it for each."""

    def __init__(self, connections: set[HTTPConnection], reactor, tick: float = SWEEP_TICK):
        self.connections = connections
        self.reactor = reactor
        self.tick = tick
        self.pending = None  # the next sweep (a delayed call), None while it does not run

    def watch(self) -> None:
        if self.pending is None:
            self.pending = self.reactor.callLater(self.tick, self.sweep)

    def idle(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None

    def sweep(self) -> None:
        self.pending = None
        now = self.reactor.seconds()
        for connection in [c for c in self.connections if c._deadline is not None and c._deadline <= now]:
            connection.deadline_passed()
        if self.connections:
            self.watch()
