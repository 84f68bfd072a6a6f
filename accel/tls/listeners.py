"""SSL offload: HTTPS listeners presenting several certificates chosen by SNI, renewed without a restart.

A listener is a plain stream endpoint (``tcp:443``) whose connections accel wraps in TLS itself
(``TLSMemoryBIOFactory`` with the ``SNICreator`` below), because Twisted's ``ssl:`` endpoints carry one
certificate. Each listener has a ``CertificateStore``: one OpenSSL context per certificate, looked up by the
client's server name (exact name, then ``*.`` wildcard, then the default certificate). TLS 1.2 is the
minimum, ciphers are Mozilla's "intermediate" choice, ALPN offers ``http/1.1``.

Renewal: SIGHUP reloads every store (``accel.tap.Operations``); besides, a handshake checks the modification times of the certificate
files (and of the certificate directory) at most once every ``check_interval`` seconds, and reloads when they
changed. An unknown server name never causes a look at the disk. A reload that fails (a half-written file,
a key that does not match) is logged and the previous certificates stay in service.

Reading and checking PEM files is ``accel.tls.certificates``; the redirect listener and HSTS are
``accel.tls.https``; TLS towards origins is ``accel.tls.origin``.
"""

from __future__ import annotations

import os

from OpenSSL import SSL
from twisted.application import service
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ISSLTransport
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import alsoProvides, implementer

from accel.tls.certificates import LoadedCertificate, listener_entries, load_certificate, validity_problem
from accel.config import ConfigError, TLSListener, TLSSettings
from accel.http.accesslog import peer_label

log = Logger()

# Mozilla's "intermediate" configuration (TLS 1.2 suites; TLS 1.3 suites are OpenSSL's defaults).
MOZILLA_INTERMEDIATE = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)
_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 48\r\nConnection: close\r\n\r\n"
    b"This port speaks HTTPS: use an https:// URL.\r\n\r\n"
)


# ---------------------------------------------------------------------------------------------------------
# Contexts


