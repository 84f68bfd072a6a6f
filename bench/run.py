"""Measure accel against nginx's proxy_cache in one run.

    python bench/run.py [--rounds N] [--duration S] [--scenario NAME ...] [--smoke] [--out FILE]

Starts the bench origin (bench/origin.py), accel (``twistd -n accel``) and nginx
(bench/nginx.conf.template) as child processes on 127.0.0.1, runs the scenarios
below, writes the results as JSON (bench/results/<timestamp>.json unless --out)
and prints a Markdown summary. See bench/README.md for what each scenario means.

Throughput scenarios (wrk; systems alternate within each round):
  hit-1k, hit-1m, pass-1k, pass-1k-uncached (the path's route does not cache), close-1k (one request per
  connection),
  hit-1k-text, hit-1k-gzip (one compressible 1 KiB object, without and with Accept-Encoding: gzip)
Python-driven scenarios:
  collapse      100 concurrent first requests to a 1 s origin (both systems)
  burst-2k      2,000 connections opened at once, one hit on each (both systems)
  reload        hit-1k's load while the server is told to reload (SIGHUP): failed requests (both systems)
  idle-10k      RSS of accel holding 10,000 idle keep-alive connections
  stream-rss    peak RSS of accel while a large response streams to a slow client
  startup-100k  accel start-up time with a pre-populated cache
  observed-1k   hit-1k on accel with the JSON access log written and /metrics scraped every second, against
                accel with neither, alternating in each round (the figures are counted in both)
  metrics-1k    hit-1k on accel counting requests ([status] metrics = true) against accel counting nothing
                (metrics = false), alternating in each round: the cost of the counting
"""

import argparse
import contextlib
import datetime
import grp
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import twisted

import client
import loadgen
import procs
import shield

BENCH_DIR = Path(__file__).resolve().parent
MIB = 1024 * 1024
INSTALL_HINT = "apt-get update && apt-get install -y nginx wrk"

THROUGHPUT = {  # scenario -> (path, connections, request fields wrk adds)
    "hit-1k": ("/1k", 50, ()),
    "hit-1m": ("/1m", 10, ()),
    "pass-1k": ("/nocache", 50, ()),
    "pass-1k-uncached": ("/nocache", 50, ()),  # accel's route for the path does not cache, as nginx's location
    "close-1k": ("/1k", 50, ("Connection: close",)),
    "hit-1k-text": ("/1k-text", 50, ()),
    "hit-1k-gzip": ("/1k-text", 50, ("Accept-Encoding: gzip",)),
}
# accel runs with compression on (nginx with gzip for text/plain): hits of a compressed variant must cost
# what identity hits cost, since each coding is made once (target: gzip/identity req/s >= 0.9)
ACCEL_CONFIG = "[compress]\nenabled = true\n"
# pass-1k-uncached: a second accel whose route for /nocache does not cache (CacheDisable), as nginx's
# `location = /nocache` has no proxy_cache; pass-1k measures accel's default, which learns the no-store
UNCACHED_ROUTE = '[[route]]\nprefix = "/nocache"\norigin = "http://127.0.0.1:{port}/nocache"\ncache = {{enabled = false}}\n'
ROUNDS_OF = ("collapse", "burst-2k", "reload", "shield")  # Python-driven scenarios measured on both systems every round
SCENARIOS = [*THROUGHPUT, *ROUNDS_OF, "stream-rss", "startup-100k", "idle-10k", "observed-1k", "metrics-1k"]
COLLAPSE_CLIENTS = 100
RELOAD_PATH, RELOAD_CONNECTIONS = "/1k", 50
RELOAD_EXTRA_S = 10  # the reload scenario's load lasts this much longer than --duration: new workers start under load

POPULATE_CONNECTIONS = 16


@dataclass
class Settings:
    rounds: int
    duration: int
    scenarios: list
    smoke: bool
    out: Path
    startup_entries: int
    populate_limit_s: float
    stream_bytes: int
    stream_rate: int
    burst_clients: int
    idle_connections: int
    workers: int


