"""Verified HTTPS to origins: one ``IPolicyForHTTPS`` per https:// origin, from its routes' ``tls_*`` keys.

By default an origin's certificate chain is checked against the system trust store and its host name (or IP
address) against the certificate with service-identity, like a browser: Twisted's ``optionsForClientTLS``.
``tls_ca`` replaces the system store with a PEM bundle; ``tls_client_cert`` / ``tls_client_key`` present a
client certificate; ``tls_verify = false`` turns verification off, which is logged loudly at start.
TLS 1.2 is the minimum and ALPN offers ``http/1.1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from accel.config import ConfigError, Origin, Route
from accel.tls.certificates import matches, pem_certificates, pem_private_key, validity_problem

log = Logger()

_PEM = serialization.Encoding.PEM


def _ca_bundle(route: Route, source: str, where: str):
    return pem_certificates(route.tls_ca, source, f"{where}.tls_ca")


def _client_certificate(route: Route, source: str, where: str):
    """(leaf, chain, key) of the route's client certificate; raises ConfigError naming the file."""
    certs = pem_certificates(route.tls_client_cert, source, f"{where}.tls_client_cert")
    key_path = route.tls_client_key or route.tls_client_cert
    key = pem_private_key(key_path, source, f"{where}.tls_client_key")
    if not matches(certs[0], key):
        raise ConfigError(source, f"{where}.tls_client_key",
                          f"the private key of the certificate in {route.tls_client_cert}", f"{key_path} (another key)")
    return certs[0], certs[1:], key


def check_route_files(route: Route, source: str, where: str) -> None:
    """Load the route's CA bundle and client certificate once (the configuration check)."""
    if route.tls_ca:
        _ca_bundle(route, source, where)
    if route.tls_client_cert:
        _client_certificate(route, source, where)


@implementer(IPolicyForHTTPS)
class OriginTLSPolicy:
    """How accel connects to one https:// origin; a connection creator per (host, port), made once."""

    def __init__(self, route: Route, source: str = "configuration"):
        where = f"route {route.prefix}"
        self.verify = route.tls_verify
        self.trust_root = None  # None: the system trust store (platformTrust)
        if route.tls_ca:
            cas = [ssl.Certificate.loadPEM(c.public_bytes(_PEM)) for c in _ca_bundle(route, source, where)]
            self.trust_root = ssl.trustRootFromCertificates(cas)
        self.client = None
        self.extra: dict = {}
        if route.tls_client_cert:
            leaf, chain, key = _client_certificate(route, source, where)
            key_pem = key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            self.client = ssl.PrivateCertificate.loadPEM(leaf.public_bytes(_PEM) + key_pem)
            if chain:
                self.extra["extraCertChain"] = [ssl.Certificate.loadPEM(c.public_bytes(_PEM)).original for c in chain]
            problem = validity_problem(leaf)
            if problem:
                log.warn("the client certificate {path} for {origin} is {problem}",
                         path=route.tls_client_cert, origin=route.origin.key, problem=problem)
        self._creators: dict[tuple[bytes, int], object] = {}
        self._unverified_context: SSL.Context | None = None

    def creatorForNetloc(self, hostname: bytes, port: int):
        creator = self._creators.get((hostname, port))
        if creator is None:
            name = hostname.decode("ascii")
            if self.verify:
                creator = ssl.optionsForClientTLS(
                    name,
                    trustRoot=self.trust_root,
                    clientCertificate=self.client,
                    acceptableProtocols=[b"http/1.1"],
                    extraCertificateOptions=dict(self.extra),
                )
            else:
                creator = _UnverifiedCreator(name, self._unverified())
            self._creators[(hostname, port)] = creator
        return creator

    def _unverified(self) -> SSL.Context:
        if self._unverified_context is None:
            options = dict(self.extra)
            if self.client is not None:
                options.update(privateKey=self.client.privateKey.original, certificate=self.client.original)
            self._unverified_context = ssl.CertificateOptions(
                verify=False, acceptableProtocols=[b"http/1.1"], **options
            ).getContext()
        return self._unverified_context


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """TLS without any check of the origin's certificate (tls_verify = false); still sends SNI."""

    def __init__(self, hostname: str, context: SSL.Context):
        self.hostname, self.context = hostname, context

    def clientConnectionForTLS(self, protocol) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        if not (isIPAddress(self.hostname) or isIPv6Address(self.hostname)):
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        return connection


def describe_tls_failure(origin: Origin, failure) -> str | None:
    """Why TLS with an origin failed, for the log line of the 502; None when TLS is not the reason."""
    reasons = list(getattr(failure.value, "reasons", None) or [failure])  # ResponseNeverReceived & co. wrap
    for reason in reasons:
        error = reason.value
        if isinstance(error, VerificationError):
            ids = [getattr(e, "mismatched_id", e) for e in error.errors]
            names = ", ".join(str(getattr(i, "hostname", None) or getattr(i, "ip", None) or i) for i in ids)
            return f"TLS: the certificate of {origin.key} is not valid for {names} (host name mismatch)"
        if isinstance(error, SSL.Error):
            details = [d[2] for d in (error.args[0] if error.args and isinstance(error.args[0], list) else []) if len(d) == 3]
            why = "; ".join(details) or str(error)
            if "certificate verify failed" in why:
                return f"TLS: the certificate of {origin.key} could not be verified ({why}; see tls_ca)"
            return f"TLS handshake with {origin.key} failed ({why})"
    return None


def origin_policies(routes: Iterable[Route], source: str = "configuration") -> Callable[[Origin], OriginTLSPolicy | None]:
    """The ``tls_policy_for`` hook of ``OriginClients``: the policy of each https:// origin of the routes."""
    policies: dict[str, OriginTLSPolicy] = {}
    for route in routes:
        origin = route.origin
        if origin is None or origin.scheme != "https" or origin.key in policies:
            continue
        policies[origin.key] = OriginTLSPolicy(route, source)
        if not route.tls_verify:
            log.warn(
                "*** INSECURE: TLS verification of origin {origin} is OFF (tls_verify = false on route {prefix}). "
                "Its certificate and host name are not checked: anyone between accel and {origin} can read and "
                "change this traffic. ***",
                origin=origin.key,
                prefix=route.prefix,
            )
    return lambda origin: policies.get(origin.key)
