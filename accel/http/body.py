"""Message bodies streaming through accel, with backpressure both ways.

``RequestBody``: the client's request body, fed chunk by chunk by the channel and produced into the origin
connection (an ``IBodyProducer``, registered as the origin connection's producer). When the origin is slow,
reading from the client stops; at most ``BUFFER_LIMIT`` bytes wait in between.

``ResponseRelay``: the origin's response body, delivered by the origin client and written to the client. When the
client is slow, reading from the origin stops (the relay is the client request's push producer). A tee
callback sees every chunk (the cache stores the body while it streams); an ``encoder``
(``accel.http.compress.Encoder``) compresses what the client gets, after the tee.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

BUFFER_LIMIT = 64 * 1024


def _nothing() -> None:
    pass


class BodyAbandoned(Exception):
    """The client went away (or was answered) before its request body was complete."""


class BodyTooLarge(BodyAbandoned):
    """The request body grew past the route's ``max_body_size``."""


@implementer(IBodyProducer)
class RequestBody:
    def __init__(self, request, length: int | None):
        self.request = request
        self.length = UNKNOWN_LENGTH if length is None else length
        self.complete = False
        self._consumer = None
        self._paused = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._client_paused = False
        self._done: Deferred | None = None
        self._abandoned: Failure | None = None
        self.received = 0
        self._max_size: int | None = None
        self._too_large: Callable[[], None] = lambda: None

    def limit(self, max_size: int, too_large: Callable[[], None]) -> None:
        """Call ``too_large`` (once) when more than ``max_size`` bytes arrive; nothing past them is relayed."""
        self._max_size, self._too_large = max_size, too_large

    # Fed by the channel -----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._abandoned:
            return
        self.received += len(data)
        if self._max_size is not None and self.received > self._max_size:
            self._too_large()  # answered first: the origin request failing must not answer it
            self.abandon(Failure(BodyTooLarge(self._max_size)))
            return
        if self._consumer is not None and not self._paused and not self._buffer:
            self._consumer.write(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > BUFFER_LIMIT:
            self._pause_client(True)

    def finish(self) -> None:
        self.complete = True
        self._flush()

    def abandon(self, reason: Failure | None = None) -> None:
        """Stop relaying: the request is over (client gone, or answered early)."""
        if self._abandoned:
            return
        self._abandoned = reason or Failure(BodyAbandoned())
        self._buffer.clear()
        self._pause_client(False)
        if self._done is not None and not self._done.called and not self.complete:
            done, self._done = self._done, None
            done.errback(self._abandoned)

    # IBodyProducer, driven by the origin connection ----------------------------------------------------

    def startProducing(self, consumer) -> Deferred:
        self._consumer = consumer
        self._done = Deferred()
        if self._abandoned:
            done, self._done = self._done, None
            done.errback(self._abandoned)
            return done
        done = self._done
        self._flush()
        return done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self._consumer = None
        self._done = None  # the origin connection no longer waits for it
        self.abandon()

    def _flush(self) -> None:
        if self._consumer is None:
            return
        while self._buffer and not self._paused:
            chunk = self._buffer.pop(0)
            self._buffered -= len(chunk)
            self._consumer.write(chunk)
        if not self._buffer:
            self._pause_client(False)
            if self.complete and self._done is not None:
                done, self._done = self._done, None
                done.callback(None)

    def _pause_client(self, pause: bool) -> None:
        if pause == self._client_paused:
            return
        channel = getattr(self.request, "channel", None)
        if channel is None or channel.transport is None:
            return
        self._client_paused = pause
        if pause:
            channel.transport.pauseProducing()
        else:
            channel.transport.resumeProducing()


@implementer(IPushProducer)
class ResponseRelay(Protocol):
    """Writes an origin response body to the client; ``done`` fires with True (complete) or False.

    When ``keep_reading()`` is true as the client goes away, the body does not stop: the relay detaches
    from the client and reads on for the tee alone (a cache fetch others are waiting for). ``ended()`` is
    called as the body ends, before ``done`` fires (``done`` is made only for those who ask for it).
    """

    def __init__(self, request, *, tee: Callable[[bytes], None] | None = None, on_activity=lambda: None,
                 keep_reading: Callable[[], bool] = lambda: False, encoder=None, ended: Callable[[], None] = _nothing):
        self.request = request
        self.tee = tee
        self.encoder = encoder
        self.on_activity = on_activity
        self.keep_reading = keep_reading
        self.ended = ended
        self.detached = False
        self.complete: bool | None = None  # once the body has ended: whether it was complete
        self._done: Deferred[bool] | None = None

    @property
    def done(self) -> Deferred[bool]:
        if self._done is None:
            self._done = Deferred()
            if self.complete is not None:
                self._done.callback(self.complete)
        return self._done

    def over(self, complete: bool) -> None:
        """The body has ended (or will never be relayed)."""
        self.complete = complete
        ended, self.ended = self.ended, _nothing
        ended()
        if self._done is not None:
            self._done.callback(complete)

    def makeConnection(self, transport) -> None:
        """Protocol's, with connectionMade's work in it (a call per response less)."""
        self.connected = 1
        self.transport = transport
        self.request.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        self.on_activity()
        if self.tee is not None:
            self.tee(data)
        if not self.detached:
            self.request.write(data if self.encoder is None else self.encoder.compress(data))

    def connectionLost(self, reason: Failure) -> None:
        complete = isinstance(reason.value, ResponseDone)
        request = self.request
        if not self.detached and not request._disconnected and not request.finished:
            request.unregisterProducer()
            if complete:
                if self.encoder is not None:
                    request.write(self.encoder.finish())
                request.finish()
            else:
                # A body that broke off must not look complete: cut the client connection.
                request.close_incomplete()
        self.over(complete)

    def client_gone(self) -> None:
        """The client disconnected: stop reading the origin's body (its connection is closed), or detach."""
        if self.detached:
            return
        if self.tee is not None and self.keep_reading():
            self._detach()
        elif self.transport is not None:
            self.transport.stopProducing()

    def abort(self) -> None:
        """Stop reading the origin's body (e.g. it went idle): the response ends incomplete."""
        if self.transport is not None:
            self.transport.stopProducing()

    def _detach(self) -> None:
        self.detached = True
        if self.transport is not None:
            self.transport.resumeProducing()

    # IPushProducer: the client's write buffer steers the origin connection.

    def pauseProducing(self) -> None:
        if not self.detached:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.client_gone()
