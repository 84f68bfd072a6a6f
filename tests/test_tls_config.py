"""The [tls] table and the route tls_* keys: schema, file checks at start, one-line errors."""

from __future__ import annotations

import datetime
import os

import pytest
import trustme
from click.testing import CliRunner
from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher

from accel.cli.main import main
from accel.app import check_files
from accel.config import ConfigError, TLSListener, TLSSettings, parse_config
from accel.tap import Options
from accel.tls.listeners import CertificateStore
from accel.tls.https import endpoint_port, redirect_port
from tests.tls_support import write_cert

ROUTE = '\n[[route]]\nprefix = "/"\norigin = "http://127.0.0.1:9000/"\n'


@pytest.fixture
def certs(tmp_path):
    ca = trustme.CA()
    leaves = {"www": ca.issue_cert("www.example.test"), "api": ca.issue_cert("api.example.test")}
    files = {name: write_cert(str(tmp_path), name, leaf) for name, leaf in leaves.items()}
    return ca, files


def config_at(tmp_path, text: str):
    path = tmp_path / "accel.toml"
    path.write_text(text)
    config = parse_config(text, str(path))
    check_files(config)
    return config


def test_the_tls_schema(tmp_path, certs):
    os.mkdir(tmp_path / "more")
    config = config_at(
        tmp_path,
        """
[tls]
listen = ["tcp:443"]
certificates = [{cert = "www.pem", key = "www.key"}, {cert = "api.pem", key = "api.key", default = true}]
min_version = "1.3"
check_interval = 300

[[tls.listener]]
endpoint = "tcp:8443:interface=127.0.0.1"

[[tls.listener]]
endpoint = "tcp6:9443"
certificates = [{cert = "api.pem", key = "api.key"}]

[tls.redirect]
listen = ["tcp:80"]

[tls.hsts]
max_age = 63072000
include_subdomains = true
"""
        + ROUTE,
    )
    tls = config.tls
    assert [l.endpoint for l in tls.listeners] == ["tcp:443", "tcp:8443:interface=127.0.0.1", "tcp6:9443"]
    assert tls.listeners[0].certificates == tls.listeners[1].certificates  # inherited from [tls]
    assert [c.cert for c in tls.listeners[2].certificates] == [str(tmp_path / "api.pem")]
    assert tls.listeners[0].certificates[1].default and tls.listeners[0].certificates[1].key == str(tmp_path / "api.key")
    assert (tls.min_version, tls.check_interval, tls.redirect_listen) == ("1.3", 300, ("tcp:80",))
    assert (tls.hsts_max_age, tls.hsts_include_subdomains, tls.hsts_preload) == (63072000, True, False)
    assert redirect_port(tls) == 443


def test_no_tls_table_means_no_tls():
    config = parse_config(ROUTE, "accel.toml")
    assert config.tls == TLSSettings()


@pytest.mark.parametrize(
    "tls, key, expected",
    [
        ('listen = ["ssl:443"]\ncertificates = [{cert = "www.pem", key = "www.key"}]', "tls.listen", "accel adds TLS itself"),
        ('listen = ["tcp:443"]', "tls.certificates", "at least one certificate"),
        ('[[tls.listener]]\nendpoint = "tcp:443"', "tls.listener[0].certificates", "at least one certificate"),
        ('certificates = [{cert = "www.pem", key = "www.key"}]', "tls.listen", "an HTTPS listener"),
        ('listen = ["tcp:443"]\ncertificates = [{key = "www.key"}]', "tls.certificates[0].cert", "PEM certificate"),
        ('listen = ["tcp:443"]\ncertificates = [{cert = "www.pem", key = "www.key", color = "red"}]', "color", "a known key"),
        ('listen = ["tcp:443"]\ncertificates = [{cert = "www.pem", default = true}, {cert = "api.pem", default = true}]',
         "tls.certificates", "at most one"),
        ('listen = ["tcp:443"]\ncertificates = [{cert = "www.pem", key = "www.key"}]\nmin_version = "1.1"', "min_version", '"1.2" or "1.3"'),
        ('listen = ["tcp:443"]\ncertificates = [{cert = "www.pem", key = "www.key"}]\nciphers = "NOPE-NOTHING"', "tls.ciphers", "cipher string"),
        ('[tls.redirect]\nlisten = ["tcp:80"]\nport = 70000', "tls.redirect.port", "between 1 and 65535"),
        ('[tls.hsts]\nmax_age = -1', "tls.hsts.max_age", "0 or more"),
    ],
)
def test_tls_mistakes(tmp_path, certs, tls, key, expected):
    with pytest.raises(ConfigError) as caught:
        config_at(tmp_path, "[tls]\n" + tls + "\n" + ROUTE)
    assert key in str(caught.value) and expected in str(caught.value)