def server_context(cert: LoadedCertificate, settings: TLSSettings, source: str, on_servername=None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION if settings.min_version == "1.3" else SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3 | SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    try:
        ctx.set_cipher_list((settings.ciphers or MOZILLA_INTERMEDIATE).encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise ConfigError(source, "tls.ciphers", "an OpenSSL cipher string", settings.ciphers) from None
    try:
        ctx.use_certificate(cert.leaf)
        for extra in cert.chain:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(cert.key)
        ctx.check_privatekey()
    except SSL.Error as e:
        raise ConfigError(source, f"{cert.files.where}.cert", "a certificate and key OpenSSL accepts", f"{cert.files.cert} ({e})") from None
    ctx.set_session_id(b"accel")
    ctx.set_alpn_select_callback(_select_alpn)
    if on_servername is not None:
        ctx.set_tlsext_servername_callback(on_servername)
    return ctx


def _select_alpn(connection, offered: list[bytes]):
    return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def check_certificates(settings: TLSSettings, source: str) -> None:
    """Load every listener's certificates and keys once (the configuration check); raises ConfigError."""
    for listener in settings.listeners:
        for files in listener_entries(listener, source):
            server_context(load_certificate(files, source), settings, source)


# ---------------------------------------------------------------------------------------------------------
# One listener's certificates, by server name


class CertificateStore:
    """The contexts of one listener by server name; reloaded on SIGHUP and when the files change."""

    def __init__(self, listener: TLSListener, settings: TLSSettings, source: str, clock):
        self.listener, self.settings, self.source, self.clock = listener, settings, source, clock
        self.loads = 0  # successful loads, the first included
        self.checks = 0  # looks at the files' modification times
        self.by_name: dict[str, SSL.Context] = {}
        self.default: SSL.Context | None = None
        self.state: dict = {}
        self._load()  # a ConfigError here stops the start
        self.checked = clock.seconds()

    def context_for(self, server_name: str | None) -> SSL.Context:
        if server_name:
            name = server_name.lower().rstrip(".")
            ctx = self.by_name.get(name)
            if ctx is None and "." in name:
                ctx = self.by_name.get("*." + name.split(".", 1)[1])
            if ctx is not None:
                return ctx
        return self.default

    def maybe_check(self) -> None:
        """Reload when the files changed; looks at the disk at most once every ``check_interval`` seconds."""
        now = self.clock.seconds()
        if now - self.checked < self.settings.check_interval:
            return
        self.checked = now
        self.checks += 1
        if _file_state(self.state) != self.state:
            self.reload("certificate files changed")

    def reload(self, reason: str) -> bool:
        try:
            self._load()
        except ConfigError as e:
            log.error("{where}: certificates not reloaded ({reason}): {error}; the previous ones stay in service",
                      where=self.listener.where, reason=reason, error=str(e))
            return False
        log.info("{where}: certificates reloaded ({reason})", where=self.listener.where, reason=reason)
        return True

    def _load(self) -> None:
        entries = listener_entries(self.listener, self.source)
        paths = [p for e in entries for p in (e.cert, e.key, e.chain) if p]
        if self.listener.directory:
            paths += [self.listener.directory] + sorted({os.path.dirname(e.cert) for e in entries})
        self.state = _file_state(dict.fromkeys(paths))  # before reading: a change while reading is seen next time
        loaded = [load_certificate(e, self.source) for e in entries]
        by_name: dict[str, SSL.Context] = {}
        default = None
        for cert in loaded:
            ctx = server_context(cert, self.settings, self.source, self._on_servername)
            if default is None or cert.files.default:
                default = ctx
            for name in cert.names:
                by_name.setdefault(name, ctx)
            problem = validity_problem(cert.leaf)
            if problem:
                log.warn("{where}: the certificate in {path} ({names}) is {problem}",
                         where=self.listener.where, path=cert.files.cert, names=", ".join(cert.names), problem=problem)
        self.by_name, self.default = by_name, default
        self.loads += 1

    def _on_servername(self, connection: SSL.Connection) -> None:
        try:
            name = connection.get_servername()
            ctx = self.context_for(name.decode("ascii", "replace") if name else None)
            if ctx is not connection.get_context():
                connection.set_context(ctx)
        except Exception:
            log.failure("choosing a certificate by server name")


def _file_state(previous: dict) -> dict:
    state = {}
    for path in previous:
        try:
            st = os.stat(path)
            state[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            state[path] = None
    return state


# ---------------------------------------------------------------------------------------------------------
# Connections


@implementer(IOpenSSLServerConnectionCreator)
class SNICreator:
    """Starts every connection with the default certificate; the SNI callback switches to the right one."""

    def __init__(self, store: CertificateStore):
        self.store = store

    def serverConnectionForTLS(self, protocol) -> SSL.Connection:
        self.store.maybe_check()
        return SSL.Connection(self.store.default, None)


class TLSServerProtocol(BufferingTLSTransport):
    """TLS on an accepted connection: marks itself secure for the request, turns plain HTTP away."""

    _first = True
    _refused = False

    def makeConnection(self, transport) -> None:
        super().makeConnection(transport)
        # The base class copies the TCP transport's interfaces; requests ask ISSLTransport for isSecure(),
        # which makes X-Forwarded-Proto https and ProxyPassReverse use https:// URLs.
        alsoProvides(self, ISSLTransport)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._first:
            self._first = False
            if data[:1] != b"\x16":  # not a TLS handshake record
                self._refused = True
                log.info("refused a non-TLS connection from {peer} on an HTTPS port", peer=peer_label(self.transport.getPeer()))
                if data[:1].isalpha():  # most likely an HTTP request line
                    self.transport.write(_PLAIN_HTTP_ANSWER)
                self.transport.loseConnection()
                return
        super().dataReceived(data)


class TLSServerFactory(TLSMemoryBIOFactory):
    protocol = TLSServerProtocol

    def __init__(self, store: CertificateStore, wrapped_factory, clock=None):
        super().__init__(SNICreator(store), False, wrapped_factory, clock)
        self.store = store


def tls_services(config, site, reactor, serve) -> list[service.IService]:
    """The HTTPS listeners of ``[tls]`` (each ``factory.store`` is its certificates, which SIGHUP reloads: see
    ``accel.tap``), then the HTTP→HTTPS redirect listeners, in the order of the configuration.

    ``serve(endpoint string, factory)`` makes the service that accepts connections for a factory (listening
    itself, or on a socket inherited from the supervisor of worker processes)."""
    from accel.tls.https import redirect_site

    services: list[service.IService] = []
    for listener in config.tls.listeners:
        store = CertificateStore(listener, config.tls, config.source, reactor)
        services.append(serve(listener.endpoint, TLSServerFactory(store, site)))
    if config.tls.redirect_listen:
        redirects = redirect_site(config, reactor)
        services += [serve(d, redirects) for d in config.tls.redirect_listen]
    return services
