"""Assembles accel from a Config: origin clients, the request handler chain and the Site."""

from __future__ import annotations

from accel.config import Config
from accel.errors import ErrorPages
from accel.origin import OriginClients
from accel.proxy import Forwarder, ReverseProxy
from accel.server import AccelSite


def build_site(config: Config, reactor) -> AccelSite:
    errors = ErrorPages(config.error_documents)
    clients = OriginClients(reactor)
    handler = Forwarder(config, clients, errors, reactor)
    site = AccelSite(
        ReverseProxy(config, handler, errors),
        limits=config.limits,
        server_header=config.server_header,
        access_log=config.access_log,
        reactor=reactor,
    )
    site.close = clients.close
    return site
