"""The configuration of WebSocket tunnels and compression (issue 19): keys, defaults, inheritance, mistakes."""

from __future__ import annotations

import pytest

from accel.config import COMPRESS_TYPES, Compress, ConfigError, parse_config, with_overrides

ROUTE = "[[route]]\nprefix = '/'\norigin = 'http://o/'\n"


def test_defaults():
    config = parse_config(ROUTE, "accel.toml")
    route = config.routes[0]
    assert config.compress == route.compress == Compress()
    assert Compress() == Compress(enabled=False, types=COMPRESS_TYPES, min_size=1024, level=6, brotli=False)
    assert COMPRESS_TYPES == ("text/*", "application/json", "application/javascript", "application/xml", "image/svg+xml")
    assert (route.websocket, route.websocket_idle_timeout, route.websocket_max_tunnels) == (False, 300.0, 1000)


def test_route_compress_keeps_what_it_leaves_out_from_the_server_wide_table():
    config = parse_config(
        "[compress]\nenabled = true\nlevel = 4\ntypes = ['text/html']\nbrotli = true\n"
        + ROUTE + "[route.compress]\nmin_size = 10\n"
        "[[route]]\nprefix = '/raw/'\norigin = 'http://o/'\n[route.compress]\nenabled = false\n",
        "accel.toml",
    )
    root, raw = sorted(config.routes, key=lambda r: r.prefix)
    assert root.compress == Compress(enabled=True, types=("text/html",), min_size=10, level=4, brotli=True)
    assert raw.compress == Compress(enabled=False, types=("text/html",), min_size=1024, level=4, brotli=True)


def test_websocket_origins():
    config = parse_config(
        "[[route]]\nprefix = '/ws/'\norigin = 'ws://backend:9000/ws/'\nwebsocket_idle_timeout = 30\n"
        "websocket_max_tunnels = 5\n"
        "[[route]]\nprefix = '/secure/'\norigin = 'wss://backend/s/'\n"
        "[[route]]\nprefix = '/app/'\norigin = 'http://backend/'\nwebsocket = true\n",
        "accel.toml",
    )
    ws, secure, app = config.routes
    assert (ws.websocket, ws.origin.scheme, ws.origin.port, ws.origin.base_path) == (True, "http", 9000, "/ws/")
    assert (ws.websocket_idle_timeout, ws.websocket_max_tunnels) == (30.0, 5)
    assert (secure.websocket, secure.origin.scheme, secure.origin.port, secure.tls_verify) == (True, "https", 443, True)
    assert app.websocket and app.origin.scheme == "http"
    assert with_overrides(config, origin="wss://elsewhere/").routes[-1].websocket


@pytest.mark.parametrize(
    "text, message",
    [
        ("[compress]\nlevel = 0\n", "compress.level: expected a whole number from 1 to 9, got 0"),
        ("[compress]\nmin_size = -1\n", "compress.min_size: expected a number of bytes, 0 or more"),
        ("[compress]\ntypes = ['text']\n", "compress.types: expected media types such as \"text/*\""),
        ("[compress]\nenabled = 'yes'\n", "compress.enabled: expected true or false"),
        ("[compress]\ngzip = true\n", "compress.gzip: expected a known key"),
        (ROUTE + "[route.compress]\nlevel = 12\n", "route[0].compress.level: expected a whole number from 1 to 9"),
        ("[[route]]\nprefix = '/'\norigin = 'ws://o/'\nwebsocket = false\n",
         "route[0].websocket: expected true (or absent) with a ws:// or wss:// origin"),
        ("[[route]]\nprefix = '/'\nexclude = true\nwebsocket = true\n",
         "route[0].websocket: expected an origin on this route"),
        (ROUTE + "websocket_idle_timeout = 0\n", "route[0].websocket_idle_timeout: expected a number of seconds greater than 0"),
        (ROUTE + "websocket_max_tunnels = 0\n", "route[0].websocket_max_tunnels: expected a whole number greater than 0"),
        ("[[route]]\nprefix = '/'\norigin = 'ws://o/'\ntls_verify = false\n",
         "route[0].tls_verify: expected an https:// origin on this route"),
    ],
)
def test_mistakes(text, message):
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "accel.toml")
    assert message in str(raised.value)


def test_brotli_without_the_package_is_a_config_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"compress.brotli: expected the brotli package installed"):
        parse_config("[compress]\nbrotli = true\n", "accel.toml")
