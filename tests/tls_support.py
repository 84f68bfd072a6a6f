"""TLS parts for tests: certificates made at test time (trustme), raw handshakes, an HTTPS client and origin."""

from __future__ import annotations

import os

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from accel.config import CertificateFiles
from tests.support import temporary_directory


def write_cert(directory: str, stem: str, leaf, *, key_in_cert: bool = False) -> CertificateFiles:
    """Write a trustme leaf as ``stem.pem`` (+ ``stem.key``); the CertificateFiles naming them."""
    cert_path = os.path.join(directory, stem + ".pem")
    key_path = os.path.join(directory, stem + ".key")
    if key_in_cert:
        leaf.private_key_and_cert_chain_pem.write_to_path(cert_path)
        return CertificateFiles(cert_path, None, where=f"test.{stem}")
    with open(cert_path, "wb") as f:
        f.write(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(key_path)
    return CertificateFiles(cert_path, key_path, where=f"test.{stem}")


def serial_of(leaf) -> int:
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number


@implementer(IOpenSSLClientConnectionCreator)
class RawClientTLS:
    """A client that sends ``server_name`` by SNI and checks nothing (tests look at what was served)."""

    def __init__(self, server_name: str | None = None, max_version: int | None = None):
        self.server_name = server_name
        self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.context.set_alpn_protos([b"h2", b"http/1.1"])
        if max_version is not None:
            self.context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")  # let the client offer old versions at all
            self.context.set_min_proto_version(SSL.TLS1_VERSION)
            self.context.set_max_proto_version(max_version)

    def clientConnectionForTLS(self, protocol):
        connection = SSL.Connection(self.context, None)
        if self.server_name:
            connection.set_tlsext_host_name(self.server_name.encode("ascii"))
        return connection


@implementer(IHandshakeListener)
class Handshake(Protocol):
    """Fires ``done`` with (certificate, ALPN protocol, TLS version) once the handshake completes."""

    def __init__(self):
        self.done = defer.Deferred()

    def handshakeCompleted(self):
        connection = self.transport.getHandle()
        cert = connection.get_peer_certificate(as_cryptography=True)
        self.done.callback((cert, connection.get_alpn_proto_negotiated(), connection.get_protocol_version_name()))
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.errback(reason)


@defer.inlineCallbacks
def handshake(port: int, server_name: str | None = None, max_version: int | None = None):
    """(certificate, alpn, version) from one TLS handshake with 127.0.0.1:port."""
    endpoint = wrapClientTLS(RawClientTLS(server_name, max_version), TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    protocol = Handshake()
    yield connectProtocol(endpoint, protocol)
    result = yield protocol.done
    return result


@implementer(IPolicyForHTTPS)
class TrustPolicy:
    """Verifies servers against one test CA."""

    def __init__(self, ca: trustme.CA):
        self.root = ssl.Certificate.loadPEM(ca.cert_pem.bytes())

    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.root)


def https_client(testcase, ca: trustme.CA) -> Agent:
    pool = HTTPConnectionPool(reactor, persistent=True)
    testcase.addCleanup(pool.closeCachedConnections)
    return Agent(reactor, contextFactory=TrustPolicy(ca), pool=pool)


@implementer(IOpenSSLServerConnectionCreator)
class _ServerTLS:
    def __init__(self, context):
        self.context = context

    def serverConnectionForTLS(self, protocol):
        return SSL.Connection(self.context, None)


def listen_https(testcase, site, leaf, *, client_ca: trustme.CA | None = None):
    """``site`` over TLS on 127.0.0.1 presenting ``leaf`` (and requiring a client certificate from ``client_ca``)."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()))
    context.use_privatekey(serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None))
    if client_ca is not None:
        path = os.path.join(temporary_directory(testcase), "client-ca.pem")
        client_ca.cert_pem.write_to_path(path)
        context.load_verify_locations(path)
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda conn, cert, err, depth, ok: bool(ok))
    port = reactor.listenTCP(0, TLSMemoryBIOFactory(_ServerTLS(context), False, site), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port


class LogCapture:
    """Collects formatted log events while a test runs."""

    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self, level: str | None = None) -> list[str]:
        return [
            formatEvent(e) for e in self.events if level is None or getattr(e.get("log_level"), "name", "") == level
        ]
