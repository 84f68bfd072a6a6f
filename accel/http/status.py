"""The status page at ``[status] path`` (default ``/accel-status``) and the Prometheus metrics at
``[status] metrics_path`` (default ``/metrics``), served only to ``[status] allow`` (default loopback; 403
otherwise), answered before routing: never forwarded, never cached (``Cache-Control: no-store``).

The page is one document: the traffic figures of every worker (``build_document``: each process's
``accel.http.traffic`` snapshot and a few gauges, summed; ``figures()``, injected by ``accel.app``, fires with
it and with the processes' figures it was built from), followed by *parts* that other layers provide (the
balancer manager is one; ``accel.app`` wires them), which take what they show from those processes' figures.
HTML for a person, the same as JSON at ``<path>?format=json``, and the figures as Prometheus metrics
(``accel.http.metrics``). With ``[status] metrics = false`` requests are not counted (``"counting": false``:
the page shows what is still known and says so) and the metrics path answers 404.

    part.title                   the heading of its HTML section
    part.prefix                  POSTs to ``<path>/<prefix>/...`` go to this part
    part.describe(processes)     its keys of the JSON document (``<path>?format=json``), from every process's
        -> dict                  published figures (``processes``: this process's alone without workers)
    part.html(path, document)    its HTML section, from its keys of the ``document``; forms post to
        -> str                   ``path + "/" + prefix + ...``
    part.change(rest, form)      a POST: ``rest`` are the path segments after the prefix, ``form`` the fields
                                 (form-encoded or a JSON object); returns a JSON-able answer (or a Deferred
                                 firing with one) or raises ``StatusError``

A form-encoded POST (a browser's form) is answered with 303 See Other back to the page; a JSON one with JSON.
A POST whose ``Origin`` names another site than ``Host`` is refused (a page elsewhere must not drive it).
"""

from __future__ import annotations

import html
import json
from urllib.parse import parse_qs, urlsplit

from collections.abc import Callable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from accel import __version__
from accel.config import StatusSettings
from accel.http.accesslog import request_label
from accel.http.addresses import peer_in, peer_name
from accel.http.errors import ErrorPages
from accel.http.traffic import (BUCKETS, CLOSE_REASONS, FIRST_CLOSE, OUTCOMES, TO_CLIENT, TO_ORIGIN, TUNNELS_OPEN,
                                TUNNELS_OPENED, merge, percentile)

log = Logger()

MAX_FORM_BYTES = 16384


TOP = 10  # URLs in each top list


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _latency(histogram: list) -> dict:
    return {name: (None if (p := percentile(histogram, q)) is None else round(p, 6))
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}


def _tunnels(figures: list[int]) -> dict:
    """A route's (or every route's) WebSocket tunnel figures (``accel.http.traffic.Traffic.tunnel_opened``)."""
    return {
        "open": figures[TUNNELS_OPEN],
        "opened": figures[TUNNELS_OPENED],
        "bytes": {"client_to_origin": figures[TO_ORIGIN], "origin_to_client": figures[TO_CLIENT]},
        "closes": dict(zip(CLOSE_REASONS, figures[FIRST_CLOSE:])),
    }


