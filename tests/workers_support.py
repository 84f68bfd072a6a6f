"""Real ``twistd accel --workers N`` processes for tests: the supervisor's log as events, keep-alive clients,
and which worker holds a client's connection (read from /proc)."""

from __future__ import annotations

import os
import re
import signal

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol

from tests.support import TWISTD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Supervised(ProcessProtocol):
    """``twistd -n accel --config FILE`` whose configuration asks for workers; tests wait on its log lines."""

    LISTENING = re.compile(rb"listening on \S+ \(address (\d+)\)")
    ACCEPTS = re.compile(rb"worker (\d+) accepts")

    def __init__(self, testcase, config_path: str, *options: str):
        self.output = b""
        self.port: int | None = None
        self.accepting: list[int] = []  # worker pids, in the order they announced they accept
        self.watches: list[tuple[re.Pattern, defer.Deferred]] = []
        self.ended: defer.Deferred = defer.Deferred()
        self.exit_reason = None
        argv = TWISTD + ["--nodaemon", "--pidfile=", "accel", "--config", config_path, *options]
        reactor.spawnProcess(self, argv[0], argv, env=os.environ.copy(), path=ROOT)
        testcase.addCleanup(self.kill)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.port is None and (found := self.LISTENING.search(self.output)):
            self.port = int(found.group(1))
        self.accepting = [int(pid) for pid in self.ACCEPTS.findall(self.output)]
        for watch in list(self.watches):
            pattern, d = watch
            if pattern.search(self.output):
                self.watches.remove(watch)
                d.callback(None)

    errReceived = outReceived

    def address_of(self, description: str) -> int:
        """The port the supervisor's listener for ``description`` was given."""
        found = re.search(rb"listening on %s \(address (\d+)\)" % re.escape(description.encode()), self.output)
        return int(found.group(1))

    def logged(self, pattern: bytes) -> defer.Deferred:
        """Fires once the log (from its start) matches ``pattern``."""
        d = defer.Deferred()
        self.watches.append((re.compile(pattern), d))
        self.outReceived(b"")
        return d

    def workers_accepting(self, n: int) -> defer.Deferred:
        return self.logged(rb"(?s)(worker \d+ accepts.*){%d}" % n)

    def processEnded(self, reason) -> None:
        self.exit_reason = reason
        for _, d in self.watches:
            d.errback(AssertionError(f"accel exited:\n{self.output.decode(errors='replace')}"))
        self.watches = []
        self.ended.callback(None)

    def signal(self, which) -> None:
        """A signal's name as Twisted knows it ("HUP", "TERM"...) or its number."""
        self.transport.signalProcess(which)

    def kill(self) -> defer.Deferred:
        if not self.ended.called:
            self.transport.signalProcess("KILL")
            for pid in self.accepting:  # the workers notice the supervisor's end too; don't wait for it
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return self.ended

    @property
    def pid(self) -> int:
        return self.transport.pid


class KeepAlive(Protocol):
    """One persistent client connection: ``request`` sends a request and fires with (status, headers, body);
    with (None, {}, what arrived) when the connection closes first."""

    def __init__(self):
        self.buffer = b""
        self.waiting: defer.Deferred | None = None
        self.closed = defer.Deferred()

    def request(self, method: bytes, path: bytes, headers: bytes = b"", body: bytes = b"") -> defer.Deferred:
        """``headers``: header lines, each ending in CRLF (with a ``body``, its Content-Length among them)."""
        self.waiting = defer.Deferred()
        self.transport.write(b"%s %s HTTP/1.1\r\nHost: example.test\r\n%s\r\n%s" % (method, path, headers, body))
        return self.waiting

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep or self.waiting is None:
            return
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        if len(rest) >= length:
            self.buffer = rest[length:]
            d, self.waiting = self.waiting, None
            d.callback((int(lines[0].split()[1]), headers, rest[:length]))

    def connectionLost(self, reason) -> None:
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.callback((None, {}, self.buffer))
        self.closed.callback(None)

    @property
    def local_port(self) -> int:
        return self.transport.getHost().port


@defer.inlineCallbacks
def connect(port: int, testcase) -> KeepAlive:
    client = KeepAlive()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    testcase.addCleanup(lambda: client.transport.loseConnection() or client.closed)
    return client


def connection_owner(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """The pid among ``pids`` holding the server side of the loopback connection from ``client_port``."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                    inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


@defer.inlineCallbacks
def eventually(predicate, seconds: float = 20.0, step: float = 0.01):
    """Wait until ``predicate()`` holds, looking every ``step`` seconds (for state only another process sees)."""
    for _ in range(int(seconds / step)):
        if predicate():
            return
        yield deferLater(step)
    raise AssertionError("condition never became true")


def deferLater(seconds: float) -> defer.Deferred:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
