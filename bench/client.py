"""Python HTTP/1.1 clients for the parts of the bench that wrk cannot do.

All of them talk plain HTTP/1.1 to 127.0.0.1 over asyncio streams:

- ``fetch``: one request on a fresh connection (warm-up, origin counters, probes).
- ``load``: a closed-loop load generator with keep-alive connections; the
  stand-in for wrk in ``--smoke`` runs when wrk is not installed.
- ``populate``: many distinct requests over keep-alive connections, bounded in time.
- ``collapse``: N connections opened first, then N requests sent at once.
- ``slow_read``: one download read at a limited rate through a small receive buffer.
- ``burst``: N connections opened at once, one request on each.
- ``hold_idle``: N keep-alive connections, one request each, then held open.
"""

import asyncio
import selectors
import socket
import time

HOST = "127.0.0.1"
READ_CHUNK = 64 * 1024
LOAD_GRACE_S = 2.0


class Response:
    def __init__(self, status, headers, body_len, body=b""):
        self.status = status
        self.headers = headers  # lower-cased names -> value
        self.body_len = body_len
        self.body = body


def _request_bytes(path, close=False, headers=()):
    conn = b"close" if close else b"keep-alive"
    extra = "".join(f"{field}\r\n" for field in headers).encode("latin-1")
    return b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: %s\r\n%s\r\n" % (path.encode(), HOST.encode(), conn, extra)


