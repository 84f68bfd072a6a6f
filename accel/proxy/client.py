"""One connection to an origin: HTTP/1.1 requests out, responses parsed by llhttp (httptools), one at a time.

``OriginConnection`` is a plain Twisted protocol. ``send`` writes a request head and streams its body
(the body is the transport's producer, so a slow origin pauses the upload and with it the client). The
response is parsed by ``httptools.HttpResponseParser`` and reported to the request's ``Listener``:

* interim responses (1xx, RFC 9110 §15.2): ``100 Continue`` is consumed (the front end has already
  told the client to go on); every other 1xx but 101 goes to ``Listener.interim``;
* the final response's head: ``Listener.head`` with an ``OriginResponse``, whose body follows as it
  arrives, paced by whoever reads it (``deliverBody``: pausing the reader pauses the socket);
* a connection that breaks before the final head: ``Listener.broken``, saying whether the request may be
  retried (nothing came back on a connection that had already served a request: the reuse race).

Framing (RFC 9112 §6.3): no body for HEAD, 1xx, 204 and 304; else chunked (trailer fields dropped), else
Content-Length, else the body runs until the origin closes, and is complete only if it closed cleanly.
When a response is over, the connection goes back to its pool, reusable unless the origin or HTTP/1.0
said otherwise (llhttp's ``should_keep_alive``) or the upload was still running (the origin answered
early: the rest of the stream cannot be trusted).

A 101 (RFC 9110 §15.2.2) ends HTTP on the connection. It is accepted only for a request sent with
``upgrade=True`` (a WebSocket handshake, ``accel.proxy.websocket``): the connection leaves its pool
(``lost`` is called), ``Listener.head`` gets the 101, and whoever takes it calls ``take_over`` to receive
the connection's bytes from then on (those that came with the 101 first). An unasked 101 breaks the
exchange.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol as Interface

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

from accel.http.headers import RawFields
from accel.http.immediate import write_now

# RFC 9112 §6.3 item 1 and RFC 9110 §15.3.5, §15.4.5: these final responses never have a body.
NO_BODY_STATUS = frozenset({204, 304})
# Twisted's Agent sends "Content-Length: 0" for these when there is no body; so does accel (RFC 9110 §8.6).
_EXPECTS_BODY = frozenset({b"POST", b"PUT", b"PATCH"})
DRAIN_LIMIT = 64 * 1024  # an unwanted body up to this long is read to keep the connection; a longer one closes it


class OriginProtocolError(Exception):
    """The origin's bytes are not an HTTP/1.1 response accel can relay."""


class Listener(Interface):
    """What a request in flight hears from its connection."""

    def interim(self, code: int, phrase: bytes, fields: RawFields) -> None: ...

    def head(self, response: OriginResponse) -> None: ...

    def broken(self, reason: Failure, retryable: bool) -> None: ...

    def progress(self) -> None: ...


class OriginResponse:
    """A final response from an origin; its body streams to the protocol given to ``deliverBody``.

    ``length`` is the body's length when known in advance (0 without a body), else ``UNKNOWN_LENGTH``.
    The body protocol gets ``connectionLost(Failure(ResponseDone()))`` when the body is complete, any other
    failure when it broke off. Its transport (this object) pauses, resumes and stops the origin connection.
    """

    def __init__(self, connection: OriginConnection, code: int, phrase: bytes, version: bytes, fields: RawFields, length):
        self.connection: OriginConnection | None = connection
        self.code = code
        self.phrase = phrase
        self.version = version
        self.fields = fields
        self.length = length
        self.claimed = False  # someone took the body (deliverBody) or gave it up (release)
        self.received = 0  # body bytes so far
        self.ended: Failure | None = None
        self._protocol = None

    def deliverBody(self, protocol) -> None:
        self.claimed = True
        ended = self.ended
        self._protocol = protocol
        protocol.makeConnection(self)
        if ended is not None:  # (a body already over: nothing more will reach the protocol)
            self._protocol = None
            protocol.connectionLost(ended)

    def release(self) -> None:
        """Nobody (or nobody any more) reads this body. An unread short one is read and dropped, so that the
        connection stays usable (a 304's, an error page's); else an unfinished body closes the connection."""
        self.claimed = True
        if self.connection is None:
            return
        if self._protocol is None and self.length is not UNKNOWN_LENGTH and self.length <= DRAIN_LIMIT:
            self._protocol = _DROP
        else:
            self.stopProducing()

    # Fed by the connection -------------------------------------------------------------------------

    def _data(self, data: bytes) -> None:
        self.received += len(data)
        self._protocol.dataReceived(data)  # claimed as the head arrived: see accel.proxy.origin._Request.head

    def _end(self, reason: Failure | None) -> None:
        """The body is over: complete when ``reason`` is None."""
        self.connection = None
        self.ended = _DONE if reason is None else reason
        protocol, self._protocol = self._protocol, None  # (the protocol's transport is this: no cycle left)
        if protocol is not None:
            protocol.connectionLost(self.ended)

    # The body reader's transport (IPushProducer) -----------------------------------------------------

    def pauseProducing(self) -> None:
        if self.connection is not None:
            self.connection.pause_reading()

    def resumeProducing(self) -> None:
        if self.connection is not None:
            self.connection.resume_reading()

    def stopProducing(self) -> None:
        if self.connection is not None:
            self.connection.abort()