@dataclass
class Tools:
    twistd: str
    wrk: str | None
    nginx: str | None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="accel vs nginx proxy_cache benchmark")
    p.add_argument("--rounds", type=int, help="rounds per scenario (default 5; smoke 1)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10; smoke 1)")
    p.add_argument("--scenario", nargs="+", choices=SCENARIOS, help="scenarios to run (default: all)")
    p.add_argument("--smoke", action="store_true", help="a quick run proving the harness works")
    p.add_argument("--out", type=Path, help="JSON output file (default bench/results/<timestamp>.json)")
    p.add_argument("--startup-entries", type=int, help="cache entries for startup-100k (default 100000; smoke 200)")
    p.add_argument("--stream-mib", type=int, help="MiB streamed in stream-rss (default 1024; smoke 16)")
    p.add_argument("--stream-rate-mib", type=int, default=64, help="slow client's read rate, MiB/s (default 64)")
    p.add_argument("--workers", type=int, default=1, help="accel's worker processes (twistd accel --workers N; "
                   "default 1; nginx always runs 2)")
    a = p.parse_args(argv)

    def pick(value, full, smoke):
        return value if value is not None else (smoke if a.smoke else full)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Settings(
        rounds=pick(a.rounds, 5, 1),
        duration=pick(a.duration, 10, 1),
        scenarios=a.scenario or ([s for s in SCENARIOS if s != "shield"] if a.smoke else SCENARIOS),
        smoke=a.smoke,
        out=a.out or BENCH_DIR / "results" / f"{stamp}.json",
        startup_entries=pick(a.startup_entries, 100_000, 200),
        populate_limit_s=20.0 if a.smoke else 600.0,
        stream_bytes=pick(a.stream_mib, 1024, 16) * MIB,
        stream_rate=a.stream_rate_mib * MIB,
        burst_clients=pick(None, 2000, 100),
        idle_connections=pick(None, 10_000, 200),
        workers=a.workers,
    )


# --- tools and host --------------------------------------------------------


def find_tools():
    beside_python = Path(sys.executable).with_name("twistd")
    twistd = str(beside_python) if beside_python.exists() else shutil.which("twistd")
    if twistd is None:
        sys.exit("twistd not found: run bench/run.py with the virtualenv's python (e.g. .venv/bin/python)")
    help_text = subprocess.run([twistd, "--help"], capture_output=True, text=True).stdout
    if not re.search(r"^\s+accel\s", help_text, re.M):
        sys.exit(f"{twistd} has no 'accel' plugin: install accel into this environment (pip install -e .)")
    return Tools(twistd=twistd, wrk=shutil.which("wrk"), nginx=shutil.which("nginx"))


def _version(argv, pattern):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    match = re.search(pattern, proc.stdout + proc.stderr)
    return match.group(1) if match else None


def _proc_field(path, key):
    with open(path) as f:
        for line in f:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def python_build() -> str:
    """The interpreter accel runs on (twistd beside this one): its binary, and whether libpython is linked into
    it or loaded as a shared library. The build counts as much as a change to accel: on the same machine a
    distribution's python3 (libpython linked in, built with PGO and LTO) spends 13-19% less CPU per request
    than pyenv's default build (a shared libpython, neither PGO nor LTO)."""
    with open("/proc/self/maps") as maps:
        shared = any("/libpython" in line for line in maps)
    return f"{os.path.realpath(sys.executable)}, {'shared libpython' if shared else 'libpython linked in'}"


def host_info(tools):
    mem_kib = int(_proc_field("/proc/meminfo", "MemTotal").split()[0])
    commit = _version(["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"], r"^([0-9a-f]+)$")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": _proc_field("/proc/cpuinfo", "model name"),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_build": python_build(),
        "twisted": twisted.__version__,
        "nginx": tools.nginx and _version([tools.nginx, "-v"], r"nginx/(\S+)"),
        "wrk": tools.wrk and _version([tools.wrk, "-v"], r"wrk (\S+)"),
        "accel_commit": commit,
    }


# --- the servers -----------------------------------------------------------


