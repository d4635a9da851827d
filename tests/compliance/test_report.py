"""``autoglm compliance report``: controls judged from the real settings and state of an
installation made with the CLI; flipping a setting (or the state) flips the control."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import delete, update

from autoglm.settings import load_settings
from autoglm.store.db import Database, database_url
from autoglm.store.models import ApiKey, AuditRecord
from tests.backup.install import Installation, cli, make_installation


@pytest.fixture
def inst(tmp_path: Path) -> Installation:
    return make_installation(tmp_path / "data", tmp_path)


def report(**env: str) -> dict[str, dict]:
    """The JSON report's controls by id, with ``env`` set (AUTOGLM_* settings)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        out, err = cli("compliance", "report", "--format", "json")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert "supports an assessment; it does not replace one" in err
    doc = json.loads(out)
    assert doc["statement"].startswith("This report supports a compliance assessment; it "
                                       "does not replace one.")
    return {c["id"]: c for c in doc["controls"]}


def status(controls: dict[str, dict], cid: str) -> str:
    return controls[cid]["status"]


def _db() -> Database:
    return Database(database_url(load_settings()))


def test_met_and_unmet_controls_from_the_real_installation(inst: Installation) -> None:
    c = report()
    statuses = {x["status"] for x in c.values()}
    assert statuses >= {"met", "not_met", "manual"}
    assert status(c, "MLPS-8.1.4.1a-identity") == "met"
    assert "1 active key(s)" in c["MLPS-8.1.4.1a-identity"]["evidence"][1]
    assert status(c, "MLPS-8.1.4.3a") == "met"  # the CLI's admin acts are audited
    assert "intact" in c["MLPS-8.1.4.3a"]["evidence"][0]
    assert status(c, "MLPS-8.1.4.2d") == "met"
    assert "prn_platform_admin" in c["MLPS-8.1.4.2d"]["evidence"][0]
    assert status(c, "MLPS-8.1.4.2e") == "met"
    assert status(c, "GDPR-5.1c") == "met" and status(c, "GDPR-25") == "met"
    assert status(c, "PIPL-51.3") == "met"
    # no backup yet: not met, with the remedy
    assert status(c, "MLPS-8.1.4.9a") == "not_met"
    assert "autoglm backup" in c["MLPS-8.1.4.9a"]["remedy"]
    assert status(c, "MLPS-8.1.4.9c") == "not_met"  # SQLite: no hot standby
    assert status(c, "MLPS-8.1.4.6") == "not_met"  # models not required to be signed
    assert "tiny: 1 file(s)" in " ".join(c["MLPS-8.1.4.6"]["evidence"])
    assert status(c, "MLPS-8.1.4.1c") == "manual"  # no TLS, loopback: a proxy to attest
    assert all(x["remedy"] is None for x in c.values() if x["status"] == "met")
    assert all(x["remedy"] for x in c.values() if x["status"] in ("not_met", "manual"))


def test_flipping_settings_flips_controls(inst: Installation) -> None:
    c = report(AUTOGLM_OPS_PUBLIC="true", AUTOGLM_LOG_PROMPTS="true",
               AUTOGLM_PII_ACTIONS='{"default": "mask", "cn_id": "allow"}',
               AUTOGLM_PREFIX_CACHE_SCOPE="platform", AUTOGLM_MODEL_TRUST="any",
               AUTOGLM_AUDIT_STRICT="true", AUTOGLM_HOST="0.0.0.0")
    assert status(c, "MLPS-8.1.4.4b") == "not_met"
    assert status(c, "GDPR-5.1c") == "not_met" and status(c, "MLPS-8.1.4.8b") == "not_met"
    assert status(c, "PIPL-51.3") == "not_met"
    assert "cn_id: allow" in " ".join(c["PIPL-51.3"]["evidence"])
    assert status(c, "MLPS-8.1.4.11b") == "not_met"
    assert status(c, "MLPS-8.1.4.5") == "not_met"
    assert status(c, "GDPR-25") == "not_met"
    assert status(c, "MLPS-8.1.4.3d") == "met"  # audit_strict on
    assert status(c, "MLPS-8.1.4.1c") == "not_met"  # no TLS and reachable from the network
    assert status(c, "MLPS-8.1.4.4c") == "manual"
    # a tenant whose text is kept: an attestation, not a silent pass
    c = report(AUTOGLM_AUDIT_TEXT_TENANTS=json.dumps([inst.tenant]))
    assert status(c, "GDPR-5.1c") == "manual"
    assert inst.tenant in c["GDPR-5.1c"]["remedy"]


def test_a_backup_and_a_tampered_chain_flip_their_controls(inst: Installation,
                                                           tmp_path: Path) -> None:
    cli("backup", "-o", str(tmp_path / "b.tar.gz"))
    c = report()
    assert status(c, "MLPS-8.1.4.9a") == "met" and status(c, "GDPR-32.1c") == "met"
    assert status(c, "MLPS-8.1.4.3c-protect") == "met"
    db = _db()
    try:
        with db.engine.begin() as conn:
            conn.execute(delete(AuditRecord).where(AuditRecord.seq == 2))
    finally:
        db.close()
    c = report()
    for cid in ("MLPS-8.1.4.3c-protect", "MLPS-8.1.4.7b", "GDPR-5.2", "PIPL-9"):
        assert status(c, cid) == "not_met", cid
    assert "BROKEN at seq 2: deleted" in c["GDPR-5.2"]["evidence"][0]


def test_an_old_unrotated_key_is_named_until_rotated(inst: Installation) -> None:
    db = _db()
    try:
        with db.engine.begin() as conn:
            conn.execute(update(ApiKey).where(ApiKey.id == inst.key_id).values(
                created_at=datetime.now(UTC) - timedelta(days=120)))
    finally:
        db.close()
    c = report()
    assert status(c, "MLPS-8.1.4.1a-rotation") == "not_met"
    assert inst.key_id in c["MLPS-8.1.4.1a-rotation"]["remedy"]
    cli("keys", "rotate", inst.key_id, "--json")  # the old key now expires after the grace
    assert status(report(), "MLPS-8.1.4.1a-rotation") == "met"


def _cert(tmp: Path, days: int) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "autoglm.test")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / f"cert{days}.pem", tmp / f"key{days}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_settings_are_read_from_the_certificate(inst: Installation, tmp_path: Path) -> None:
    cert, key = _cert(tmp_path, 365)
    c = report(AUTOGLM_SSL_CERTFILE=str(cert), AUTOGLM_SSL_KEYFILE=str(key),
               AUTOGLM_HOST="0.0.0.0")
    assert status(c, "MLPS-8.1.4.1c") == "met"
    ev = " ".join(c["MLPS-8.1.4.1c"]["evidence"])
    assert "TLSv1.3" in ev and "CN=autoglm.test" in ev and "EC secp256r1" in ev
    cert, key = _cert(tmp_path, 10)  # about to expire
    c = report(AUTOGLM_SSL_CERTFILE=str(cert), AUTOGLM_SSL_KEYFILE=str(key))
    assert status(c, "MLPS-8.1.4.1c") == "not_met"
    assert "expires within 30 days" in " ".join(c["MLPS-8.1.4.1c"]["evidence"])
