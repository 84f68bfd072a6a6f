"""examples/cluster as operators run it: real HAProxy (balance uri, hash-type consistent, option httpchk on the
health path) in front of three real ``twistd accel`` nodes on loopback, each with its own cache, and one origin.

The configurations are the example files with loopback addresses and short intervals put in. Every wait is on
an event: a line in a process's output (read as it comes), a client's answer."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import closed_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "cluster")
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
HOST = "www.example.com"

pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="HAProxy is not installed (Debian: apt-get install haproxy; .ci/run installs it)")


class Output:
    """A child process's output, read by a thread as it comes; ``wait_for`` a line in it."""

    def __init__(self, process: subprocess.Popen, stream):
        self.process = process
        self.text = b""
        self.ended = False
        self.changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, b""):
            with self.changed:
                self.text += line
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def wait_for(self, pattern: bytes, seconds: float = 30.0) -> re.Match:
        deadline = time.monotonic() + seconds
        with self.changed:
            while (found := re.search(pattern, self.text)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.ended:
                    raise AssertionError(f"never logged {pattern!r}:\n{self.text.decode(errors='replace')}")
                self.changed.wait(left)
        return found


def start(argv: list[str], **options) -> Output:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **options)
    return Output(process, process.stdout)


class Origin(ThreadingHTTPServer):
    """Cacheable answers; counts the requests for each path."""

    daemon_threads = True

    def __init__(self):
        self.fetches: Counter = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                server.fetches[self.path] += 1
                body = b"content of " + self.path.encode()
                self.send_response(200)
                self.send_header("Cache-Control", "max-age=600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def request(port: int, method: str, path: str, headers=None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, headers={"Host": HOST, **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture
def cluster(tmp_path):
    directory = str(tmp_path)
    origin = Origin()
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    node_ports = {n: closed_port() for n in (1, 2, 3)}
    front = closed_port()
    outputs: list[Output] = []
    try:
        for n in (1, 2, 3):
            with open(os.path.join(EXAMPLE, f"node{n}.toml")) as f:
                text = f.read()
            text = text.replace(f"tcp:8080:interface=10.0.0.{n}", f"tcp:{node_ports[n]}:interface=127.0.0.1")
            for m in (1, 2, 3):
                text = text.replace(f"http://10.0.0.{m}:8080", f"http://127.0.0.1:{node_ports[m]}")
            text = (text.replace('"10.0.0.10"', '"127.0.0.1"').replace('"10.0.0.0/24"', '"127.0.0.0/8"')
                    .replace("http://10.0.1.1:8000", f"http://127.0.0.1:{origin.server_port}")
                    .replace('"/var/cache/accel"', json.dumps(os.path.join(directory, f"cache{n}")))
                    .replace("drain_delay = 5", "drain_delay = 2"))
            assert "10.0." not in text.split("[[route]]")[0].replace("10.0.0.0/24", ""), text
            path = os.path.join(directory, f"node{n}.toml")
            with open(path, "w") as f:
                f.write(text)
            outputs.append(start(TWISTD + ["--nodaemon", "--pidfile=", "accel", "--config", path], cwd=directory))
        with open(os.path.join(EXAMPLE, "haproxy.cfg")) as f:
            text = f.read()
        text = text.replace("bind :80", f"bind 127.0.0.1:{front}").replace("10.0.0.0/16", "127.0.0.0/8")
        text = text.replace("inter 1s fall 2 rise 2", "inter 100ms fall 2 rise 1")
        for n in (1, 2, 3):
            text = text.replace(f"10.0.0.{n}:8080", f"127.0.0.1:{node_ports[n]}")
        config = os.path.join(directory, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(text)
        for node in outputs:
            node.wait_for(rb"accel: running")  # logged once its listener is open
        # Master-worker mode (-W) logs "Loading success." once it has bound its port and started its worker.
        outputs.append(start([HAPROXY, "-W", "-db", "-f", config]))
        outputs[-1].wait_for(rb"Loading success")
        yield {"front": front, "nodes": node_ports, "origin": origin, "outputs": outputs}
    finally:
        for output in outputs:
            if output.process.poll() is None:  # HAProxy's master stops its worker on SIGTERM
                output.process.terminate() if output.process.args[0] == HAPROXY else output.process.kill()
            output.process.wait()
        origin.shutdown()
        origin.server_close()


def node_of(headers: dict) -> str:
    return headers["server"]


def test_one_node_per_url_purge_reaches_all_a_draining_node_leaves_cleanly_and_a_third_of_urls_move(cluster):
    front, origin = cluster["front"], cluster["origin"]

    # The same URL always lands on the same node: one origin fetch however often it is asked for.
    placement = {}
    for round_ in range(5):
        for i in range(60):
            status, headers, body = request(front, "GET", f"/page/{i}")
            assert (status, body) == (200, f"content of /page/{i}".encode())
            assert placement.setdefault(i, node_of(headers)) == node_of(headers)
    assert all(origin.fetches[f"/page/{i}"] == 1 for i in range(60)), origin.fetches
    assert set(placement.values()) == {"accel-node1", "accel-node2", "accel-node3"}

    # A PURGE through HAProxy reaches the node owning the URL, which forwards it to the other two.
    for port in cluster["nodes"].values():  # every node holds /shared (asked directly)
        assert request(port, "GET", "/shared")[0] == 200
    status, _, body = request(front, "PURGE", "/shared", {"X-Purge-Secret": "change me"})
    answer = json.loads(body)
    assert (status, answer["purged"]) == (200, 1), answer
    assert [a["purged"] for a in answer["peers"].values()] == [1, 1], answer
    for port in cluster["nodes"].values():
        assert "fwd=uri-miss" in request(port, "GET", "/shared")[1]["cache-status"]

    # SIGTERM to node 3 while clients keep asking: the health check takes it out before it stops accepting.
    leaving = cluster["outputs"][2]
    failures, answered, moved_seen = [], Counter(), threading.Event()
    on_node3 = [i for i, node in placement.items() if node == "accel-node3"]
    stop = threading.Event()

    def clients():
        n = 0
        while not stop.is_set():
            i = on_node3[n % len(on_node3)] if n % 2 else n % 60
            n += 1
            try:
                status, headers, _ = request(front, "GET", f"/page/{i}")
            except OSError as e:
                failures.append(repr(e))
                continue
            if status != 200:
                failures.append(status)
            answered[status] += 1
            if i in on_node3 and node_of(headers) != "accel-node3":
                moved_seen.set()

    load = threading.Thread(target=clients)
    load.start()
    try:
        leaving.process.send_signal(signal.SIGTERM)
        assert moved_seen.wait(30), "node 3's URLs never moved to the other nodes"
        # twistd ends a clean stop by re-raising SIGTERM: killed by it, not crashed
        assert leaving.process.wait(60) == -signal.SIGTERM, "node 3 did not stop cleanly on SIGTERM"
    finally:
        stop.set()
        load.join()
    assert failures == [] and answered[200] > 0, (failures, answered)
    leaving.wait_for(rb"health check answers 503; serving 2 s more", seconds=10)
    # Taken out by its 503, while it still accepted (not by a refused connection once it stopped listening).
    cluster["outputs"][3].wait_for(rb"node3 is DOWN, reason: Layer7 wrong status, code: 503", seconds=10)

    # Removing one node of three moved only its own URLs: about a third, none of the others'.
    after = {i: node_of(request(front, "GET", f"/page/{i}")[1]) for i in range(60)}
    moved = [i for i in range(60) if after[i] != placement[i]]
    assert moved == on_node3
    assert 0.15 <= len(moved) / 60 <= 0.5, len(moved)
