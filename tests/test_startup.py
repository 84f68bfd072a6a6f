"""Start-up and `accel check-config` agree: every problem is one line naming what and where, exit status 1,
no traceback; nothing is bound or created by the check."""

from __future__ import annotations

import socket
import subprocess

import pytest
from click.testing import CliRunner

from accel.cli.main import main
from tests.support import TWISTD

ROUTE = '[[route]]\nprefix = "/"\norigin = "http://127.0.0.1:9/"\n'


def write(tmp_path, text: str, name: str = "accel.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def twistd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(TWISTD + ["--nodaemon", "--pidfile=", "accel", *args], capture_output=True, text=True, timeout=60)


def assert_one_line(run: subprocess.CompletedProcess, *expected: str) -> None:
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr + run.stdout
    lines = [line for line in run.stderr.splitlines() if line]
    assert len(lines) == 1, run.stderr
    for part in expected:
        assert part in lines[0], lines[0]


def unusable_setups(tmp_path):
    """(config text, expected parts of the message): one per kind of start-up failure."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    not_lmdb = tmp_path / "not-lmdb"
    not_lmdb.mkdir()
    (not_lmdb / "data.mdb").write_bytes(b"this is not an LMDB file" * 100)
    return {
        "cache dir is a file": (f'[cache]\ndir = "{a_file}"\n', ["line 2: cache.dir: expected a directory", str(a_file)]),
        "data.mdb is not LMDB": ('[cache]\ndir = "not-lmdb"\n', ["line 2: cache.dir: expected an accel cache or an empty directory",
                                                               "data.mdb is not an LMDB database", "move"]),
        "access log dir missing": ('[server]\naccess_log = "nowhere/access.log"\n', ["line 2: server.access_log: expected a file in an existing directory",
                                                                                    str(tmp_path / "nowhere")]),
        "ssl listener cert missing": ('[server]\nlisten = ["ssl:0:interface=127.0.0.1:privateKey=missing.key:certKey=missing.pem"]\n',
                                      ["line 2: server.listen: expected a Twisted server endpoint", "missing.pem", "No such file"]),
    }


CASES = ["cache dir is a file", "data.mdb is not LMDB", "access log dir missing", "ssl listener cert missing"]


@pytest.mark.parametrize("case", CASES)
def test_twistd_refuses_to_start_with_one_line(tmp_path, case):
    text, expected = unusable_setups(tmp_path)[case]
    path = write(tmp_path, text + ROUTE)
    run = twistd("--config", path)
    assert_one_line(run, f"accel: {path}, ", *expected)


@pytest.mark.parametrize("case", CASES)
def test_check_config_finds_what_start_up_would_refuse(tmp_path, case):
    text, expected = unusable_setups(tmp_path)[case]
    path = write(tmp_path, text + ROUTE)
    result = CliRunner().invoke(main, ["check-config", path])
    assert result.exit_code == 1
    assert result.output.startswith(f"accel: {path}, ")
    for part in expected:
        assert part in result.output


def test_check_config_reports_every_problem_one_line_each(tmp_path):
    setups = unusable_setups(tmp_path)
    text = '[server]\naccess_log = "nowhere/access.log"\n' + setups["cache dir is a file"][0] + ROUTE
    result = CliRunner().invoke(main, ["check-config", write(tmp_path, text)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 2 and all(line.startswith("accel: ") for line in lines), lines


def test_twistd_names_a_port_that_is_taken(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        path = write(tmp_path, f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n' + ROUTE)
        run = twistd("--config", path)
    finally:
        taken.close()
    assert_one_line(run, f"accel: {path}, line 2: server.listen: expected an endpoint accel can listen on",
                    f"tcp:{port}:interface=127.0.0.1", "in use")


def test_the_command_line_is_named_the_same_everywhere(tmp_path):
    (tmp_path / "a-file").write_text("")
    run = twistd("--listen", "tcp:0:interface=127.0.0.1", "--origin", "http://127.0.0.1:9/", "--cache-dir", str(tmp_path / "a-file"))
    assert_one_line(run, "accel: command line: --cache-dir: expected a directory")
    bad_origin = twistd("--origin", "gopher://x")
    assert_one_line(bad_origin, "accel: command line: --origin: expected an http://, https://, ws:// or wss:// URL")


def test_a_missing_file_and_a_directory_exit_alike(tmp_path):
    for command in (["check-config"], ["cache", "ls", "--config"]):
        missing = CliRunner().invoke(main, command[:1] + [str(tmp_path / "missing.toml")] if command == ["check-config"]
                                     else command + [str(tmp_path / "missing.toml")])
        directory = CliRunner().invoke(main, command[:1] + [str(tmp_path)] if command == ["check-config"]
                                       else command + [str(tmp_path)])
        assert missing.exit_code == directory.exit_code != 0, (missing.output, directory.output)
        assert missing.output.startswith("accel: ") and directory.output.startswith("accel: ")
        assert "expected a readable TOML file" in directory.output
    for path in (str(tmp_path), str(tmp_path / "missing.toml")):
        assert_one_line(twistd("--config", path), f"accel: {path}: (file): expected a readable TOML file")


def test_check_config_prints_the_whole_effective_configuration(tmp_path):
    text = """
[server]
listen = ["tcp:8080:interface=127.0.0.1"]
access_log = "access.log"

[cache]
dir = "cache"

[[route]]
prefix = "/"
origin = "http://127.0.0.1:9001/"
hosts = ["api.example.com", "*.example.org"]

[route.cache]
default_ttl = 60
disable = ["/private/"]

[[route]]
prefix = "/"
origin = "http://127.0.0.1:9002/"
"""
    path = write(tmp_path, text)
    result = CliRunner().invoke(main, ["check-config", path])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "http      tcp:8080:interface=127.0.0.1" in out
    assert "host api.example.com, *.example.org:" in out and "every host:" in out
    assert out.index("host api.example.com") < out.index("http://127.0.0.1:9001/") < out.index("every host:")
    assert "default_ttl 60 s, never cached: /private/" in out
    assert f"cache: {tmp_path / 'cache'}" in out
    assert f"access log: {tmp_path / 'access.log'}" in out
    assert not (tmp_path / "cache").exists()  # checked, not created


def test_accel_cache_reads_the_cache_of_a_tls_config_without_its_certificates(tmp_path):
    from accel.cache.store import DiskStore

    DiskStore(str(tmp_path / "cache")).close()
    text = ('[server]\nlisten = ["tcp:8080"]\n[cache]\ndir = "cache"\n'
            '[tls]\nlisten = ["tcp:8443"]\ncertificates = [{ cert = "root-only/site.pem", key = "root-only/site.key" }]\n' + ROUTE)
    path = write(tmp_path, text)
    assert CliRunner().invoke(main, ["check-config", path]).exit_code == 1  # the certificates are not there
    result = CliRunner().invoke(main, ["cache", "--config", path, "stats"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "cache") in result.output


def test_twistd_refuses_a_damaged_cache_file_with_advice(tmp_path):
    from tests.test_cache_cli import damaged_cache

    directory = str(tmp_path / "cache")
    damaged_cache(directory)
    path = write(tmp_path, '[cache]\ndir = "cache"\n' + ROUTE)
    assert_one_line(twistd("--config", path), f"accel: {path}, line 2: cache.dir: expected an accel cache or an empty directory",
                    "the cache is damaged", f"move {directory} away")


def test_a_cache_that_fails_to_open_after_the_checks_is_one_line(tmp_path, monkeypatch, capfd):
    import lmdb

    from accel.tap import Options, makeService

    def fails(config, reactor):
        raise lmdb.ReadersFullError("mdb_txn_begin: MDB_READERS_FULL: Environment maxreaders limit reached")

    monkeypatch.setattr("accel.app.build_site", fails)
    options = Options()
    options.parseOptions(["--origin", "http://127.0.0.1:9/", "--cache-dir", str(tmp_path / "cache")])
    with pytest.raises(SystemExit) as caught:
        makeService(options)
    assert caught.value.code == 1
    err = capfd.readouterr().err
    assert err.splitlines() == [f"accel: command line: --cache-dir: expected a cache accel can open, got "
                                f"'{tmp_path / 'cache'} (mdb_txn_begin: MDB_READERS_FULL: Environment maxreaders limit reached)'"]


def test_a_worker_leaves_the_checks_to_its_supervisor_and_reports_what_broke_since_in_one_line(tmp_path, monkeypatch, capfd):
    """A worker only reads the configuration (its supervisor checked the files just before starting it); a
    certificate broken since is found as the worker builds its site: one line, exit status 1."""
    from accel.tap import Options, makeService
    from accel.workers.worker import ENVIRONMENT, encode
    from accel.workers.listeners import Inherited

    (tmp_path / "www.pem").write_text("not a certificate\n")
    path = write(tmp_path, '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
                           '[tls]\nlisten = ["tcp:0:interface=127.0.0.2"]\ncertificates = [{cert = "www.pem"}]\n' + ROUTE)
    options = Options()
    with pytest.raises(SystemExit):  # the first process checks, and refuses
        options.parseOptions(["--config", path])
    assert "tls.certificates[0].cert" in capfd.readouterr().err
    inherited = [Inherited(1000 + i, socket.AF_INET, d, 50)  # never adopted: the start stops before
                 for i, d in enumerate(["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"])]
    monkeypatch.setenv(ENVIRONMENT, encode(inherited))
    options = Options()
    options.parseOptions(["--config", path])  # a worker: no checks
    with pytest.raises(SystemExit) as caught:
        makeService(options)
    assert caught.value.code == 1
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"accel: {path}, line 5: tls.certificates[0].cert: expected "), lines