class Run:
    """Owns the run's temporary directory and every child process in it."""

    def __init__(self, tools, stack):
        self.tools = tools
        self.stack = stack
        self.work = Path(tempfile.mkdtemp(prefix="accel-bench-"))
        stack.callback(shutil.rmtree, self.work, ignore_errors=True)
        self.origin_port = self._start_origin()

    def _start_origin(self):
        port_file = self.work / "origin.port"
        child = self.stack.enter_context(
            procs.Child("origin", [sys.executable, BENCH_DIR / "origin.py", "--port-file", port_file],
                        self.work / "origin.log")
        )
        port = int(child.wait_file(port_file))
        child.wait_port(port)
        return port

    def start_accel(self, name, cache_dir, workers=1, config_text=None, access_log=None):
        """Start accel on a free port (ACCEL_CONFIG, then ``config_text``, in its configuration file; the options
        override); returns (child, port, seconds until it accepted). Without ``access_log`` it keeps none, as
        nginx's bench configuration (``access_log off``)."""
        port = procs.free_port()
        run_dir = self.work / name
        run_dir.mkdir(exist_ok=True)  # twistd writes twistd.pid into its cwd
        config = run_dir / "accel.toml"
        config.write_text(ACCEL_CONFIG + (config_text or ""))
        argv = [
            self.tools.twistd, "-n", "accel",
            "--config", config,
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",  # as nginx.conf.template
            "--origin", f"http://127.0.0.1:{self.origin_port}",
            "--cache-dir", cache_dir,
            "--workers", str(workers),
            *(["--access-log", access_log] if access_log else []),
        ]
        child = self.stack.enter_context(procs.Child(name, argv, run_dir / "accel.log", cwd=run_dir))
        return child, port, child.wait_port(port)

    def start_nginx(self):
        """Start nginx configured like accel; returns (child, port)."""
        port = procs.free_port()
        prefix = self.work / "nginx"
        prefix.mkdir()
        fill = {
            "PREFIX": str(prefix),
            "PORT": str(port),
            "ORIGIN_PORT": str(self.origin_port),
            "USER": pwd.getpwuid(os.geteuid()).pw_name,
            "GROUP": grp.getgrgid(os.getegid()).gr_name,
        }
        conf = (BENCH_DIR / "nginx.conf.template").read_text()
        for key, value in fill.items():
            conf = conf.replace("{{%s}}" % key, value)
        conf_path = prefix / "nginx.conf"
        conf_path.write_text(conf)
        argv = [self.tools.nginx, "-c", conf_path, "-p", prefix, "-e", prefix / "error.log", "-g", "daemon off;"]
        child = self.stack.enter_context(procs.Child("nginx", argv, prefix / "stdout.log"))
        child.wait_port(port)
        return child, port

    def origin_count(self, path):
        return int(client.fetch(self.origin_port, "/_count?uri=" + quote(path, safe="")).body)


def warm_up(port, path):
    resp = client.fetch(port, path)
    if resp.status != 200:
        raise RuntimeError(f"warm-up GET {path} answered {resp.status}")


# --- scenarios -------------------------------------------------------------


def throughput_once(settings, tools, port, scenario):
    path, connections, headers = THROUGHPUT[scenario]
    warm_up(port, path)
    if tools.wrk:
        return {"tool": "wrk", **loadgen.run_wrk(tools.wrk, port, path, connections, settings.duration, headers)}
    close = "Connection: close" in headers
    extra = [h for h in headers if h != "Connection: close"]
    return {"tool": "python", **client.load(port, path, connections, settings.duration, close, extra)}


def collapse_once(run, port, tag):
    path = f"/slow?r={tag}-{uuid.uuid4().hex[:8]}"
    seconds, statuses = client.collapse(port, path, COLLAPSE_CLIENTS)
    return {
        "path": path,
        "seconds": seconds,
        "origin_fetches": run.origin_count(path),
        "ok": sum(s == 200 for s in statuses),
        "clients": COLLAPSE_CLIENTS,
    }


def burst_once(settings, port):
    warm_up(port, "/1k")
    seconds, ok = client.burst(port, "/1k", settings.burst_clients)
    return {"seconds": seconds, "ok": ok, "clients": settings.burst_clients}


def shield_once(settings, run, port):
    """The shield scenario (bench/shield.py): origin requests per 1,000 client requests, errors in the outage."""
    before = run.origin_count("/shield/*")
    totals = shield.run(port, max(settings.duration, 3 * shield.OUTAGE_S),
                        lambda: client.fetch(run.origin_port, f"/_outage?seconds={shield.OUTAGE_S:g}"))
    origin_requests = run.origin_count("/shield/*") - before
    return {**totals, "origin_requests": origin_requests,
            "origin_per_1000": 1000 * origin_requests / max(totals["requests"], 1)}


