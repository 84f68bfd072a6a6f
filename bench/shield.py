"""The "shield" scenario: how much of a mixed client load reaches the origin, and what clients get while
the origin is down.

Client threads (keep-alive, one connection each) send for ``duration`` seconds a seeded mix of: plain GETs
of 20 pages (fresh 2 s, ETag, Vary: Accept-Encoding) under two aliases of one site, each spelled two ways
(letter case, ``:80``), browser reloads (``Cache-Control: max-age=0`` / ``Pragma: no-cache``), HEADs, GETs
with varied ``Accept-Encoding`` and 64 KiB ``Range`` requests on a 10 MiB video. A third of the way in the origin answers 503 to everything
for ``OUTAGE_S`` seconds. Reported: origin requests per 1,000 client requests, and client answers that
were not 2xx/304 (or failed) during the outage and outside it.
"""

from __future__ import annotations

import http.client
import random
import threading
import time

OUTAGE_S = 10.0
CLIENTS = 8
PAGES = 20
VIDEO_SIZE = 10 * 1024 * 1024
HOSTS = ("www.example.com", "WWW.Example.COM:80", "example.com", "Example.COM:80")  # two aliases, two spellings each
ENCODINGS = ("gzip, deflate, br", "br, gzip", "gzip, deflate", "gzip", "identity", "br;q=1.0, gzip;q=0.8, *;q=0.1")


def one_request(rnd: random.Random) -> tuple[str, str, dict]:
    """(method, path, headers) of one client request of the mix."""
    page = f"/shield/p{rnd.randrange(PAGES)}"
    headers = {"Host": rnd.choice(HOSTS), "Accept-Encoding": "gzip, deflate, br"}
    kind = rnd.random()
    if kind < 0.35:
        return "GET", page, headers
    if kind < 0.50:
        headers.update(rnd.choice(({"Cache-Control": "max-age=0"}, {"Pragma": "no-cache"})))
        return "GET", page, headers
    if kind < 0.65:
        return "HEAD", page, headers
    if kind < 0.80:
        headers["Accept-Encoding"] = rnd.choice(ENCODINGS)
        return "GET", page, headers
    first = rnd.randrange(0, VIDEO_SIZE - 65536)
    headers["Range"] = f"bytes={first}-{first + 65535}"
    return "GET", "/shield/video", headers


def run(port: int, duration: float, start_outage, seed: int = 16) -> dict:
    """Drive the mix against 127.0.0.1:port; ``start_outage()`` is called a third of the way in."""
    started = time.monotonic()
    deadline = started + duration
    outage = {"from": started + duration / 3}
    outage["until"] = outage["from"] + OUTAGE_S
    lock = threading.Lock()
    totals = {"requests": 0, "errors_in_outage": 0, "errors_outside": 0, "requests_in_outage": 0}

    def client(index: int) -> None:
        rnd = random.Random(seed * 100 + index)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < deadline:
            method, path, headers = one_request(rnd)
            now = time.monotonic()
            in_outage = outage["from"] <= now < outage["until"] + 1.0  # answers may lag the outage's end
            try:
                connection.request(method, path, headers=headers)
                response = connection.getresponse()
                response.read()
                ok = 200 <= response.status < 300 or response.status == 304
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                totals["requests"] += 1
                totals["requests_in_outage"] += in_outage
                if not ok:
                    totals["errors_in_outage" if in_outage else "errors_outside"] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, outage["from"] - time.monotonic()))
    start_outage()
    for thread in threads:
        thread.join()
    return totals
