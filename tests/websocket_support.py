"""WebSocket by hand for the tests (RFC 6455): the opening handshake, frames, an echo origin and a client.

No library: the handshake is a few header lines and the framing (§5.2) fits in two functions. The origin
echoes every text and binary message; the text message ``flood`` makes it send binary messages as fast as
the connection takes them (``Flood``); the text message ``close-me`` makes it close (a Close frame, then
the TCP connection); a Close from the client is answered with a Close and the connection closed.
Requests for ``/reject`` get a plain 403, requests that are not a handshake a plain 200.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8


def accept_value(key: bytes) -> bytes:
    """§4.2.2: Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(opcode: int, payload: bytes, masked: bool) -> bytes:
    """One final frame (§5.2); clients mask, servers don't."""
    head = bytes([0x80 | opcode])
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + _unmask(key, payload)


def _unmask(key: bytes, payload: bytes) -> bytes:
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


class FrameReader:
    """Frames out of a byte stream, whole frames only."""

    def __init__(self):
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        frames = []
        while True:
            parsed = self._one()
            if parsed is None:
                return frames
            frames.append(parsed)

    def _one(self):
        b = self.buffer
        if len(b) < 2:
            return None
        opcode, masked, n = b[0] & 0x0F, b[1] & 0x80, b[1] & 0x7F
        at = 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack("!Q", b[2:10])[0], 10
        key = b""
        if masked:
            key, at = bytes(b[at : at + 4]), at + 4
        if len(b) < at + n:
            return None
        payload = bytes(b[at : at + n])
        del b[: at + n]
        return opcode, _unmask(key, payload) if masked else payload


class EchoOrigin(protocol.Protocol):
    """One connection of the echo origin."""

    def __init__(self, factory):
        self.factory = factory
        self.head = b""
        self.frames: FrameReader | None = None
        self.flood: Flood | None = None

    def connectionMade(self):
        self.factory.connections.append(self)

    def dataReceived(self, data):
        if self.frames is None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, rest = self.head.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            fields = [tuple(part.strip() for part in line.split(b":", 1)) for line in lines[1:]]
            self.factory.handshakes.append((lines[0], fields))
            if lines[0].split(b" ")[1] == b"/reject":
                self.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nno way")
                return
            key = dict((n.lower(), v) for n, v in fields).get(b"sec-websocket-key")
            if key is None:  # not a handshake: a plain answer
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nplain")
                self.transport.loseConnection()
                return
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_value(key) + b"\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
                + (frame(TEXT, b"welcome", False) if self.factory.greet else b"")
            )
            self.frames = FrameReader()
            data = rest
        for opcode, payload in self.frames.feed(data):
            if opcode == CLOSE:
                self.transport.write(frame(CLOSE, payload, False))
                self.transport.loseConnection()
            elif payload == b"flood":
                self.flood = Flood(self.transport)
            elif payload == b"close-me":
                self.transport.write(frame(CLOSE, struct.pack("!H", 1000), False))
                self.transport.loseConnection()
            else:
                self.transport.write(frame(opcode, payload, False))

    def connectionLost(self, reason):
        self.factory.closed.append(self)


class Flood:
    """Binary messages of 64 KiB written as fast as the connection takes them (a push producer), up to
    ``LIMIT`` bytes; ``paused_at`` is how much had been sent when the connection first pushed back."""

    LIMIT = 128 << 20
    MESSAGE = frame(BINARY, b"f" * 65536, False)

    def __init__(self, transport):
        self.transport = transport
        self.sent = 0
        self.paused_at: int | None = None
        self.paused = False
        transport.registerProducer(self, True)
        reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self):
        self.paused = True
        if self.paused_at is None:
            self.paused_at = self.sent

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.sent < self.LIMIT:
            self.transport.write(self.MESSAGE)
            self.sent += len(self.MESSAGE)

    def stopProducing(self):
        self.sent = self.LIMIT


class EchoOriginFactory(protocol.Factory):
    def __init__(self, greet: bool = False):
        self.greet = greet  # send a text message right behind the 101
        self.connections: list[EchoOrigin] = []
        self.handshakes: list[tuple[bytes, list]] = []
        self.closed: list[EchoOrigin] = []

    def buildProtocol(self, addr):
        return EchoOrigin(self)


class WebSocketClient(protocol.Protocol):
    """A client: sends the handshake, then collects the response head, frames, and the close."""

    def __init__(self, path: bytes, extra: bytes = b""):
        self.key = base64.b64encode(os.urandom(16))
        self.request = (
            b"GET " + path + b" HTTP/1.1\r\nHost: accel.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + self.key + b"\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: chat, superchat\r\nOrigin: http://app.test\r\n" + extra + b"\r\n"
        )
        self.head: bytes | None = None
        self.received = b""
        self.frames = FrameReader()
        self.messages: list[tuple[int, bytes]] = []
        self.got_head = defer.Deferred()
        self.closed = defer.Deferred()
        self._waiting: list[tuple[int, defer.Deferred]] = []

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        if self.head is None:
            self.received += data
            if b"\r\n\r\n" not in self.received:
                return
            self.head, _, data = self.received.partition(b"\r\n\r\n")
            self.got_head.callback(self.head)
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.received = data
                return
        elif not self.head.startswith(b"HTTP/1.1 101"):
            self.received += data
            return
        self.messages += self.frames.feed(data)
        self._wake()

    def connectionLost(self, reason):
        if not self.got_head.called:
            self.got_head.callback(None)
        self.closed.callback(None)

    def send(self, opcode: int, payload: bytes) -> None:
        self.transport.write(frame(opcode, payload, True))

    def message(self, index: int) -> defer.Deferred:
        """Fires with message number ``index`` (from 0) once it has arrived."""
        d = defer.Deferred()
        self._waiting.append((index, d))
        self._wake()
        return d

    def _wake(self):
        for entry in list(self._waiting):
            if entry[0] < len(self.messages):
                self._waiting.remove(entry)
                entry[1].callback(self.messages[entry[0]])

    def field(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            n, _, v = line.partition(b":")
            if n.strip().lower() == name:
                return v.strip()
        return None


async def connect(port: int, path: bytes = b"/ws/echo", extra: bytes = b"") -> WebSocketClient:
    client = WebSocketClient(path, extra)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    await client.got_head
    return client