def reload_once(settings, tools, port, child, system):
    """hit-1k's load, with SIGHUP sent to the server's first process a quarter of the way through.

    For accel the log tells whether the reload completed (new workers accepting, the previous ones told
    to stop) while the load still ran; a reload that ends after the load would fail nothing by luck."""
    warm_up(port, RELOAD_PATH)
    duration = settings.duration + (0 if settings.smoke else RELOAD_EXTRA_S)
    log_before = child.log_path.stat().st_size
    if tools.wrk:
        wrk = loadgen.start_wrk(tools.wrk, port, RELOAD_PATH, RELOAD_CONNECTIONS, duration)
        time.sleep(duration / 4)
        os.kill(child.pid, signal.SIGHUP)
        measured = {"tool": "wrk", **loadgen.finish_wrk(wrk, duration)}
    else:
        timer = threading.Timer(duration / 4, os.kill, (child.pid, signal.SIGHUP))
        timer.start()
        measured = {"tool": "python", **client.load(port, RELOAD_PATH, RELOAD_CONNECTIONS, duration)}
        timer.join()
    measured["failed"] = measured["errors"] + measured["non_2xx"]
    if system == "accel":
        with open(child.log_path, "rb") as log:
            log.seek(log_before)
            measured["reloaded_under_load"] = b"reloaded:" in log.read()
    return measured


def _alternating(settings, scenario, servers, measure):
    """hit-1k on several accels (``servers``: name -> start_accel's result), taking turns within each round,
    in the reverse order every other round (whoever goes first has the machine a little fresher):
    ``measure(name, port)`` runs one wrk and returns its req/s. Returns {name: [req/s per round]}."""
    rounds = {name: [] for name in servers}
    for rnd in range(settings.rounds):
        for name, (_child, port, _) in list(servers.items())[::-1 if rnd % 2 else 1]:
            rps = measure(name, port)
            rounds[name].append(rps)
            print(f"{scenario} {name:8} {rps:,.0f} req/s", flush=True)
    return rounds


def observed(settings, run):
    """hit-1k on two accels alternating each round: "observed" writes the JSON access log (to /dev/null) and
    has /metrics scraped every second during the load; "plain" writes the combined log to /dev/null and is
    not scraped. Returns the medians and observed/plain (the issue's bound: at least 0.9)."""
    servers = {
        "plain": run.start_accel("accel-plain", run.work / "cache-plain", settings.workers, access_log="/dev/null"),
        "observed": run.start_accel("accel-observed", run.work / "cache-observed", settings.workers,
                                    config_text='[server]\naccess_log_format = "json"\n', access_log="/dev/null"),
    }

    def measure(name, port):
        if name != "observed":
            return throughput_once(settings, run.tools, port, "hit-1k")["rps"]
        stop = threading.Event()
        scrapes = []

        def scrape():
            while True:
                scrapes.append(client.fetch(port, "/metrics").status)
                if stop.wait(1.0):
                    return

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
        try:
            rps = throughput_once(settings, run.tools, port, "hit-1k")["rps"]
        finally:
            stop.set()
            scraper.join()
        if not scrapes or set(scrapes) != {200}:
            raise RuntimeError(f"/metrics scrapes answered {scrapes}")
        return rps

    rounds = _alternating(settings, "observed-1k", servers, measure)
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    return {"rounds": rounds, "plain_rps": medians["plain"], "observed_rps": medians["observed"],
            "observed_over_plain": medians["observed"] / medians["plain"]}


def metrics_switch(settings, run):
    """hit-1k on two accels alternating each round: one counts every request (``[status] metrics = true``,
    the default), the other counts nothing (``metrics = false``). Returns the medians and on/off (issue 20:
    counting on stays within 10% of off, i.e. at least 0.9)."""
    servers = {
        "off": run.start_accel("accel-metrics-off", run.work / "cache-metrics-off", settings.workers,
                               config_text="[status]\nmetrics = false\n"),
        "on": run.start_accel("accel-metrics-on", run.work / "cache-metrics-on", settings.workers,
                              config_text="[status]\nmetrics = true\n"),
    }
    for name, (_child, port, _) in servers.items():  # each is what it says: /metrics is served only when on
        status = client.fetch(port, "/metrics").status
        if status != {"on": 200, "off": 404}[name]:
            raise RuntimeError(f"accel with metrics {name}: /metrics answered {status}")
    rounds = _alternating(settings, "metrics-1k", servers,
                          lambda name, port: throughput_once(settings, run.tools, port, "hit-1k")["rps"])
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    return {"rounds": rounds, "on_rps": medians["on"], "off_rps": medians["off"],
            "on_over_off": medians["on"] / medians["off"]}