async def _read_response(reader, keep_body=True, on_chunk=None):
    """Read one response; bodies by Content-Length, chunked, or until close."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    parts, total = [], 0

    def take(data):
        nonlocal total
        total += len(data)
        if keep_body:
            parts.append(data)
        if on_chunk is not None:
            return on_chunk(len(data))

    if "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining:
            data = await reader.read(min(remaining, READ_CHUNK))
            if not data:
                raise ConnectionError("connection closed mid-body")
            remaining -= len(data)
            await _maybe_await(take(data))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                break
            await _maybe_await(take(await reader.readexactly(size)))
            await reader.readexactly(2)
    elif status not in (204, 304) and not 100 <= status < 200:
        while data := await reader.read(READ_CHUNK):
            await _maybe_await(take(data))
    return Response(status, headers, total, b"".join(parts))


async def _maybe_await(value):
    if asyncio.iscoroutine(value):
        await value


async def _fetch(port, path):
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(_request_bytes(path, close=True))
        return await _read_response(reader)
    finally:
        writer.close()


def fetch(port, path, timeout=30.0):
    """GET ``path`` from 127.0.0.1:port on a fresh connection; returns a Response."""
    return asyncio.run(asyncio.wait_for(_fetch(port, path), timeout))


def percentile(sorted_values, pct):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


async def _load(port, path, connections, duration, close, headers):
    latencies, errors, non_2xx = [], 0, 0
    deadline = time.monotonic() + duration

    async def worker():
        nonlocal errors, non_2xx
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                errors += 1
                await asyncio.sleep(0.01)
                continue
            try:
                while time.monotonic() < deadline:
                    t0 = time.monotonic()
                    writer.write(_request_bytes(path, close=close, headers=headers))
                    resp = await _read_response(reader, keep_body=False)
                    latencies.append(time.monotonic() - t0)
                    if not 200 <= resp.status < 400:
                        non_2xx += 1
                    if resp.headers.get("connection", "").lower() == "close":
                        break
            except (OSError, asyncio.IncompleteReadError, ConnectionError):
                errors += 1
            finally:
                writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    _, stuck = await asyncio.wait(tasks, timeout=duration + LOAD_GRACE_S)
    for task in stuck:  # like wrk, count requests still unanswered as timeouts
        task.cancel()
    await asyncio.gather(*stuck, return_exceptions=True)
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / duration,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors + len(stuck),
        "non_2xx": non_2xx,
    }


def load(port, path, connections, duration, close=False, headers=()):
    """Closed-loop load for ``duration`` seconds (``close``: one request per connection; ``headers``: extra
    request fields such as "Accept-Encoding: gzip"); wrk-like summary.

    Requests still unanswered ``LOAD_GRACE_S`` after the end count as errors.
    """
    return asyncio.run(_load(port, path, connections, duration, close, headers))


async def _populate(port, paths, connections, time_limit):
    todo = iter(paths)
    done, failed = 0, 0
    deadline = time.monotonic() + time_limit

    async def worker():
        nonlocal done, failed
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for path in todo:
                if time.monotonic() > deadline:
                    return
                writer.write(_request_bytes(path))
                resp = await _read_response(reader, keep_body=False)
                if resp.status == 200:
                    done += 1
                else:
                    failed += 1
                if resp.headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return done, failed


def populate(port, paths, connections=16, time_limit=300.0):
    """GET every path (until ``time_limit``); returns (ok responses, other responses)."""
    return asyncio.run(_populate(port, paths, connections, time_limit))


async def _collapse(port, path, n, timeout):
    conns = await asyncio.gather(*(asyncio.open_connection(HOST, port) for _ in range(n)))

    async def one(reader, writer):
        writer.write(_request_bytes(path, close=True))
        try:
            return (await _read_response(reader, keep_body=False)).status
        finally:
            writer.close()

    start = time.monotonic()
    statuses = await asyncio.wait_for(asyncio.gather(*(one(r, w) for r, w in conns)), timeout)
    return time.monotonic() - start, statuses


def collapse(port, path, n=100, timeout=60.0):
    """Open ``n`` connections, then send one GET for ``path`` on each at once.

    Returns (seconds until the last response was complete, list of statuses).
    """
    return asyncio.run(_collapse(port, path, n, timeout))


async def _slow_read(port, path, rate, rcvbuf, tick, on_tick):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
    start = time.monotonic()
    got = 0
    last_tick = start

    async def throttle(n):
        nonlocal got, last_tick
        got += n
        ahead = got / rate - (time.monotonic() - start)
        if ahead > 0:
            await asyncio.sleep(ahead)
        if time.monotonic() - last_tick >= tick:
            last_tick = time.monotonic()
            on_tick()

    try:
        writer.write(_request_bytes(path, close=True))
        resp = await _read_response(reader, keep_body=False, on_chunk=throttle)
    finally:
        writer.close()
    return resp, time.monotonic() - start


def slow_read(port, path, rate, rcvbuf=64 * 1024, tick=0.05, on_tick=lambda: None):
    """Download ``path`` at no more than ``rate`` bytes/s, calling ``on_tick`` every ``tick`` s.

    Returns (Response without body, seconds taken).
    """
    return asyncio.run(_slow_read(port, path, rate, rcvbuf, tick, on_tick))


def burst(port, path, n=2000, timeout=60.0):
    """Open ``n`` connections at once (non-blocking connects issued back to back) and send one GET with
    ``Connection: close`` on each as soon as it is connected.

    Returns (seconds from the first connect until the last response was complete, how many got 200).
    Raw sockets and one selector: asyncio's per-connection overhead would dominate the measurement.
    """
    request = _request_bytes(path, close=True)
    selector = selectors.DefaultSelector()
    received = {}
    start = time.monotonic()
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((HOST, port))
        received[sock] = []
        selector.register(sock, selectors.EVENT_WRITE)
    pending = n
    while pending and time.monotonic() - start < timeout:
        for key, events in selector.select(timeout=1.0):
            sock = key.fileobj
            if events & selectors.EVENT_WRITE:
                sock.sendall(request)
                selector.modify(sock, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(READ_CHUNK)
            except ConnectionError:
                data = b""
            if data:
                received[sock].append(data)
                continue
            selector.unregister(sock)
            sock.close()
            pending -= 1
    seconds = time.monotonic() - start
    for sock in list(received):
        if sock.fileno() != -1:
            sock.close()
    selector.close()
    return seconds, sum(1 for parts in received.values() if b"".join(parts).startswith(b"HTTP/1.1 200 "))


async def _hold_idle(port, path, n, batch, while_held):
    conns = []
    for start in range(0, n, batch):
        opened = await asyncio.gather(*(asyncio.open_connection(HOST, port) for _ in range(min(batch, n - start))))
        for reader, writer in opened:
            writer.write(_request_bytes(path))
        await asyncio.gather(*(_read_response(reader, keep_body=False) for reader, _ in opened))
        conns += opened
    await asyncio.sleep(1.0)  # idle
    measured = while_held()
    for _, writer in conns:  # every connection is still usable: one more request on each
        writer.write(_request_bytes(path))
    again = await asyncio.gather(*(_read_response(reader, keep_body=False) for reader, _ in conns),
                                 return_exceptions=True)
    for _, writer in conns:
        writer.close()
    return measured, sum(1 for r in again if isinstance(r, Response) and r.status == 200)


def hold_idle(port, path, n=10_000, batch=500, while_held=lambda: None):
    """Open ``n`` keep-alive connections (``batch`` at a time), one GET on each, hold them idle for a
    second and call ``while_held()``; then one more GET on each. Returns (while_held's result, how many of
    the second requests got 200)."""
    return asyncio.run(_hold_idle(port, path, n, batch, while_held))