def test_a_mismatched_key_names_the_file(tmp_path, certs):
    with pytest.raises(ConfigError) as caught:
        config_at(tmp_path, '[tls]\nlisten = ["tcp:443"]\ncertificates = [{cert = "www.pem", key = "api.key"}]\n' + ROUTE)
    message = str(caught.value)
    assert "tls.certificates[0].key" in message
    assert str(tmp_path / "api.key") in message and str(tmp_path / "www.pem") in message


@pytest.mark.parametrize(
    "entry, named",
    [
        ('{cert = "missing.pem", key = "www.key"}', "missing.pem (No such file or directory)"),
        ('{cert = "www.pem", key = "missing.key"}', "missing.key (No such file or directory)"),
        ('{cert = "www.key", key = "www.key"}', "www.key"),  # no certificate in it
        ('{cert = "www.pem"}', "www.pem"),  # no key in the certificate file
        ('{cert = "www.pem", key = "www.pem"}', "www.pem"),
    ],
)
def test_missing_and_unusable_files_are_named(tmp_path, certs, entry, named):
    with pytest.raises(ConfigError) as caught:
        config_at(tmp_path, f'[tls]\nlisten = ["tcp:443"]\ncertificates = [{entry}]\n' + ROUTE)
    assert named in str(caught.value)


def test_twistd_prints_one_line_and_exits_1(tmp_path, certs, capfd):
    path = tmp_path / "accel.toml"
    path.write_text('[tls]\nlisten = ["tcp:443"]\ncertificates = [{cert = "www.pem", key = "api.key"}]\n' + ROUTE)
    with pytest.raises(SystemExit) as caught:
        Options().parseOptions(["--config", str(path)])
    assert caught.value.code == 1
    err = capfd.readouterr().err  # the process's real standard error
    assert err.count("\n") == 1 and err.startswith(f"accel: {path}") and "api.key" in err


def test_check_config_checks_the_certificates(tmp_path, certs):
    path = tmp_path / "accel.toml"
    path.write_text('[tls]\nlisten = ["tcp:443"]\ncertificates = [{cert = "www.pem", key = "api.key"}]\n' + ROUTE)
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code != 0 and "api.key" in result.output


def test_a_directory_of_certificates(tmp_path):
    ca = trustme.CA()
    d = tmp_path / "certs"
    os.mkdir(d)
    write_cert(str(d), "one", ca.issue_cert("one.test"))  # one.pem + one.key
    write_cert(str(d), "two", ca.issue_cert("two.test"), key_in_cert=True)  # key inside two.pem
    os.mkdir(d / "three.test")  # certbot's live/<name>/ layout
    three = ca.issue_cert("three.test")
    (d / "three.test" / "fullchain.pem").write_bytes(b"".join(p.bytes() for p in three.cert_chain_pems))
    three.private_key_pem.write_to_path(str(d / "three.test" / "privkey.pem"))
    ca.issue_cert("x.test").private_key_pem.write_to_path(str(d / "stray-key.pem"))  # only a key: skipped
    (d / "README.txt").write_text("not a certificate")
    config = config_at(tmp_path, '[tls]\nlisten = ["tcp:443"]\ndirectory = "certs"\n' + ROUTE)
    store = CertificateStore(config.tls.listeners[0], config.tls, "test", task.Clock())
    assert sorted(store.by_name) == ["one.test", "three.test", "two.test"]
    assert store.default is store.by_name["one.test"]  # the first file by name

    ca.issue_cert("four.test").cert_chain_pems[0].write_to_path(str(d / "four.pem"))  # a certificate without its key
    with pytest.raises(ConfigError) as caught:
        config_at(tmp_path, '[tls]\nlisten = ["tcp:443"]\ndirectory = "certs"\n' + ROUTE)
    assert "tls.directory" in str(caught.value) and "four.pem" in str(caught.value)