def build_document(processes: list[dict], disk: dict | None, now: float) -> dict:
    """The status document from every process's published figures (``processes``) and the disk tier's
    ``DiskStore.stats()`` (None without a cache)."""
    t = merge([p["traffic"] for p in processes])
    outcomes = dict.fromkeys(OUTCOMES, 0)
    statuses: dict[str, int] = {}
    routes: dict[str, list[int]] = {}
    total = 0
    for (route, _, status, outcome), count in t["requests"].items():
        total += count
        outcomes[outcome] += count
        statuses[status] = statuses.get(status, 0) + count
        known = routes.setdefault(route, [0, 0])
        known[0] += count
        if status == "5xx":
            known[1] += count
    pools: dict[str, list[int]] = {}
    for p in processes:
        for origin, open_, idle in p.get("pools", ()):
            known = pools.setdefault(origin, [0, 0])
            known[0] += open_
            known[1] += idle
    memory = {name: sum(p.get(name, 0) for p in processes) for name in ("objects", "bytes", "evictions")}
    hits = outcomes["memory"] + outcomes["disk"]
    uptime = max(0.0, now - t["started"]) if t["started"] is not None else 0.0
    urls = [{"target": target, "requests": c[0], "misses": c[1]} for target, c in t["urls"].items()]
    tunnels = t["tunnels"]
    all_tunnels = [sum(column) for column in zip(*tunnels.values())] or [0] * (FIRST_CLOSE + len(CLOSE_REASONS))
    return {
        "version": __version__,
        "counting": t["counting"],
        "time": now,
        "uptime": round(uptime, 3),
        "workers": len(processes),
        "requests": {
            "total": total,
            "per_second": round(total / uptime, 3) if uptime else 0.0,
            "in_flight": sum(p.get("in_flight", 0) for p in processes),
            "connections": t["connections"],
            "by_status": dict(sorted(statuses.items())),
        },
        "bytes": {"in": t["bytes_in"], "out": t["bytes_out"]},
        "cache": {
            "outcomes": outcomes,
            "hit_ratio": _ratio(hits, hits + outcomes["miss"] + outcomes["pass"]),
            "tiers": {
                "memory": memory,
                "disk": None if disk is None else {"objects": disk["entries"], "bytes": disk["bytes"]},
            },
            "purges": dict(sorted(t["purges"].items())),
            "collapsed_waiters": t["collapsed"],
        },
        "routes": [
            {"route": route, "requests": n, "errors": errors, "error_rate": _ratio(errors, n),
             "latency": _latency(t["latency"][route])}
            for route, (n, errors) in sorted(routes.items())
        ],
        "origins": [
            {"origin": origin, "fetches": f["fetches"], "failures": f["failures"], "errors": f["errors"],
             "error_rate": _ratio(f["failures"] + f["errors"], f["fetches"]), "latency": _latency(f["latency"]),
             "connections": dict(zip(("open", "idle"), pools.get(origin, (0, 0))))}
            for origin, f in sorted(t["origins"].items())
        ],
        "websocket": {
            **_tunnels(all_tunnels),
            "routes": [{"route": route, **_tunnels(figures)} for route, figures in sorted(tunnels.items())],
        },
        "top_urls": {
            "by_requests": sorted(urls, key=lambda u: (-u["requests"], u["target"]))[:TOP],
            "by_misses": sorted((u for u in urls if u["misses"]), key=lambda u: (-u["misses"], u["target"]))[:TOP],
        },
        "counters": [{"route": r, "method": m, "status": s, "cache": o, "count": n}
                     for (r, m, s, o), n in sorted(t["requests"].items())],
        "histograms": {
            "bounds": list(BUCKETS),
            "requests": t["latency"],
            "origins": {origin: f["latency"] for origin, f in t["origins"].items()},
        },
    }