def idle_connections(settings, run):
    """accel holding many (10,000) idle keep-alive connections: RSS per connection."""
    child, port, _ = run.start_accel("accel-idle", run.work / "cache-idle")
    with child:
        warm_up(port, "/1k")
        warm_up(port, "/1k")  # a hit: the response is in the memory tier
        before = procs.tree_rss_mib(child.pid)
        t0 = time.monotonic()
        held, answered_again = client.hold_idle(port, "/1k", settings.idle_connections,
                                                while_held=lambda: (procs.tree_rss_mib(child.pid), time.monotonic()))
        rss_held, held_at = held
        return {
            "connections": settings.idle_connections,
            "rss_before_mib": before,
            "rss_held_mib": rss_held,
            "kib_per_connection": (rss_held - before) * 1024 / settings.idle_connections,
            "open_s": held_at - t0 - 1.0,
            "answered_again": answered_again,
        }


def stream_rss(settings, run):
    child, port, _ = run.start_accel("accel-stream", run.work / "cache-stream")
    with child:
        warm_up(port, "/1k")
        before = procs.tree_rss_mib(child.pid)
        peak = before

        def sample():
            nonlocal peak
            peak = max(peak, procs.tree_rss_mib(child.pid))

        resp, seconds = client.slow_read(port, f"/big?size={settings.stream_bytes}", settings.stream_rate,
                                         on_tick=sample)
        sample()
        if resp.status != 200 or resp.body_len != settings.stream_bytes:
            raise RuntimeError(f"stream answered {resp.status} with {resp.body_len} of {settings.stream_bytes} bytes")
        return {
            "bytes": settings.stream_bytes,
            "client_rate_mib_s": settings.stream_rate / MIB,
            "seconds": seconds,
            "rss_before_mib": before,
            "peak_rss_mib": peak,
            "vmhwm_mib": procs.hwm_mib(child.pid),
        }


def startup(settings, run):
    cache_dir = run.work / "cache-startup"
    child, port, empty_listen_s = run.start_accel("accel-startup-1", cache_dir)
    with child:
        warm_up(port, "/1k")
        empty_first_s = time.monotonic() - child.started_at
        paths = [f"/1k?n={i}" for i in range(settings.startup_entries)]
        t0 = time.monotonic()
        ok, failed = client.populate(port, paths, POPULATE_CONNECTIONS, settings.populate_limit_s)
        populate_s = time.monotonic() - t0
    if ok == 0:
        raise RuntimeError("populating the cache got no 200 responses")
    probe = paths[ok + failed - 1]  # the most recently stored entry
    fetches_before = run.origin_count(probe)
    child, port, listen_s = run.start_accel("accel-startup-2", cache_dir)
    with child:
        resp = client.fetch(port, probe)
        first_s = time.monotonic() - child.started_at
    return {
        "entries_requested": settings.startup_entries,
        "entries_populated": ok,
        "populate_failed": failed,
        "populate_s": populate_s,
        "empty_listen_s": empty_listen_s,
        "empty_first_response_s": empty_first_s,
        "listen_s": listen_s,
        "first_response_s": first_s,
        "first_response_status": resp.status,
        "first_response_hit": run.origin_count(probe) == fetches_before,
    }


# --- summary ---------------------------------------------------------------


def _median(rounds, key):
    values = [r[key] for r in rounds if key in r]
    return statistics.median(values) if values else None


def summarize(results, systems):
    """Add per-system medians (and the accel/nginx req/s ratio) to every rounds-based scenario."""
    for name, entry in results.items():
        if "rounds" not in entry:
            continue
        keys = ("rps", "p50_ms", "p99_ms") if name in THROUGHPUT else ("seconds", "origin_fetches", "ok")
        if name == "reload":
            keys = ("rps", "failed")
        if name == "shield":
            keys = ("origin_per_1000", "errors_in_outage", "errors_outside")
        entry["median"] = {s: {k: _median(entry["rounds"][s], k) for k in keys} for s in systems
                           if entry["rounds"].get(s)}
        if name == "collapse":
            for s, med in entry["median"].items():
                med["max_origin_fetches"] = max(r["origin_fetches"] for r in entry["rounds"][s])
        if name == "reload":
            for s, med in entry["median"].items():
                med["total_failed"] = sum(r["failed"] for r in entry["rounds"][s])
                med["reloads_under_load"] = sum(bool(r.get("reloaded_under_load")) for r in entry["rounds"][s])
        if name == "shield":
            for s, med in entry["median"].items():
                med["total_errors_in_outage"] = sum(r["errors_in_outage"] for r in entry["rounds"][s])
        if name == "burst-2k":
            for s, med in entry["median"].items():
                med["max_seconds"] = max(r["seconds"] for r in entry["rounds"][s])
                med["min_ok"] = min(r["ok"] for r in entry["rounds"][s])
        if name in THROUGHPUT and {"accel", "nginx"} <= entry["median"].keys():
            entry["ratio_rps_accel_nginx"] = entry["median"]["accel"]["rps"] / entry["median"]["nginx"]["rps"]
    coded, identity = results.get("hit-1k-gzip", {}), results.get("hit-1k-text", {})
    if "median" in coded and "median" in identity:
        coded["ratio_rps_gzip_identity"] = {
            s: coded["median"][s]["rps"] / identity["median"][s]["rps"]
            for s in systems if s in coded["median"] and s in identity["median"]
        }


