"""The status page in a real browser (headless Chromium): it renders, and the numbers it shows are the JSON's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from html.parser import HTMLParser

import pytest
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from twisted.web import server

from accel.app import build_site
from accel.config import Config, Route, parse_origin
from tests.support import RecordingOrigin, raw_request, temporary_directory

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium(*arguments: str) -> str:
    profile = tempfile.mkdtemp(prefix="accel-chromium-")
    try:
        done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *arguments],
                              capture_output=True, text=True, timeout=60)
        return done.stdout
    finally:
        shutil.rmtree(profile, True)


class Figures(HTMLParser):
    """Every element with data-key: its key, the value it stands for, and the text the browser shows."""

    def __init__(self):
        super().__init__()
        self.found: dict[str, tuple[object, str]] = {}
        self.open: list[tuple[str, object, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-key" in attrs:
            self.open.append((".".join(json.loads(attrs["data-key"])), json.loads(attrs["data-value"]), ""))

    def handle_data(self, data):
        if self.open:
            key, value, text = self.open[-1]
            self.open[-1] = (key, value, text + data)

    def handle_endtag(self, tag):
        if self.open and tag in ("b", "td"):
            key, value, text = self.open.pop()
            self.found[key] = (value, text)


def lookup(document, key: str):
    """The document's value at a data-key path (items of "routes" and "origins" named by route or origin)."""
    for part in key.split(".") if not key.startswith(("routes.", "origins.")) else _named(key):
        if isinstance(document, list):
            document = next(item for item in document if part in (item.get("route"), item.get("origin")))
        else:
            document = document[part]
    return document


def _named(key: str) -> list[str]:
    table, rest = key.split(".", 1)
    name, _, figure = rest.rpartition(".")
    if figure in ("open", "idle"):
        name, _, connections = name.rpartition(".")
        return [table, name, connections, figure]
    return [table, name, figure]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
class BrowserTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_the_page_renders_and_its_numbers_are_the_jsons(self):
        cache_dir = temporary_directory(self, "accel-browser-")
        # One route, /app/: what else the browser asks for (/favicon.ico) has none, so it moves no cache figure.
        origin = RecordingOrigin()
        origin_port = reactor.listenTCP(0, server.Site(origin), interface="127.0.0.1")
        self.addCleanup(origin_port.stopListening)
        route = Route(prefix="/app/", origin=parse_origin(f"http://127.0.0.1:{origin_port.getHost().port}/"))
        site = build_site(Config(routes=(route,), cache=replace(Config().cache, dir=cache_dir)), reactor)
        accel_port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(site.close)
        self.addCleanup(accel_port.stopListening)
        origin.handlers[b"/page"] = lambda r: (r.setHeader(b"cache-control", b"max-age=60"), b"hello")[1]
        port = accel_port.getHost().port
        for path in (b"/app/page", b"/app/page", b"/app/page", b"/app/status/503"):
            yield raw_request(port, b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % path)
        url = f"http://127.0.0.1:{port}/accel-status"
        dom = yield deferToThread(chromium, "--dump-dom", url)
        self.assertIn("<h1>accel status</h1>", dom)
        parser = Figures()
        parser.feed(dom)
        document = json.loads((yield raw_request(
            port, b"GET /accel-status?format=json HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        ).partition(b"\r\n\r\n")[2])
        self.assertGreater(len(parser.found), 20)
        counted = {"requests.total", "requests.per_second", "uptime", "bytes.in", "bytes.out",
                   "requests.by_status.2xx", "routes.-.requests", "cache.outcomes.none", "requests.connections",
                   "requests.in_flight", "requests.by_status.4xx"}  # these moved with the page's own request; the rest must be equal
        for key, (value, text) in parser.found.items():
            if key in counted:
                continue
            self.assertEqual(value, lookup(document, key), key)
        # What the browser shows is the value: the figures a person reads.
        self.assertEqual(parser.found["cache.outcomes.miss"], (2, "2"))  # /app/page and the 503
        hits = [parser.found[f"cache.outcomes.{tier}"] for tier in ("memory", "disk")]
        self.assertEqual(sum(value for value, _ in hits), 2)
        self.assertEqual([text for _, text in hits], [str(value) for value, _ in hits])
        self.assertEqual(parser.found["requests.by_status.5xx"], (1, "1"))
        self.assertEqual(parser.found["requests.total"][1], "4")  # before the JSON request and itself
        self.assertEqual(parser.found["cache.hit_ratio"], (0.5, "50.0 %"))
        screenshot = os.path.join(cache_dir, "status.png")
        yield deferToThread(chromium, f"--screenshot={screenshot}", "--window-size=1200,1400",
                            "--hide-scrollbars", url)
        with open(screenshot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        if os.environ.get("ACCEL_STATUS_SCREENSHOT"):  # README's picture: examples/screenshots/status-page.png
            shutil.copy(screenshot, os.environ["ACCEL_STATUS_SCREENSHOT"])