class StatusError(Exception):
    """A change the status page refuses, with its status code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class StatusPage:
    def __init__(self, settings: StatusSettings, parts, errors: ErrorPages, figures: Callable[[], Deferred]):
        """``figures()`` fires with (the traffic document of every worker, ``build_document``; the processes'
        published figures it was built from)."""
        self.settings = settings
        self.path = settings.path
        self.parts = list(parts)
        self.errors = errors
        self.figures = figures

    def claims(self, path: str) -> bool:
        """Whether a (normalised) request path is the page's, below it, or the metrics'."""
        return path == self.path or path.startswith(self.path + "/") or path == self.settings.metrics_path

    def handle(self, request, target: str) -> None:
        if not peer_in(request.getClientAddress(), self.settings.allow, self.settings.allow_unix_peers):
            log.warn("status page refused to {peer}", peer=peer_name(request.getClientAddress()))
            self.errors.send(request, 403, "The status page is not served to this address.")
            return
        path, _, query = target.partition("?")
        method = request.method
        if path == self.settings.metrics_path and not self.settings.metrics:
            self.errors.send(request, 404, "Metrics are off here ([status] metrics = false).")
            return
        if path in (self.path, self.settings.metrics_path):
            if method not in (b"GET", b"HEAD"):
                self.errors.send(request, 405, "GET the status page; POST to its members' addresses.", {b"allow": b"GET, HEAD"})
                return
            if path == self.settings.metrics_path:
                from accel.http.metrics import CONTENT_TYPE, exposition

                render = lambda document: (exposition(document), CONTENT_TYPE)
            elif parse_qs(query).get("format") == ["json"]:
                render = lambda document: (json.dumps(document, indent=1).encode() + b"\n", b"application/json")
            else:
                render = lambda document: (self.page(document).encode("utf-8"), b"text/html; charset=utf-8")
            d = self.figures()
            d.addCallback(lambda figures: self.send(request, 200, *render(self.describe(figures))))
            d.addErrback(lambda failure: self.failed(request, failure))
            return
        rest = path[len(self.path) + 1 :].split("/")
        part = next((p for p in self.parts if p.prefix == rest[0]), None)
        if part is None:
            self.errors.send(request, 404, "Nothing on the status page has this address.")
        elif method != b"POST":
            self.errors.send(request, 405, "POST changes here.", {b"allow": b"POST"})
        elif not self.same_site(request):
            self.errors.send(request, 403, "A change must come from the status page's own site.")
        else:
            read_form(request).addCallback(lambda form: self.change(request, part, rest[1:], form))

    def change(self, request, part, rest: list[str], form) -> None:
        if request._disconnected:
            return
        if isinstance(form, StatusError):
            self.errors.send(request, form.code, str(form))
            return
        fields, from_browser = form
        d = maybeDeferred(part.change, rest, fields)
        d.addCallback(lambda answer: self.changed(request, fields, from_browser, answer))
        d.addErrback(lambda failure: self.refused(request, failure))

    def refused(self, request, failure) -> None:
        if not failure.check(StatusError):
            self.failed(request, failure)
        elif not request._disconnected:
            self.errors.send(request, failure.value.code, str(failure.value))

    def changed(self, request, fields: dict, from_browser: bool, answer) -> None:
        """A change is made (with worker processes: in every worker)."""
        log.info("status page: {path} changed by {peer}: {fields}", path=request.path.decode("latin-1"),
                 peer=peer_name(request.getClientAddress()), fields=fields)
        if request._disconnected:
            return
        if from_browser:
            request.setHeader(b"location", self.path.encode("latin-1"))
            self.send(request, 303, b"", b"text/plain")
        else:
            self.answer(request, 200, answer)

    @staticmethod
    def same_site(request) -> bool:
        origin = request.getHeader(b"origin")
        if origin is None:
            return True
        return urlsplit(origin.decode("latin-1")).netloc.lower() == (request.getHeader(b"host") or b"").decode("latin-1").lower()

    def describe(self, figures: tuple[dict, list[dict]]) -> dict:
        """The whole document: the traffic figures, then each part's keys."""
        traffic, processes = figures
        document = dict(traffic)
        for part in self.parts:
            document.update(part.describe(processes))
        return document

    def page(self, document: dict) -> str:
        sections = "\n".join(f"<section><h2>{html.escape(p.title)}</h2>\n{p.html(self.path, document)}</section>"
                             for p in self.parts)
        return (
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>accel status</title>\n"
            f"<style>{_STYLE}</style></head>\n<body><h1>accel status</h1>\n{figures_html(document)}\n{sections}\n"
            f"<p><a href=\"{html.escape(self.path)}?format=json\">JSON</a></p></body></html>\n"
        )

    def failed(self, request, failure) -> None:
        log.failure("status page failed for {request}", failure=failure, request=request_label(request))
        if not (request._disconnected or request.finished):
            self.errors.send(request, 500)

    def answer(self, request, code: int, document) -> None:
        self.send(request, code, json.dumps(document, indent=1).encode("utf-8") + b"\n", b"application/json")

    @staticmethod
    def send(request, code: int, body: bytes, content_type: bytes) -> None:
        if request._disconnected:
            return
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(body)
        request.finish()


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:left}th{background:#eee}"
    "form{display:inline}.up{color:#070}.out{color:#b00}.disabled{color:#777}.draining{color:#a60}"
    ".standby{color:#057}input[type=number]{width:4em}.off{color:#a60;font-weight:bold}"
    ".tiles{display:flex;flex-wrap:wrap;gap:.6em;margin:1em 0}"
    ".tile{border:1px solid #bbb;border-radius:4px;padding:.4em .8em;min-width:7em}"
    ".tile b{display:block;font-size:1.4em}.tile span{color:#555;font-size:.85em}td.n{text-align:right}"
)