def test_expired_and_not_yet_valid_certificates_are_logged_at_start(tmp_path):
    ca = trustme.CA()
    now = datetime.datetime.now(datetime.timezone.utc)
    old = write_cert(str(tmp_path), "old", ca.issue_cert("old.test", not_before=now - datetime.timedelta(days=60),
                                                          not_after=now - datetime.timedelta(days=1)))
    early = write_cert(str(tmp_path), "early", ca.issue_cert("early.test", not_before=now + datetime.timedelta(days=1),
                                                              not_after=now + datetime.timedelta(days=90)))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        CertificateStore(TLSListener("tcp:443", (old, early)), TLSSettings(), "test", task.Clock())
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [formatEvent(e) for e in events if e.get("log_level").name == "warn"]
    assert any("old.pem" in w and "expired on" in w for w in warnings), warnings
    assert any("early.pem" in w and "not valid before" in w for w in warnings), warnings


def test_route_tls_keys(tmp_path, certs):
    ca, files = certs
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    base = '[[route]]\nprefix = "/"\norigin = "https://app.internal/"\n'
    config = config_at(tmp_path, base + 'tls_ca = "ca.pem"\ntls_client_cert = "www.pem"\ntls_client_key = "www.key"\n')
    route = config.routes[0]
    assert (route.tls_verify, route.tls_ca, route.tls_client_cert) == (True, str(tmp_path / "ca.pem"), str(tmp_path / "www.pem"))
    assert config_at(tmp_path, base + "tls_verify = false\n").routes[0].tls_verify is False

    mistakes = {
        'tls_client_key = "api.key"\ntls_client_cert = "www.pem"\n': "api.key",
        'tls_ca = "nowhere.pem"\n': "nowhere.pem",
        'tls_ca = "www.key"\n': "route[0].tls_ca",
        'tls_client_key = "www.key"\n': "tls_client_cert as well",
        'tls_verify = false\ntls_ca = "ca.pem"\n': "no CA bundle",
    }
    for extra, named in mistakes.items():
        with pytest.raises(ConfigError) as caught:
            config_at(tmp_path, base + extra)
        assert named in str(caught.value), extra
    with pytest.raises(ConfigError) as caught:
        config_at(tmp_path, '[[route]]\nprefix = "/"\norigin = "http://app.internal/"\ntls_verify = false\n')
    assert "https:// origin" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        config_at(tmp_path, base + '[[route]]\nprefix = "/x/"\norigin = "https://app.internal/x/"\ntls_verify = false\n')
    assert "the same tls_* keys on every route to https://app.internal" in str(caught.value)


def test_the_redirect_port_comes_from_the_first_tls_listener():
    assert endpoint_port("tcp:8443:interface=127.0.0.1") == 8443
    assert endpoint_port("tcp:interface=::1:port=9443") == 9443
    assert endpoint_port("tcp6:port=443") == 443
    assert endpoint_port("unix:/run/accel.sock") is None
    settings = TLSSettings(listeners=(TLSListener("unix:/x"), TLSListener("tcp:8443")))
    assert redirect_port(settings) == 8443