def error_notes(results):
    """One note per system and throughput scenario whose rounds saw failed requests."""
    notes = []
    for name in THROUGHPUT:
        for system, rounds in results.get(name, {}).get("rounds", {}).items():
            errors = sum(r["errors"] for r in rounds)
            non_2xx = sum(r["non_2xx"] for r in rounds)
            if errors or non_2xx:
                notes.append(f"{name} {system}: {errors} socket errors/timeouts, {non_2xx} non-2xx/3xx responses")
    return notes


def _fmt(value, digits=1):
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:,.{digits}f}"


def _collapse(entry, a, n, settings):
    yield (f"origin fetches for {COLLAPSE_CLIENTS} concurrent first requests (max over rounds)",
           _fmt(a.get("max_origin_fetches")), _fmt(n.get("max_origin_fetches")))
    yield (f"seconds until all {COLLAPSE_CLIENTS} answered, 1 s origin (median)",
           _fmt(a.get("seconds"), 2), _fmt(n.get("seconds"), 2))


def _burst(entry, a, n, settings):
    yield (f"seconds until all of {entry['rounds']['accel'][0]['clients']} connections opened at once were "
           "answered (median; max)", f"{_fmt(a.get('seconds'), 2)}; {_fmt(a.get('max_seconds'), 2)}",
           f"{_fmt(n.get('seconds'), 2)}; {_fmt(n.get('max_seconds'), 2)}")
    yield "answered 200 (fewest over rounds)", _fmt(a.get("min_ok")), _fmt(n.get("min_ok"))


def _reload(entry, a, n, settings):
    yield (f"failed requests (socket errors + non-2xx) under {RELOAD_CONNECTIONS} connections on {RELOAD_PATH} "
           "with a SIGHUP, all rounds", _fmt(a.get("total_failed")), _fmt(n.get("total_failed")))
    yield ("rounds whose reload completed while the load ran (accel's log)",
           f"{_fmt(a.get('reloads_under_load'))} of {settings['rounds']}", "—")


def _shield(entry, a, n, settings):
    yield ("origin requests per 1,000 client requests, mixed load (median)",
           _fmt(a.get("origin_per_1000")), _fmt(n.get("origin_per_1000")))
    yield (f"client errors during the {shield.OUTAGE_S:g} s origin outage, all rounds",
           _fmt(a.get("total_errors_in_outage")), _fmt(n.get("total_errors_in_outage")))


def _idle(entry, a, n, settings):
    yield (f"RSS before → holding {entry['connections']} idle keep-alive connections, MiB "
           f"({_fmt(entry['kib_per_connection'], 1)} KiB per connection; {entry['answered_again']} answered a "
           "second request)", f"{_fmt(entry['rss_before_mib'])} → {_fmt(entry['rss_held_mib'])}", "not run")


def _stream(entry, a, n, settings):
    achieved = entry["bytes"] / MIB / entry["seconds"]
    yield (f"RSS before → peak, MiB ({entry['bytes'] // MIB} MiB to a client reading "
           f"≤ {_fmt(entry['client_rate_mib_s'], 0)} MiB/s, got {_fmt(achieved, 0)} MiB/s)",
           f"{_fmt(entry['rss_before_mib'])} → {_fmt(entry['peak_rss_mib'])}", "not run")


def _observed(entry, a, n, settings):
    yield (f"hit-1k req/s with the JSON log and /metrics scraped, and without "
           f"(ratio {entry['observed_over_plain']:.3f})", _fmt(entry["observed_rps"]),
           f"{_fmt(entry['plain_rps'])} (accel)")