def _number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _seconds(value) -> str:
    return "–" if value is None else f"{value * 1000:.1f} ms"


def _percent(value) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def _data(key: str | tuple, value) -> str:
    """The attributes naming the document's value an element shows: ``data-key`` is its path in the JSON
    (a JSON array; an item of "routes" or "origins" is named by its route or origin), ``data-value`` the value."""
    path = key.split(".") if isinstance(key, str) else list(key)
    return f' data-key="{html.escape(json.dumps(path))}" data-value="{html.escape(json.dumps(value))}"'


def _cell(text: str, key: str | tuple | None = None, value=None) -> str:
    """A numeric cell; ``key`` names the document's value it shows."""
    return f'<td class="n"{_data(key, value) if key else ""}>{html.escape(text)}</td>'


def _tile(label: str, key: str, value, text: str | None = None) -> str:
    shown = html.escape(text if text is not None else _number(value))
    return f'<div class="tile"><b{_data(key, value)}>{shown}</b><span>{html.escape(label)}</span></div>'


def _table(headings: tuple[str, ...], rows: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join(f"<tr>{row}</tr>" for row in rows) or f'<tr><td colspan="{len(headings)}">none yet</td></tr>'
    return f"<table><tr>{head}</tr>{body}</table>"


def figures_html(document: dict) -> str:
    """The traffic figures of the document as HTML; every figure carries its place in the JSON (``data-key``)."""
    d = document
    requests, cache, tiers = d["requests"], d["cache"], d["cache"]["tiers"]
    counting = d["counting"]
    tiles = "".join((
        _tile("version", "version", d["version"]),
        _tile("uptime", "uptime", d["uptime"], f"{d['uptime']:.0f} s"),
        _tile("workers", "workers", d["workers"]),
        *((_tile("requests", "requests.total", requests["total"]),
           _tile("req/s (average)", "requests.per_second", requests["per_second"])) if counting else ()),
        _tile("in flight", "requests.in_flight", requests["in_flight"]),
        _tile("client connections", "requests.connections", requests["connections"]),
        *((_tile("hit ratio", "cache.hit_ratio", cache["hit_ratio"], _percent(cache["hit_ratio"])),
           _tile("bytes in", "bytes.in", d["bytes"]["in"]),
           _tile("bytes out", "bytes.out", d["bytes"]["out"])) if counting else ()),
    ))
    outcomes = _table(tuple(cache["outcomes"]), ["".join(
        _cell(_number(n), f"cache.outcomes.{name}", n) for name, n in cache["outcomes"].items())])
    statuses = _table(tuple(requests["by_status"]) or ("status",), ["".join(
        _cell(_number(n), f"requests.by_status.{name}", n) for name, n in requests["by_status"].items())])
    tier_rows = []
    for tier, figures in tiers.items():
        if figures is None:
            continue
        tier_rows.append(f"<td>{tier}</td>" + "".join(
            _cell(_number(figures[name]), f"cache.tiers.{tier}.{name}", figures[name]) if name in figures
            else _cell("–") for name in ("objects", "bytes", "evictions")))
    other = _table(("purges", "collapsed waiters"), [
        _cell(", ".join(f"{k}: {v}" for k, v in cache["purges"].items()) or "0", "cache.purges", cache["purges"])
        + _cell(_number(cache["collapsed_waiters"]), "cache.collapsed_waiters", cache["collapsed_waiters"])])
    route_rows = [
        f"<td>{html.escape(r['route'])}</td>"
        + _cell(_number(r["requests"]), ("routes", r["route"], "requests"), r["requests"])
        + _cell(_number(r["errors"]), ("routes", r["route"], "errors"), r["errors"]) + _cell(_percent(r["error_rate"]))
        + "".join(_cell(_seconds(r["latency"][p])) for p in ("p50", "p90", "p99"))
        for r in d["routes"]
    ]
    origin_rows = [
        f"<td>{html.escape(o['origin'])}</td>"
        + _cell(_number(o["fetches"]), ("origins", o["origin"], "fetches"), o["fetches"])
        + _cell(_number(o["failures"]), ("origins", o["origin"], "failures"), o["failures"])
        + _cell(_number(o["errors"]), ("origins", o["origin"], "errors"), o["errors"]) + _cell(_percent(o["error_rate"]))
        + "".join(_cell(_seconds(o["latency"][p])) for p in ("p50", "p90", "p99"))
        + "".join(_cell(_number(o["connections"][state]), ("origins", o["origin"], "connections", state),
                        o["connections"][state]) for state in ("open", "idle"))
        for o in d["origins"]
    ]
    tunnel_rows = [_tunnel_row(r["route"], ("websocket", "routes", r["route"]), r) for r in d["websocket"]["routes"]]
    if tunnel_rows:
        tunnel_rows.append(_tunnel_row("all routes", ("websocket",), d["websocket"]))
    top = _table(("URL", "requests", "misses"), [
        f"<td>{html.escape(u['target'])}</td>" + _cell(_number(u["requests"])) + _cell(_number(u["misses"]))
        for u in d["top_urls"]["by_requests"]])
    tiers_table = _table(("tier", "objects", "bytes", "evictions"), tier_rows)
    tunnels = _table(("route", "open", "opened", "bytes client → origin", "bytes origin → client",
                      *(f"closed: {r}" for r in CLOSE_REASONS)), tunnel_rows)
    if not counting:
        return (
            f'<p class="off" data-key=\'["counting"]\' data-value="false">Counting is off ([status] metrics = false): '
            "requests, bytes, cache outcomes, routes, origins and URLs are not counted.</p>\n"
            f'<div class="tiles">{tiles}</div>\n<h2>Cache</h2>\n{tiers_table}\n{other}\n'
            f"<h2>WebSocket tunnels</h2>\n{tunnels}"
        )
    return (
        f'<div class="tiles">{tiles}</div>\n'
        f"<h2>Cache</h2>\n{outcomes}\n{tiers_table}\n{other}\n"
        f"<h2>Responses</h2>\n{statuses}\n"
        "<h2>Routes</h2>\n" + _table(("route", "requests", "5xx", "error rate", "p50", "p90", "p99"), route_rows) +
        "\n<h2>Origins</h2>\n" + _table(("origin", "fetches", "failures", "5xx", "error rate", "p50", "p90", "p99",
                                         "open", "idle"), origin_rows) +
        f"\n<h2>WebSocket tunnels</h2>\n{tunnels}"
        f"\n<h2>Top URLs</h2>\n{top}"
    )


def _tunnel_row(label: str, key: tuple, figures: dict) -> str:
    """A row of the WebSocket table: a route's tunnels (``key``: where ``figures`` are in the JSON), or all."""
    values = [(("open",), figures["open"]), (("opened",), figures["opened"])]
    values += [(("bytes", direction), figures["bytes"][direction]) for direction in ("client_to_origin", "origin_to_client")]
    values += [(("closes", reason), figures["closes"][reason]) for reason in CLOSE_REASONS]
    return f"<td>{html.escape(label)}</td>" + "".join(_cell(_number(v), key + path, v) for path, v in values)


class _Collector:
    def __init__(self):
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)


