"""``twistd accel``: command-line options and the service tree (the only place that touches the reactor)."""

from __future__ import annotations

import sys

from twisted.application import service
from twisted.internet import endpoints
from twisted.python import usage

from accel.app import check_files
from accel.config import Config, ConfigError, load_config, with_overrides
from accel.http.listening import listening_service


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen ENDPOINT ...] [--origin URL] [--cache-dir DIR] [--access-log PATH]"
    longdesc = "Run accel, the caching HTTP accelerator. Command-line options override the configuration file."
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["origin", None, None, "Origin URL for a single route '/' (config-less start)."],
        ["cache-dir", None, None, "Directory of the cache (LMDB)."],
        ["access-log", None, None, "Access log file; '-' for standard output."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listening endpoint (repeatable), e.g. tcp:8080:interface=127.0.0.1 or ssl:8443:... [default: tcp:8080]"""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        try:
            self.config = build_config(self)
        except ConfigError as e:
            # One line naming the file, key and expectation; twistd would print its whole usage first.
            print(f"accel: {e}", file=sys.stderr)
            raise SystemExit(1) from None


def build_config(options) -> Config:
    """The effective configuration: the file (if any) with command-line overrides, fully checked."""
    config = load_config(options["config"]) if options["config"] else Config()
    config = with_overrides(
        config,
        listen=tuple(options["listen"]),
        origin=options["origin"],
        cache_dir=options["cache-dir"],
        access_log=options["access-log"],
    )
    if not config.routes:
        raise ConfigError(config.source, "route", "at least one [[route]] (or --origin URL)")
    for description in config.listen + tuple(l.endpoint for l in config.tls.listeners) + config.tls.redirect_listen:
        check_endpoint(config.source, description)
    check_files(config)
    return config


def check_endpoint(source: str, description: str) -> None:
    """Parse an endpoint description without listening, so a typo is a config error and not a traceback."""
    from twisted.internet import reactor

    try:
        endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(source, "listen", "a Twisted server endpoint such as tcp:8080", f"{description} ({e})") from None


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    from accel.app import build_site

    config = options.config
    site = build_site(config, reactor)
    top = service.MultiService()
    for description in config.listen:
        listening_service(description, site, reactor).setServiceParent(top)
    if config.tls.listeners or config.tls.redirect_listen:
        from accel.tls.listeners import tls_services

        for tls_service in tls_services(config, site, reactor):
            tls_service.setServiceParent(top)
    top.addService(_Closer(site))
    return top


class _Closer(service.Service):
    """Closes origin connection pools on shutdown."""

    def __init__(self, site):
        self.site = site

    def stopService(self):
        return self.site.close()

