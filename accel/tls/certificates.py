"""Certificates in PEM files: reading, checking that key and certificate belong together, names, validity.

Every mistake is a ``ConfigError`` naming the file, so a bad certificate stops the start with one line
(and a bad renewal is logged while the previous certificate stays in service).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from accel.config import CertificateFiles, ConfigError, TLSListener

_KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S)


@dataclass(frozen=True)
class LoadedCertificate:
    files: CertificateFiles
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: object  # a cryptography private key
    names: tuple[str, ...]  # lower-case DNS names (and IP addresses) it is valid for


def read_file(path: str, source: str, key: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(source, key, f"a readable {what}", f"{path} ({e.strerror})") from None


def pem_certificates(path: str, source: str, key: str) -> list[x509.Certificate]:
    data = read_file(path, source, key, "PEM certificate file")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(source, key, "a file with PEM certificates", path) from None


def pem_private_key(path: str, source: str, key: str):
    found = _KEY_BLOCK.search(read_file(path, source, key, "PEM private key file"))
    try:
        if found is None:
            raise ValueError
        return serialization.load_pem_private_key(found.group(0), password=None)
    except (ValueError, TypeError):
        raise ConfigError(source, key, "an unencrypted PEM private key", path) from None


def matches(cert: x509.Certificate, private_key) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == private_key.public_key().public_bytes(*spki)


def load_certificate(files: CertificateFiles, source: str) -> LoadedCertificate:
    """Read and check one certificate; a ConfigError names the file at fault."""
    certs = pem_certificates(files.cert, source, f"{files.where}.cert")
    chain = certs[1:] if files.chain is None else pem_certificates(files.chain, source, f"{files.where}.chain")
    key_path = files.key or files.cert
    private_key = pem_private_key(key_path, source, f"{files.where}.key")
    if not matches(certs[0], private_key):
        raise ConfigError(
            source, f"{files.where}.key", f"the private key of the certificate in {files.cert}", f"{key_path} (another key)"
        )
    return LoadedCertificate(files, certs[0], tuple(chain), private_key, certificate_names(certs[0]))


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName) + [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(n.lower().rstrip(".") for n in names)


def validity_problem(cert: x509.Certificate, now: datetime.datetime | None = None) -> str | None:
    """Why a certificate is not valid now (expired, not yet valid), or None."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


def listener_entries(listener: TLSListener, source: str) -> list[CertificateFiles]:
    """The listener's certificates: the listed ones, then the directory's in name order.

    In the directory, every ``*.pem`` / ``*.crt`` / ``*.cer`` holding a certificate is one, with its key in
    the same file or in ``<name>.key`` beside it (files holding only a key are skipped); a subdirectory with
    ``fullchain.pem`` and ``privkey.pem`` (certbot's live/ layout) is one too.
    """
    entries = list(listener.certificates)
    directory = listener.directory
    if directory is None:
        return entries
    where = f"{listener.where}.directory"
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise ConfigError(source, where, "a readable directory of certificates", f"{directory} ({e.strerror})") from None
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            full, key = os.path.join(path, "fullchain.pem"), os.path.join(path, "privkey.pem")
            if os.path.isfile(full) and os.path.isfile(key):
                entries.append(CertificateFiles(full, key, where=where))
            continue
        stem, ext = os.path.splitext(name)
        if ext.lower() not in (".pem", ".crt", ".cer"):
            continue
        if b"-----BEGIN CERTIFICATE-----" not in read_file(path, source, where, "certificate file"):
            continue
        key = os.path.join(directory, stem + ".key")
        entries.append(CertificateFiles(path, key if os.path.isfile(key) else None, where=where))
    if not entries:
        raise ConfigError(source, where, "a directory holding at least one certificate", directory)
    return entries
