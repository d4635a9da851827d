"""The federation's certificates: one CA, a server certificate, one certificate per site.

Sites and server authenticate each other with mutual TLS: the server accepts a connection
only from a client certificate signed by the federation's CA (gRPC checks it in the
handshake, before any message), and a site accepts only a server certificate signed by
the same CA for the address it dialled. A site's name is its certificate's common name;
that is the name the server's audit records give it.

``autoglm federated certs DIR --site a --site b`` writes ``ca.pem`` (and ``ca.key``, which
stays with whoever runs the federation), ``server.pem``/``server.key`` and
``site-NAME.pem``/``site-NAME.key``; keys are written 0600. An installation with its own
PKI passes its own files instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from autoglm.errors import ConfigError

SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
VALID_DAYS = 365


@dataclass(frozen=True)
class Credentials:
    """PEM bytes: the CA to trust, this party's certificate chain and private key."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, ca: Path, cert: Path, key: Path) -> Credentials:
        out = []
        for what, path in (("CA certificate", ca), ("certificate", cert), ("key", key)):
            if not path.is_file():
                raise ConfigError(f"{what} not found: {path}")
            out.append(path.read_bytes())
        return cls(*out)

    def common_name(self) -> str:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        try:
            cert = x509.load_pem_x509_certificate(self.cert)
        except ValueError as exc:
            raise ConfigError(f"not a PEM certificate: {exc}") from None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names:
            raise ConfigError("the certificate has no common name (the site's name)")
        return str(names[0].value)


def check_site_name(name: str) -> str:
    if not SITE_NAME.match(name):
        raise ConfigError(f"site name {name!r}: use 1-32 of a-z, 0-9, '-' and '_', "
                          "starting with a letter or digit")
    return name


def _write(path: Path, data: bytes, secret: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject_cn: str, key, issuer_cn: str, issuer_key, *,  # type: ignore[no-untyped-def]
          ca: bool, server_hosts: tuple[str, ...] = (), client: bool = False) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None),
                              critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    if server_hosts:
        alt: list[x509.GeneralName] = []
        for host in server_hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        builder = (builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False))
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def make_federation(out: Path, sites: list[str], *, server_hosts: tuple[str, ...] = (
        "localhost", "127.0.0.1"), name: str = "autoglm federation") -> dict[str, Path]:
    """A new CA, a server certificate for ``server_hosts`` and one per site, in ``out``.
    Refuses to overwrite an existing CA (sites would no longer be trusted)."""
    for site in sites:
        check_site_name(site)
    if len(set(sites)) != len(sites):
        raise ConfigError("site names must be different")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "ca.pem").exists():
        raise ConfigError(f"{out / 'ca.pem'} exists; use another directory (a new CA would "
                          "make every certificate it signed worthless)")
    ca_key = _key()
    ca_cn = f"{name} CA"
    written: dict[str, Path] = {}

    def put(stem: str, cert: bytes, key) -> None:  # type: ignore[no-untyped-def]
        _write(out / f"{stem}.pem", cert, secret=False)
        _write(out / f"{stem}.key", _pem_key(key), secret=True)
        written[stem] = out / f"{stem}.pem"

    put("ca", _cert(ca_cn, ca_key, ca_cn, ca_key, ca=True), ca_key)
    server_key = _key()
    put("server", _cert("server", server_key, ca_cn, ca_key, ca=False,
                        server_hosts=server_hosts), server_key)
    for site in sites:
        key = _key()
        put(f"site-{site}", _cert(site, key, ca_cn, ca_key, ca=False, client=True), key)
    return written
