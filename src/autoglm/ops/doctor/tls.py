"""The TLS certificate and key: readable, matching each other, loadable the way the server
loads them, and how many days the certificate has left."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from autoglm.ops.doctor.result import Result, failed, passed, skipped, warned
from autoglm.ops.doctor.runner import Context
from autoglm.settings import is_loopback

WARN_DAYS = 14


def _spki(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def certificate(ctx: Context, now: dt.datetime | None = None) -> list[Result]:
    s = ctx.settings
    if s.ssl_certfile is None or s.ssl_keyfile is None:
        if is_loopback(s.host):
            return [skipped("tls.certificate", f"TLS off; {s.host} is loopback only")]
        return [warned("tls.certificate", f"TLS off while listening on {s.host}: keys and "
                       "prompts cross the network in clear", "set ssl_certfile and "
                       "ssl_keyfile, or put a TLS-terminating proxy in front and bind "
                       "127.0.0.1")]
    cert_path, key_path = s.ssl_certfile.expanduser(), s.ssl_keyfile.expanduser()
    data: dict[str, object] = {"certfile": str(cert_path), "keyfile": str(key_path)}
    try:
        certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        return [failed("tls.certificate", f"cannot read the certificate {cert_path}: {exc}",
                       "point ssl_certfile at a readable PEM certificate (chain)", **data)]
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except TypeError:
        return [failed("tls.certificate", f"{key_path} is encrypted; the server cannot "
                       "load it without a password", f"write it unencrypted, readable by "
                       f"the service only: openssl pkey -in {key_path} -out KEY.pem && chmod "
                       "600 KEY.pem", **data)]
    except (OSError, ValueError) as exc:
        return [failed("tls.certificate", f"cannot read the private key {key_path}: {exc}",
                       "point ssl_keyfile at a readable PEM private key", **data)]
    leaf = certs[0]
    not_after = leaf.not_valid_after_utc
    not_before = leaf.not_valid_before_utc
    now = now or dt.datetime.now(dt.UTC)
    days = (not_after - now).total_seconds() / 86_400
    subject = leaf.subject.rfc4514_string() or "(no subject)"
    data.update(subject=subject, not_after=not_after.isoformat(), days_left=round(days, 1),
                chain_length=len(certs))
    renew = f"renew the certificate and replace {cert_path} (then restart the server)"
    out: list[Result] = []
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        out.append(failed("tls.certificate", f"the key {key_path} does not match the "
                          f"certificate {cert_path} ({subject})", "use the private key the "
                          "certificate was issued for (compare `openssl x509 -pubkey` with "
                          "`openssl pkey -pubout`)", **data))
    else:
        try:  # what the server does with the pair
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                str(cert_path), str(key_path))
        except (ssl.SSLError, OSError) as exc:
            out.append(failed("tls.certificate", f"the TLS library refuses the pair: {exc}",
                              "re-export certificate and key as PEM", **data))
    if not out:
        if now < not_before:
            out.append(failed("tls.certificate", f"{subject} is not valid before "
                              f"{not_before:%Y-%m-%d %H:%M} UTC", "check the clock, or use a "
                              "certificate valid now", **data))
        elif days <= 0:
            out.append(failed("tls.certificate", f"{subject} expired on "
                              f"{not_after:%Y-%m-%d} ({-days:.0f} days ago)", renew, **data))
        elif days < WARN_DAYS:
            out.append(warned("tls.certificate", f"{subject} expires in {days:.0f} days "
                              f"({not_after:%Y-%m-%d})", renew, **data))
        else:
            out.append(passed("tls.certificate", f"{subject}: key matches; expires in "
                              f"{days:.0f} days ({not_after:%Y-%m-%d})", **data))
    mode = stat.S_IMODE(Path(key_path).stat().st_mode)
    if mode & 0o077:
        out.append(warned("tls.key_permissions", f"{key_path} is readable by group or "
                          f"others (mode {mode:o})", f"chmod 600 {key_path}", mode=f"{mode:o}"))
    return out
