"""The TOML configuration, its error messages, the command-line overrides and `accel check-config`."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner

from accel.cli.main import main
from accel.config import ConfigError, load_config, parse_config, with_overrides
from tests.support import TWISTD

GOOD = """
[server]
listen = ["tcp:8080:interface=127.0.0.1"]
server_header = false
trusted_proxies = ["10.0.0.0/8"]

[cache]
dir = "/var/cache/accel"
drop_params = ["utm_*", "gclid"]

[[route]]
prefix = "/api/users/"
origin = "http://127.0.0.1:9001/"
preserve_host = true
connect_timeout = 2
response_timeout = 10
idle_timeout = 30
max_connections = 8

[route.cache]
default_ttl = 60

[[route]]
prefix = "/static/"
exclude = true

[[route]]
prefix = "/"
origin = "https://app.internal/"
"""


def test_a_full_file():
    config = parse_config(GOOD, "accel.toml")
    assert config.listen == ("tcp:8080:interface=127.0.0.1",)
    assert config.server_header is None
    users, static, root = config.routes
    assert (users.prefix, users.origin.host, users.origin.port, users.preserve_host) == ("/api/users/", "127.0.0.1", 9001, True)
    assert (users.connect_timeout, users.response_timeout, users.idle_timeout, users.max_connections) == (2, 10, 30, 8)
    assert users.cache.default_ttl == 60
    assert static.exclude and static.origin is None
    assert (root.origin.scheme, root.origin.port) == ("https", 443)
    assert config.cache.dir == "/var/cache/accel"
    assert config.cache.drop_params == ("utm_*", "gclid")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[route]]\nprefix = 'api'\norigin = 'http://o/'\n", "route[0].prefix: expected a path prefix starting with '/'"),
        ("[[route]]\nprefix = '/'\norigin = 'ftp://o/'\n", "line 3: route[0].origin: expected an http://, https://, ws:// or wss:// URL"),
        ("[[route]]\nprefix = '/'\n", "route[0].origin: expected an http://, https://, ws:// or wss:// URL, or \"balancer://NAME/\" (or exclude = true)"),
        ("[[route]]\nprefix = '/'\norigin = 'http://o/'\nconnect_timeout = 'soon'\n", "line 4: route[0].connect_timeout: expected a number of seconds"),
        ("[[route]]\nprefix = '/'\norigin = 'http://o/'\nmax_connections = 0\n", "route[0].max_connections: expected a whole number greater than 0"),
        ("[server]\nlisten = 8080\n", "line 2: server.listen: expected a string or a list of strings, got 8080"),
        ("[server]\nlisen = ['tcp:1']\n", "server.lisen: expected a known key"),
        ("[server]\nlisten = [1, = 2]\n", "line 2: syntax: expected valid TOML"),
        ("[server]\ntrusted_proxies = ['nonsense']\n", "server.trusted_proxies: expected IP addresses or networks"),
        ("[error_documents]\n503 = '/nonexistent/file.html'\n", "error_documents.503: expected a readable file"),
        ("[error_documents]\n200 = '/etc/hostname'\n", "error_documents.200: expected an HTTP error status code"),
        ("[cache]\nheuristic_fraction = 2\n", "cache.heuristic_fraction: expected a fraction between 0 and 1"),
        ("[cache]\nstore_set_cookie = 'yes'\n", 'cache.store_set_cookie: expected true, false or "keep"'),
        ("[cache]\nstore_set_cookie = 1\n", 'cache.store_set_cookie: expected true, false or "keep"'),
        ("[cache]\nclient_revalidate = 'always'\n", 'cache.client_revalidate: expected "conditional", "honour" or "ignore"'),
        ("[cache]\nmin_revalidate_interval = -1\n", "cache.min_revalidate_interval: expected a number of seconds, 0 or more"),
        ("[cache]\nrange_fetch_max = -1\n", "cache.range_fetch_max: expected a number of bytes, 0 or more"),
        ("[[route]]\nprefix = '/'\norigin = 'http://o/'\n[route.cache]\nhead_as_get = 1\n", "head_as_get: expected true or false"),
        ("[[route]]\nprefix = '/'\norigin = 'http://o/'\n[[route]]\nprefix = '/'\norigin = 'http://p/'\n", "line 5: route[1].prefix: expected each prefix at most once per host"),
        ("[server]\nworkers = 0\n", 'line 2: server.workers: expected a whole number of worker processes greater than 0, or "auto"'),
        ("[server]\nworkers = 'many'\n", "server.workers: expected a whole number of worker processes"),
        ("[server]\nworkers = true\n", "server.workers: expected a whole number of worker processes"),
        ("[cluster]\npeers = ['ftp://10.0.0.2']\n", "line 2: cluster.peers: expected a list of peer URLs"),
        ("[cluster]\npeers = ['http://10.0.0.2:8080/accel']\n", "cluster.peers: expected a list of peer URLs"),
        ("[cluster]\npeers = ['http://a:1', 'http://a:1']\n", "cluster.peers: expected each peer once"),
        ("[cluster]\ndrain_delay = -1\n", "cluster.drain_delay: expected a number of seconds, 0 or more"),
        ("[cluster]\npurge_timeout = 0\n", "cluster.purge_timeout: expected a number of seconds greater than 0"),
        ("[cluster]\npeer = []\n", "cluster.peer: expected a known key"),
        ("[status]\nhealth_path = 'health'\n", "status.health_path: expected a path starting (and not ending) with '/'"),
        ("[status]\nallow = ['everyone']\n", "status.allow: expected IP addresses or networks"),
    ],
)
def test_mistakes_name_file_key_and_expectation(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "accel.toml")
    assert str(caught.value).startswith("accel.toml")
    assert message in str(caught.value)


def test_store_set_cookie_takes_true_false_or_keep():
    for text, value in [("true", True), ("false", False), ("'keep'", "keep")]:
        assert parse_config(f"[cache]\nstore_set_cookie = {text}\n", "accel.toml").cache.store_set_cookie == value


def test_workers_default_to_one_and_auto_means_one_per_cpu():
    assert parse_config("", "accel.toml").workers == 1
    assert parse_config("[server]\nworkers = 'auto'\n", "accel.toml").workers == (os.cpu_count() or 1)
    assert parse_config("[server]\nworkers = 3\nshutdown_timeout = 2.5\n", "accel.toml").shutdown_timeout == 2.5
    assert parse_config("", "accel.toml").shutdown_timeout == 10
    assert with_overrides(parse_config("", "accel.toml"), workers="4").workers == 4
    with pytest.raises(ConfigError, match="--workers: expected a whole number of worker processes"):
        with_overrides(parse_config("", "accel.toml"), workers="-1")


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="expected a readable TOML file"):
        load_config(str(tmp_path / "missing.toml"))


def test_command_line_overrides_the_file():
    config = parse_config(GOOD, "accel.toml")
    changed = with_overrides(config, listen=("tcp:9999",), origin="http://other:81/", cache_dir="/tmp/c", access_log="-")
    assert changed.listen == ("tcp:9999",)
    assert [r.prefix for r in changed.routes] == ["/api/users/", "/static/", "/"]
    assert changed.routes[-1].origin.url == "http://other:81/"
    assert changed.cache.dir == "/tmp/c"
    assert changed.access_log == "-"


def test_check_config_prints_the_workers(tmp_path):
    path = tmp_path / "accel.toml"
    path.write_text(GOOD.replace("server_header = false", "server_header = false\nworkers = 3"))
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert "workers: 3 processes, started and supervised by the first one" in result.output, result.output


def test_check_config_prints_listeners_and_routes(tmp_path):
    path = tmp_path / "accel.toml"
    path.write_text(GOOD)
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "tcp:8080:interface=127.0.0.1" in result.output
    lines = result.output.splitlines()
    assert lines.index(next(l for l in lines if "/api/users/" in l)) < lines.index(next(l for l in lines if l.strip().startswith("/ ")))
    assert "(excluded: 404)" in result.output


def test_check_config_error_is_one_line_without_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[[route]]\nprefix = '/'\norigin = 'gopher://x'\n")
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    assert result.output.strip() == f"accel: {path}, line 3: route[0].origin: expected an http://, https://, ws:// or wss:// URL with a host, got 'gopher://x'"


def test_twistd_reports_a_bad_config_in_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nlisten = ['tcp:0:interface=127.0.0.1']\n[[route]]\nprefix = '/'\norigin = 'http://o/'\nidle_timeout = -5\n")
    run = subprocess.run(
        TWISTD + ["--nodaemon", "accel", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    assert f"{path}, line 6: route[0].idle_timeout: expected a number of seconds greater than 0, got -5" in run.stderr


def test_twistd_rejects_a_bad_endpoint(tmp_path):
    run = subprocess.run(
        TWISTD + ["--nodaemon", "accel", "--listen", "nonsense:1", "--origin", "http://127.0.0.1:1/"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 1
    assert "listen: expected a Twisted server endpoint" in run.stderr
    assert "Traceback" not in run.stderr


EXAMPLES = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.toml"))


def materialise_etc_files(text: str, root: Path) -> str:
    """The example with every /etc/... and /var/... path moved under ``root``, where real files now stand:
    certificates (``<name>.pem`` with ``<name>.key``) issued by an intermediate (``chain.pem``) of a test CA
    (``*ca.pem``), directories for the paths without a file name extension, and the folders of the others."""
    ca = trustme.CA()
    intermediate = ca.create_child_ca()
    paths = sorted(set(re.findall(r'"(/(?:etc|var)/[^"]+)"', text)))
    for path in paths:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.suffix:
            target.mkdir(parents=True, exist_ok=True)
        elif target.name == "chain.pem":
            intermediate.cert_pem.write_to_path(str(target))
        elif target.name.endswith("ca.pem"):
            ca.cert_pem.write_to_path(str(target))
        elif target.suffix == ".pem":
            leaf = intermediate.issue_cert(target.stem if "." in target.stem else f"{target.stem}.test")
            leaf.cert_chain_pems[0].write_to_path(str(target))
            leaf.private_key_pem.write_to_path(str(target.with_suffix(".key")))
    return re.sub(r'"/(etc|var)/', lambda m: f'"{root}/{m.group(1)}/', text)


def test_example_configs_are_valid(tmp_path):
    assert EXAMPLES, "examples/ ships configs"
    for example in EXAMPLES:
        copy = tmp_path / example.name
        copy.write_text(materialise_etc_files(example.read_text(), tmp_path))
        result = CliRunner().invoke(main, ["check-config", str(copy)])
        assert result.exit_code == 0, (example, result.output)
        assert f"{copy}: OK" in result.output
        if example.name == "balancer.toml":
            assert "/                        -> balancer://mycluster/" in result.output
            assert ("balancer mycluster: byrequests, retry 60 s, sticky cookie ROUTEID (set by accel), "
                    "health GET /health every 5 s") in result.output
            assert "  route 3        http://192.168.1.102:8080  (weight 1, standby)" in result.output
            assert "balancer manager: /balancer-manager  (for 127.0.0.0/8, ::1/128)" in result.output
        if example.name == "tls-offload.toml":  # the names of the certificates each HTTPS listener presents
            assert "https     tcp:443  (certificates for www.example.com, api.example.com)" in result.output


def test_the_tls_example_without_its_files_names_the_first_missing_one(tmp_path):
    example = next(e for e in EXAMPLES if e.name == "tls-offload.toml")
    copy = tmp_path / example.name
    copy.write_text(example.read_text().replace('"/etc/', f'"{tmp_path}/etc/'))  # nothing exists there
    result = CliRunner().invoke(main, ["check-config", str(copy)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"accel: {copy}, line 14: tls.directory: expected a readable directory of certificates, "
        f"got '{tmp_path}/etc/letsencrypt/live (No such file or directory)'"
    ]


def test_a_file_without_server_listen_listens_on_the_documented_default():
    config = parse_config('[[route]]\nprefix = "/"\norigin = "http://127.0.0.1:9000/"\n', "accel.toml")
    assert config.listen == ("tcp:8080",)


def test_trusted_proxies_and_purge_allow_may_name_unix_socket_peers():
    text = '[server]\ntrusted_proxies = ["unix", "10.0.0.0/8"]\n[purge]\nallow = ["unix"]\n'
    config = parse_config(text, "accel.toml")
    assert (config.trusted_unix_peers, [str(n) for n in config.trusted_proxies]) == (True, ["10.0.0.0/8"])
    assert (config.purge.allow_unix_peers, config.purge.allow) == (True, ())
    default = parse_config("", "accel.toml")
    assert (default.trusted_unix_peers, default.purge.allow_unix_peers) == (False, False)
    assert [str(n) for n in default.purge.allow] == ["127.0.0.0/8", "::1/128"]
    with pytest.raises(ConfigError, match='server.trusted_proxies: expected IP addresses or networks such as 10.0.0.0/8, or "unix"'):
        parse_config('[server]\ntrusted_proxies = ["unix:/run/x.sock"]\n', "accel.toml")


def test_route_hosts_are_read_lower_case_and_checked():
    config = parse_config('[[route]]\nprefix = "/"\norigin = "http://o/"\nhosts = ["API.example.com", "*.example.org"]\n', "a.toml")
    assert config.routes[0].hosts == ("api.example.com", "*.example.org")
    with pytest.raises(ConfigError, match=r"line 4: route\[0\].hosts: expected host names .* got 'api.example.com:80'"):
        parse_config('[[route]]\nprefix = "/"\norigin = "http://o/"\nhosts = ["api.example.com:80"]\n', "a.toml")


def test_the_same_prefix_may_serve_different_hosts():
    text = '[[route]]\nprefix = "/"\norigin = "http://o/"\n[[route]]\nprefix = "/"\norigin = "http://p/"\nhosts = ["a.test"]\n'
    assert len(parse_config(text, "a.toml").routes) == 2


def test_a_mistake_in_the_second_route_names_that_routes_line():
    text = ('[server]\nlisten = ["tcp:8080"]\n\n[[route]]\nprefix = "/a/"\norigin = "http://o/"\nconnect_timeout = 1\n\n'
            '[[route]]\nprefix = "/"\norigin = "http://o/"\nconnect_timeout = "soon"\n')
    with pytest.raises(ConfigError, match=r"a.toml, line 12: route\[1\].connect_timeout: expected"):
        parse_config(text, "a.toml")


def test_a_mistake_in_tls_listen_names_its_own_line():
    text = '[server]\nlisten = ["tcp:8080"]\n\n[tls]\nlisten = ["ssl:443"]\ncertificates = [{ cert = "c.pem" }]\n'
    with pytest.raises(ConfigError, match=r"a.toml, line 5: tls.listen: expected a plain endpoint"):
        parse_config(text, "a.toml")


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    path = tmp_path / "etc" / "accel.toml"
    path.parent.mkdir()
    path.write_text('[server]\naccess_log = "logs/access.log"\n[cache]\ndir = "../cache"\n'
                    '[[route]]\nprefix = "/"\norigin = "http://o/"\n')
    config = load_config(str(path))
    assert config.cache.dir == str(tmp_path / "cache")
    assert config.access_log == str(tmp_path / "etc" / "logs" / "access.log")


def test_relative_paths_on_the_command_line_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = with_overrides(parse_config(GOOD, "/etc/accel/accel.toml"), cache_dir="c", access_log="a.log")
    assert (config.cache.dir, config.access_log) == (str(tmp_path / "c"), str(tmp_path / "a.log"))
    assert with_overrides(config, access_log="-").access_log == "-"


def test_endpoint_files_in_a_file_are_relative_to_the_file():
    text = ('[server]\nlisten = ["ssl:8443:interface=127.0.0.1:privateKey=tls/k.pem:certKey=/abs/c.pem", "unix:run/accel.sock"]\n'
            '[[route]]\nprefix = "/"\norigin = "http://o/"\n')
    config = parse_config(text, "/etc/accel/accel.toml")
    assert config.listen == ("ssl:8443:interface=127.0.0.1:privateKey=/etc/accel/tls/k.pem:certKey=/abs/c.pem",
                             "unix:/etc/accel/run/accel.sock")


def test_a_key_of_an_inline_table_is_reported_at_the_line_of_that_table():
    text = ('[tls]\nlisten = ["tcp:443"]\ncertificates = [\n  { cert = "a.pem", key = "a.key" },\n'
            '  { cert = "b.pem", key = "b.key" },\n]\n[[route]]\nprefix = "/"\norigin = "http://o/"\n'
            'cache = { default_ttl = -1 }\n')
    with pytest.raises(ConfigError, match=r"line 10: route\[0\]\.cache\.default_ttl"):
        parse_config(text, "a.toml")


def test_a_problem_found_after_parsing_gets_the_line_of_its_key(tmp_path):
    from accel.config import located

    path = tmp_path / "accel.toml"
    path.write_text('[server]\nlisten = ["tcp:8080"]\n\n[cache]\nmap_size = 1\ndir = "cache"\n')
    assert located(ConfigError(str(path), "cache.dir", "a directory")).line == 6
    assert located(ConfigError("command line", "--cache-dir", "a directory")).line is None


def test_shield_defaults_and_values():
    cache = parse_config("", "accel.toml").cache
    assert (cache.grace, cache.client_revalidate, cache.min_revalidate_interval, cache.range_fetch_max) == (
        300, "conditional", 1, None)
    text = "[cache]\nclient_revalidate = 'ignore'\nmin_revalidate_interval = 5\nrange_fetch_max = 1024\n"
    cache = parse_config(text, "accel.toml").cache
    assert (cache.client_revalidate, cache.min_revalidate_interval, cache.range_fetch_max) == ("ignore", 5, 1024)


def test_cluster_and_status_defaults_and_values():
    default = parse_config("", "accel.toml")
    assert (default.cluster.peers, default.cluster.drain_delay, default.status.health_path) == ((), 5.0, "/accel-health")
    config = parse_config("[cluster]\npeers = ['http://10.0.0.2:8080']\ndrain_delay = 0\n"
                          "[status]\nhealth_path = '/health'\nallow = ['10.0.0.10']\n", "accel.toml")
    assert [p.key for p in config.cluster.peers] == ["http://10.0.0.2:8080"]
    assert (config.cluster.drain_delay, config.status.health_path) == (0.0, "/health")
    assert [str(n) for n in config.status.allow] == ["10.0.0.10/32"]