_DONE = Failure(ResponseDone())  # the end of every complete body: one immutable Failure will do


class _Drop:
    """Reads a body nobody wants."""

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass


_DROP = _Drop()


class _SkipBody(Exception):
    """Raised from the parser's head callback: llhttp cannot be told that a response to HEAD has no body."""


class OriginConnection(Protocol):
    """An HTTP/1.1 client connection that carries one request at a time for its pool.

    ``released(connection, reusable)`` is called when an exchange is over; ``lost(connection)`` when the
    connection has closed.
    """

    def __init__(self, released: Callable[[OriginConnection, bool], None], lost: Callable[[OriginConnection], None]):
        self.released = released
        self.lost = lost
        self.parser = HttpResponseParser(self)
        self.listener: Listener | None = None
        self.response: OriginResponse | None = None
        self.method = b""
        self.served = 0  # requests sent on this connection
        self.heard = False  # any byte of the current exchange's response arrived
        self.uploading = False
        self.closed = False  # closed, or closing after an abort
        self.paused = False
        self.idle_since = 0.0  # when the connection last went back to its pool
        self._fields: RawFields = []
        self._phrase = b""
        self._in_head = True
        self._close_delimited = False
        self._head_keep_alive = False
        self.upgrade = False  # the request in flight asks to switch protocols
        self.switched: OriginResponse | None = None  # its 101, until the parser stops
        self.tunnel = None  # after a 101: the protocol given the connection's bytes (take_over)
        self._after_switch = b""

    def connectionMade(self) -> None:
        no_delay = getattr(self.transport, "setTcpNoDelay", None)  # TCP (not a test's StringTransport)
        if no_delay is not None:
            no_delay(True)  # a request or chunk is written whole: Nagle would only delay it

    # Sending ---------------------------------------------------------------------------------------

    def send(self, listener: Listener, method: bytes, target: bytes, fields: RawFields, body=None,
             upgrade: bool = False) -> None:
        """Write a request; ``body`` is a ``RequestBody`` (an IBodyProducer) or None; ``upgrade``: the fields
        ask to switch protocols, and a 101 is welcome."""
        self.listener, self.method, self.response = listener, method, None
        self.upgrade = upgrade
        self.served += 1
        self.heard = False
        lines = [method, b" ", target, b" HTTP/1.1\r\n"]
        for name, value in fields:
            lines += (name, b": ", value, b"\r\n")
        if body is None:
            if method in _EXPECTS_BODY:
                lines.append(b"Content-Length: 0\r\n")
        elif body.length is UNKNOWN_LENGTH:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            lines.append(b"Content-Length: %d\r\n" % body.length)
        lines.append(b"\r\n")
        write_now(self.transport, b"".join(lines))  # one piece, at once where it can be
        if body is not None:
            self._upload(body, chunked=body.length is UNKNOWN_LENGTH)

    def _upload(self, body, chunked: bool) -> None:
        self.uploading = True
        writer = _ChunkedWriter(self) if chunked else _PlainWriter(self)
        self.transport.registerProducer(body, True)
        body.startProducing(writer).addCallbacks(lambda _: self._uploaded(chunked), self._upload_failed)

    def _uploaded(self, chunked: bool) -> None:
        if self.closed or not self.uploading:
            return
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        self.uploading = False
        self.transport.unregisterProducer()

    def _upload_failed(self, reason: Failure) -> None:
        """The client's body broke off (it went away, or was answered): the request can't be completed."""
        if self.uploading and not self.closed:
            self.uploading = False
            self.abort()

    # Flow control ----------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resumeProducing()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True  # nothing more is read or written: connectionLost follows
            self.transport.abortConnection()

    # Parsing ---------------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.dataReceived(data)
            return
        if self.closed:
            return
        if self.listener is None:
            self.abort()  # bytes on an idle connection: nothing can be trusted after them
            return
        self.heard = True
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError as error:
            if isinstance(error.__context__, _SkipBody):
                self.parser = HttpResponseParser(self)
                self._complete(self._head_keep_alive)
            elif isinstance(error.__context__, OriginProtocolError):
                self._fail(error.__context__)
            else:
                raise
        except HttpParserUpgrade as switch:
            if self.switched is None:
                self._fail(OriginProtocolError("the origin switched protocols (101) without being asked"))
            else:
                self._switch(data[switch.args[0]:])
        except HttpParserError as error:
            self._fail(OriginProtocolError(f"the origin's response is not valid HTTP/1.1 ({error})"))

    def on_message_begin(self) -> None:
        if self.listener is None:  # more bytes after a complete response, in the same read
            raise OriginProtocolError("the origin sent a response nobody asked for")
        self._in_head = True
        self._phrase = b""

    def on_status(self, phrase: bytes) -> None:
        self._phrase += phrase  # in pieces when the status line arrives in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # fields after the body are a chunked trailer section: dropped
            self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        code = self.parser.get_status_code()
        fields, self._fields = self._fields, []
        if code == 101 and self.upgrade:
            version = b"HTTP/" + self.parser.get_http_version().encode("ascii")
            self.switched = OriginResponse(self, code, self._phrase, version, fields, 0)
            return
        if code < 200:
            if code not in (100, 101) and self.listener is not None:
                self.listener.interim(code, self._phrase, fields)
            return
        self._in_head = False
        length, self._close_delimited = _framing(self.method, code, fields)
        version = b"HTTP/" + self.parser.get_http_version().encode("ascii")
        self.response = response = OriginResponse(self, code, self._phrase, version, fields, length)
        self.listener.head(response)
        if self.method == b"HEAD":
            self._head_keep_alive = self.parser.should_keep_alive()
            raise _SkipBody()

    def on_body(self, data: bytes) -> None:
        if self.response is not None and not self.closed:  # closed: aborted earlier in this same read
            self.response._data(data)

    def on_message_complete(self) -> None:
        if self._in_head:
            return  # an interim response is over; the final one follows
        self._complete(self.parser.should_keep_alive())

    def _switch(self, after: bytes) -> None:
        """The origin switched protocols: the connection is no longer the pool's, nor HTTP."""
        response, listener = self.switched, self.listener
        self.switched = self.listener = None
        self._after_switch = after
        lost, self.lost = self.lost, lambda connection: None
        lost(self)
        listener.head(response)

    def take_over(self, tunnel) -> None:
        """After a 101: ``tunnel.dataReceived`` gets every byte from the origin (those that came with the
        101 at once), ``tunnel.connectionLost`` the close."""
        self.tunnel = tunnel
        after, self._after_switch = self._after_switch, b""
        if after:
            tunnel.dataReceived(after)

    def _complete(self, keep_alive: bool) -> None:
        response = self.response
        self.listener = self.response = None
        if self.paused:  # the reader paused just as the body ended: the next exchange must read
            self.resume_reading()
        self.released(self, keep_alive and not self.uploading and not self.closed)
        if response is not None:
            response._end(None)

    def _fail(self, error: Exception) -> None:
        self.abort()
        self._end_exchange(Failure(error))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.lost(self)
        if self.tunnel is not None:
            self.tunnel.connectionLost(reason)
            return
        if self.response is not None and self._close_delimited and reason.check(ConnectionDone):
            self._complete(False)  # RFC 9112 §6.3 item 8: the close ends the body
        else:
            self._end_exchange(reason)

    def _end_exchange(self, reason: Failure) -> None:
        listener, response = self.listener, self.response
        self.switched = None
        self.listener = self.response = None
        if response is not None:
            response._end(reason)
        elif listener is not None:
            retryable = self.served > 1 and not self.heard and not self.uploading
            listener.broken(reason, retryable)


