"""The node's health for the balancer in front: ``[status] health_path`` (default ``/accel-health``).

``GET`` (or ``HEAD``) answers 200 ``serving`` while the node serves and 503 ``draining`` once a SIGTERM has
started its stop (``NodeHealth.draining``): HAProxy's ``option httpchk`` then takes the node out while it
still answers every request it gets (``[cluster] drain_delay``). That delay is worth waiting only when
something watches the answer: a stop waits it only once the health check has been asked for
(``NodeHealth.asked``); a node that no balancer polls stops at once. It is answered before routing, only to
``[status] allow`` and to the ``[cluster] peers`` given by IP address; anyone else gets 403.
"""

from __future__ import annotations

from accel.config import Origin, StatusSettings
from accel.http.addresses import parse_ip, peer_in, peer_ip
from accel.http.errors import ErrorPages, send_own


class NodeHealth:
    """Whether this process still wants new requests; kept across reloads (one per process)."""

    def __init__(self):
        self.draining = False
        self.asked = False  # the health check was asked for (a balancer polls it): a stop waits drain_delay
        self.on_asked = None  # called when it is first asked for (a worker tells its supervisor)

    def asked_for(self) -> None:
        if not self.asked:
            self.asked = True
            if self.on_asked is not None:
                self.on_asked()


class HealthEndpoint:
    """The health path of one configuration generation; its answer follows ``NodeHealth``."""

    def __init__(self, settings: StatusSettings, peers: tuple[Origin, ...], state: NodeHealth, errors: ErrorPages):
        self.path = settings.health_path.encode("latin-1")  # compared with a request's normalised path
        self.settings = settings
        self.state = state
        self.errors = errors
        self.peers = tuple(ip for ip in (parse_ip(p.host) for p in peers) if ip is not None)

    def allowed(self, peer) -> bool:
        if peer_in(peer, self.settings.allow, self.settings.allow_unix_peers):
            return True
        ip = peer_ip(peer)
        return ip is not None and ip in self.peers

    def handle(self, request) -> None:
        """Answer a request for ``path`` (``ReverseProxy`` hands it over before routing)."""
        if not self.allowed(request.getClientAddress()):
            self.errors.send(request, 403, "The health check is not answered to this address.")
            return
        if request.method not in (b"GET", b"HEAD"):
            self.errors.send(request, 405, "GET the health check.", {b"allow": b"GET, HEAD"})
            return
        self.state.asked_for()
        code, body = (503, b"draining\n") if self.state.draining else (200, b"serving\n")
        send_own(request, code, b"text/plain", body)