def _metrics(entry, a, n, settings):
    yield (f"hit-1k req/s counting requests ([status] metrics on), and not (off) "
           f"(ratio {entry['on_over_off']:.3f})", _fmt(entry["on_rps"]), f"{_fmt(entry['off_rps'])} (accel)")


def _startup(entry, a, n, settings):
    yield (f"seconds from start to first answer after {entry['entries_populated']} cacheable responses went "
           f"through (hit: {_fmt(entry['first_response_hit'])})", _fmt(entry["first_response_s"], 2), "not run")
    yield "same, empty cache", _fmt(entry["empty_first_response_s"], 2), "not run"


# Scenario -> its rows of the second table, (measure, accel, nginx), from its entry and medians.
_MEASURES = {
    "collapse": _collapse, "burst-2k": _burst, "reload": _reload, "shield": _shield, "idle-10k": _idle,
    "stream-rss": _stream, "observed-1k": _observed, "metrics-1k": _metrics, "startup-100k": _startup,
}


def markdown(report):
    meta, settings, results = report["host"], report["settings"], report["scenarios"]
    out = [
        f"### accel vs nginx proxy_cache, {meta['date']}",
        "",
        f"Host: {meta['nproc']} CPUs ({meta['cpu']}), {meta['memory_gib']} GiB; "
        f"Python {meta['python']} ({meta.get('python_build', '?')}), "
        f"Twisted {meta['twisted']}, nginx {meta['nginx'] or 'missing'}, wrk {meta['wrk'] or 'missing'}; "
        f"accel commit {meta['accel_commit'] or 'none'}. "
        f"accel with {settings.get('workers', 1)} worker process(es). "
        f"{settings['rounds']} round(s) of {settings['duration']} s, medians"
        f"{' (smoke run)' if settings['smoke'] else ''}.",
        "",
    ]
    rows = [n for n in THROUGHPUT if n in results]
    if rows:
        out += [
            "| scenario | conns | tool | accel req/s | nginx req/s | accel/nginx | accel p50 ms | nginx p50 ms "
            "| accel p99 ms | nginx p99 ms |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in rows:
            entry = results[name]
            if "error" in entry:
                out.append(f"| {name} | | | error: {entry['error'].splitlines()[0]} | | | | | | |")
                continue
            med = entry["median"]
            a, n = med.get("accel", {}), med.get("nginx", {})
            tool = entry["rounds"]["accel"][0]["tool"]
            out.append(
                f"| {name} | {THROUGHPUT[name][1]} | {tool} | {_fmt(a.get('rps'), 0)} | {_fmt(n.get('rps'), 0)} "
                f"| {_fmt(entry.get('ratio_rps_accel_nginx'), 2)} | {_fmt(a.get('p50_ms'), 2)} "
                f"| {_fmt(n.get('p50_ms'), 2)} | {_fmt(a.get('p99_ms'), 2)} | {_fmt(n.get('p99_ms'), 2)} |"
            )
        out.append("")
    other = []
    ratios = results.get("hit-1k-gzip", {}).get("ratio_rps_gzip_identity")
    if ratios:
        other.append(f"| hit-1k-gzip | req/s of gzip hits ÷ identity hits of one 1 KiB text object (target ≥ 0.9) "
                     f"| {_fmt(ratios.get('accel'), 2)} | {_fmt(ratios.get('nginx'), 2)} |")
    for name, measures in _MEASURES.items():
        entry = results.get(name)
        if entry is None:
            continue
        if "error" in entry:
            other.append(f"| {name} | error: {entry['error'].splitlines()[0]} | | |")
            continue
        a, n = entry.get("median", {}).get("accel", {}), entry.get("median", {}).get("nginx", {})
        for measure, accel, nginx in measures(entry, a, n, settings):
            other.append(f"| {name} | {measure} | {accel} | {nginx} |")
    if other:
        out += ["| scenario | measure | accel | nginx |", "|---|---|---:|---:|", *other, ""]
    out += [f"Note: {note}" for note in report["notes"]]
    return "\n".join(out).rstrip() + "\n"


# --- main ------------------------------------------------------------------


def run_scenarios(settings, tools, notes):
    results = {}
    wanted = [s for s in settings.scenarios if s in THROUGHPUT or s in ROUNDS_OF]
    if not tools.wrk and not settings.smoke:
        skipped = [s for s in wanted if s in THROUGHPUT or s == "reload"]
        wanted = [s for s in wanted if s not in skipped]
        if skipped:
            notes.append(f"wrk is missing, skipped {', '.join(skipped)}; install it: {INSTALL_HINT}")
    with contextlib.ExitStack() as stack:
        run = Run(tools, stack)
        systems = {}  # name -> port; the children stop with the ExitStack
        children = {}
        if wanted:
            children["accel"], systems["accel"], _listen_s = run.start_accel("accel", run.work / "cache",
                                                                             settings.workers)
            if tools.nginx:
                children["nginx"], systems["nginx"] = run.start_nginx()
        systems_for = {name: systems for name in wanted}  # (the systems a scenario measures, by name)
        if "pass-1k-uncached" in wanted:
            _, uncached_port, _ = run.start_accel("accel-uncached", run.work / "cache-uncached", settings.workers,
                                                  config_text=UNCACHED_ROUTE.format(port=run.origin_port))
            systems_for["pass-1k-uncached"] = {**systems, "accel": uncached_port}
        for name in wanted:
            results[name] = {"rounds": {s: [] for s in systems}}
        for rnd in range(settings.rounds):
            for name in wanted:
                entry = results[name]
                if "error" in entry:
                    continue
                for system, port in systems_for[name].items():
                    try:
                        if name == "collapse":
                            measured = collapse_once(run, port, f"{system}-{rnd}")
                        elif name == "burst-2k":
                            measured = burst_once(settings, port)
                        elif name == "reload":
                            measured = reload_once(settings, tools, port, children[system], system)
                        elif name == "shield":
                            measured = shield_once(settings, run, port)
                        else:
                            measured = throughput_once(settings, tools, port, name)
                    except Exception as exc:  # record it, go on with the other scenarios
                        entry["error"] = f"{system} round {rnd}: {exc}"
                        break
                    entry["rounds"][system].append(measured)
                    print(f"round {rnd + 1}/{settings.rounds} {name:8} {system:5} "
                          f"{_progress(measured)}", flush=True)
        summarize(results, systems)
        notes.extend(error_notes(results))
        for name, func in (("stream-rss", stream_rss), ("startup-100k", startup), ("idle-10k", idle_connections),
                           ("observed-1k", observed), ("metrics-1k", metrics_switch)):
            if name in settings.scenarios:
                try:
                    results[name] = func(settings, run)
                except Exception as exc:
                    results[name] = {"error": str(exc)}
                print(f"{name}: {json.dumps(results[name])}", flush=True)
    return results


def _progress(measured):
    if "origin_per_1000" in measured:
        return (f"{measured['origin_per_1000']:.1f} origin requests per 1,000 ({measured['requests']} requests), "
                f"{measured['errors_in_outage']} errors in the outage, {measured['errors_outside']} outside")
    if "failed" in measured:
        return f"{measured['rps']:,.0f} req/s  {measured['failed']} failed"
    if "rps" in measured:
        return f"{measured['rps']:,.0f} req/s  p50 {measured['p50_ms']:.2f} ms  p99 {measured['p99_ms']:.2f} ms"
    if "origin_fetches" not in measured:
        return f"{measured['ok']}/{measured['clients']} ok, {measured['seconds']:.2f} s"
    return f"{measured['origin_fetches']} origin fetch(es), {measured['ok']}/{measured['clients']} ok, " \
           f"{measured['seconds']:.2f} s"


def main(argv=None):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups on SIGTERM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # burst-2k and idle-10k hold many sockets;
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the children inherit the limit
    settings = parse_args(argv)
    tools = find_tools()
    notes = []
    if not tools.nginx:
        notes.append(f"nginx is missing, measured accel only; install it: {INSTALL_HINT}")
    if not tools.wrk and settings.smoke:
        notes.append(f"wrk is missing, the Python load generator stood in; install it: {INSTALL_HINT}")
    for note in notes:
        print(f"NOTE: {note}", file=sys.stderr)
    host = host_info(tools)
    results = run_scenarios(settings, tools, notes)
    report = {
        "host": host,
        "settings": {
            "rounds": settings.rounds,
            "duration": settings.duration,
            "smoke": settings.smoke,
            "scenarios": settings.scenarios,
            "startup_entries": settings.startup_entries,
            "stream_bytes": settings.stream_bytes,
            "stream_rate": settings.stream_rate,
            "workers": settings.workers,
        },
        "notes": notes,
        "scenarios": results,
    }
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(markdown(report))
    print(f"JSON: {settings.out}")
    errors = [name for name, entry in results.items() if "error" in entry]
    if errors:
        print(f"FAILED scenarios: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
