"""``accel top [URL]``: a live terminal view of a running server, from its status page's JSON (like varnishstat).

Every second it reads ``<status page>?format=json`` and shows the requests per second and the hit ratio over
the last interval (differences between two documents), the busiest URLs by requests and by misses, and each
origin's fetch latency. ``--once --json`` prints one such sample (two documents ``--interval`` apart) for scripts.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import click

from accel.cli.messages import CommandError
from accel.config import ConfigError, load_config


def status_url(config_path: str) -> str:
    """The status page's JSON URL of the server a configuration file describes (its first plain TCP listener)."""
    try:
        config = load_config(config_path)
    except ConfigError as e:
        raise CommandError(str(e)) from None
    for endpoint in config.listen:
        parts = endpoint.split(":")
        if parts[0] in ("tcp", "tcp6") and len(parts) > 1 and parts[1].isdigit():
            options = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
            host = options.get("interface", "127.0.0.1" if parts[0] == "tcp" else "::1")
            if host in ("0.0.0.0", "::"):
                host = "127.0.0.1" if host == "0.0.0.0" else "::1"
            host = f"[{host}]" if ":" in host else host
            return f"http://{host}:{parts[1]}{config.status.path}"
    raise CommandError(f"{config_path}: no tcp: listener to reach the status page on; give its URL")


def fetch(url: str) -> dict:
    json_url = url + ("&" if "?" in url else "?") + "format=json"
    try:
        with urllib.request.urlopen(json_url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        raise CommandError(f"{url}: {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise CommandError(f"{url}: {getattr(e, 'reason', e)}") from None
    except ValueError:
        raise CommandError(f"{url}: not a status document") from None


def sample(before: dict, after: dict) -> dict:
    """What changed between two status documents, as ``accel top`` shows it."""
    seconds = max(after["time"] - before["time"], 1e-9)
    requests = after["requests"]["total"] - before["requests"]["total"]
    outcomes = {name: n - before["cache"]["outcomes"].get(name, 0) for name, n in after["cache"]["outcomes"].items()}
    hits = outcomes["memory"] + outcomes["disk"]
    looked_up = hits + outcomes["miss"] + outcomes["pass"]
    return {
        "time": after["time"],
        "interval": round(seconds, 3),
        "workers": after["workers"],
        "requests_per_second": round(requests / seconds, 2),
        "requests": requests,
        "hit_ratio": round(hits / looked_up, 4) if looked_up else None,
        "outcomes": outcomes,
        "in_flight": after["requests"]["in_flight"],
        "connections": after["requests"]["connections"],
        "top_by_requests": after["top_urls"]["by_requests"],
        "top_by_misses": after["top_urls"]["by_misses"],
        "origins": [{"origin": o["origin"], "fetches": o["fetches"], "error_rate": o["error_rate"],
                     **o["latency"]} for o in after["origins"]],
    }


def _ms(value) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _percent(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


def screen(url: str, s: dict) -> str:
    ratio = _percent(s["hit_ratio"]) + (" %" if s["hit_ratio"] is not None else "")
    lines = [
        f"accel top  {url}  {time.strftime('%H:%M:%S', time.localtime(s['time']))}  workers {s['workers']}",
        f"req/s {s['requests_per_second']:>10.1f}   hit ratio {ratio:>8}   in flight {s['in_flight']:>5}"
        f"   connections {s['connections']:>6}",
        "  ".join(f"{name} {n}" for name, n in s["outcomes"].items()),
        "",
        f"{'requests':>9} {'misses':>7}  top URLs by requests",
        *(f"{u['requests']:>9} {u['misses']:>7}  {u['target']}" for u in s["top_by_requests"]),
        "",
        f"{'misses':>9}  top URLs by misses",
        *(f"{u['misses']:>9}  {u['target']}" for u in s["top_by_misses"]),
        "",
        f"{'fetches':>9} {'err %':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  origin",
        *(f"{o['fetches']:>9} {_percent(o['error_rate']):>6} {_ms(o['p50']):>8} {_ms(o['p90']):>8}"
          f" {_ms(o['p99']):>8}  {o['origin']}" for o in s["origins"]),
    ]
    return "\n".join(lines)


@click.command()
@click.argument("url", required=False)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Find the status page from this file.")
@click.option("--once", is_flag=True, help="Print one sample and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: the sample as JSON.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.05),
              help="Seconds between samples.")
def top(url: str | None, config_path: str | None, once: bool, as_json: bool, interval: float) -> None:
    """A live view of a running accel: req/s, hit ratio, top URLs, origin latency (from the status page)."""
    if url is None and config_path is None:
        raise CommandError("give the status page's URL (http://127.0.0.1:8080/accel-status) or --config FILE")
    url = url or status_url(config_path)
    previous = fetch(url)
    while True:
        time.sleep(interval)
        current = fetch(url)
        s = sample(previous, current)
        previous = current
        if once:
            click.echo(json.dumps(s, indent=1) if as_json else screen(url, s))
            return
        click.clear()
        click.echo(screen(url, s))
