"""``bench/run.py --smoke`` runs end to end and writes the expected JSON.

The smoke run needs neither nginx nor wrk (the Python load generator stands in
and nginx is reported missing); it does need twistd with the accel plugin.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"
SCENARIOS = ["hit-1k", "hit-1m", "pass-1k", "pass-1k-uncached", "close-1k", "hit-1k-text", "hit-1k-gzip", "collapse", "burst-2k",
             "reload", "stream-rss", "startup-100k", "idle-10k", "observed-1k", "metrics-1k"]


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_smoke_run(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--workers", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| hit-1k |" in proc.stdout  # the Markdown summary
    report = json.loads(out.read_text())
    results = report["scenarios"]
    assert sorted(results) == sorted(SCENARIOS)

    for name in ["hit-1k", "hit-1m", "pass-1k", "pass-1k-uncached", "close-1k", "hit-1k-text", "hit-1k-gzip"]:
        accel = results[name]["median"]["accel"]
        for key in ["rps", "p50_ms", "p99_ms"]:
            assert _number(accel[key]), (name, key, accel)
        assert accel["rps"] > 0
        for measured in results[name]["rounds"]["accel"]:
            assert measured["requests"] > 0 and measured["non_2xx"] == 0, (name, measured)

    # gzip hits of a compressible object against identity hits of it, in the same run
    assert _number(results["hit-1k-gzip"]["ratio_rps_gzip_identity"]["accel"])

    # 100 concurrent first requests for one URL, spread over two workers: one origin fetch, and every client
    # gets the 200.
    for measured in results["collapse"]["rounds"]["accel"]:
        assert measured["origin_fetches"] == 1, measured
        assert measured["ok"] == measured["clients"] == 100, measured
    collapse = results["collapse"]["median"]["accel"]
    assert _number(collapse["seconds"]) and collapse["seconds"] > 0
    assert collapse["max_origin_fetches"] == 1

    reload = results["reload"]["median"]["accel"]
    assert _number(reload["rps"]) and reload["rps"] > 0
    assert reload["total_failed"] == 0  # a SIGHUP under load (a new generation of workers) breaks nothing

    burst = results["burst-2k"]["median"]["accel"]
    assert _number(burst["seconds"]) and burst["min_ok"] == results["burst-2k"]["rounds"]["accel"][0]["clients"]

    idle = results["idle-10k"]
    assert idle["answered_again"] == idle["connections"] > 0
    assert _number(idle["kib_per_connection"]), idle

    stream = results["stream-rss"]
    for key in ["rss_before_mib", "peak_rss_mib", "seconds"]:
        assert _number(stream[key]) and stream[key] > 0, (key, stream)

    startup = results["startup-100k"]
    assert startup["entries_populated"] == startup["entries_requested"] > 0
    assert startup["populate_failed"] == 0
    for key in ["listen_s", "first_response_s", "empty_first_response_s"]:
        assert _number(startup[key]) and startup[key] > 0, (key, startup)
    # after a restart, the first request for a stored response is a hit (README: "Restarts")
    assert (startup["first_response_status"], startup["first_response_hit"]) == (200, True)

    observed = results["observed-1k"]  # hit-1k with the JSON log and /metrics scraped, and without
    assert observed["plain_rps"] > 0 and observed["observed_rps"] > 0
    assert _number(observed["observed_over_plain"])
    switch = results["metrics-1k"]  # hit-1k counting requests and not ([status] metrics = true / false)
    assert switch["on_rps"] > 0 and switch["off_rps"] > 0
    assert _number(switch["on_over_off"])

    if "nginx" in results["hit-1k"]["median"]:
        assert _number(results["hit-1k"]["ratio_rps_accel_nginx"])
    else:
        assert any("nginx is missing" in note for note in report["notes"])