def read_form(request):
    """Fires with (fields, whether form-encoded) for a POST's body, or a ``StatusError``."""
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    body = request.body
    if body is None:
        return succeed(_parse(b"", content_type))
    if isinstance(body.length, int) and body.length > MAX_FORM_BYTES:
        body.abandon()
        return succeed(StatusError(413, f"A change takes at most {MAX_FORM_BYTES} bytes."))
    collector = _Collector()
    done = body.startProducing(collector)

    def parsed(_):
        if collector.size > MAX_FORM_BYTES:
            return StatusError(413, f"A change takes at most {MAX_FORM_BYTES} bytes.")
        return _parse(b"".join(collector.chunks), content_type)

    return done.addCallbacks(parsed, lambda failure: StatusError(400, "The request body broke off."))


def _parse(data: bytes, content_type: bytes):
    if content_type == b"application/json":
        try:
            fields = json.loads(data or b"{}")
        except ValueError:
            return StatusError(400, "The body is not valid JSON.")
        if not isinstance(fields, dict):
            return StatusError(400, "The body must be a JSON object.")
        return {str(k): str(v) for k, v in fields.items()}, False
    try:
        pairs = parse_qs(data.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(data))
    except (UnicodeDecodeError, ValueError):
        return StatusError(400, "The body is not a valid form.")
    return {name: values[-1] for name, values in pairs.items()}, True