def _framing(method: bytes, code: int, fields: RawFields):
    """(length, close-delimited) of a final response's body (RFC 9112 §6.3; llhttp has checked the syntax)."""
    if method == b"HEAD" or code in NO_BODY_STATUS:
        return 0, False
    length = None
    for name, value in fields:
        lower = name.lower()
        if lower == b"transfer-encoding":  # chunked last, else the body runs until the close (§6.3 item 4)
            return UNKNOWN_LENGTH, value.rsplit(b",", 1)[-1].strip().lower() != b"chunked"
        if lower == b"content-length":
            length = int(value)
    if length is None:
        return UNKNOWN_LENGTH, True
    return length, False


class _PlainWriter:
    """The consumer a request body with a Content-Length writes into."""

    def __init__(self, connection: OriginConnection):
        self.connection = connection

    def write(self, data: bytes) -> None:
        connection = self.connection
        if not connection.closed:
            connection.transport.write(data)
            if connection.listener is not None:
                connection.listener.progress()


class _ChunkedWriter(_PlainWriter):
    """The consumer a request body of unknown length writes into: each write is a chunk (RFC 9112 §7.1)."""

    def write(self, data: bytes) -> None:
        connection = self.connection
        if data and not connection.closed:
            connection.transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
            if connection.listener is not None:
                connection.listener.progress()
