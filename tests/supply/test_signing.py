import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from autoglm.api.app import create_app
from autoglm.cli.main import app as cli
from autoglm.engine.catalog import embedded_model_path
from autoglm.errors import ConfigError
from autoglm.supply import signing
from autoglm.supply.registry import Registry
from tests.conftest import make_settings

pytestmark = pytest.mark.model


def keypair(dir_: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = dir_ / f"{name}.pem", dir_ / f"{name}.pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


@pytest.fixture
def signed(tmp_path: Path) -> dict:
    model = tmp_path / "smol"
    model.mkdir()
    shutil.copyfile(embedded_model_path(), model / "smol.Q4_1.gguf")
    (model / "config.json").write_text("{}")
    reg = Registry(tmp_path / "d")
    reg.add(model, "smol")
    priv, pub = keypair(tmp_path, "ops")
    _, other = keypair(tmp_path, "other")
    entry = signing.sign(reg, "smol", priv)
    return {"reg": reg, "model": model, "pub": pub, "other": other, "entry": entry,
            "data": tmp_path / "d"}


def test_sign_and_verify_with_the_right_key_only(signed) -> None:
    reg, pub = signed["reg"], signed["pub"]
    assert signed["entry"]["signed_by"] == signing.fingerprint_public(pub.read_bytes())
    assert signing.verify(reg, "smol", pub) == signed["entry"]["signed_by"]
    with pytest.raises(ConfigError, match="does not verify"):
        signing.verify(reg, "smol", signed["other"])
    (signed["model"] / "config.json").write_text('{"changed": true}')
    with pytest.raises(ConfigError, match="does not verify"):
        signing.verify(reg, "smol", pub)


def test_signed_policy_at_load(signed) -> None:
    data, pub = signed["data"], signed["pub"]
    app = create_app(make_settings(data, model="smol", model_trust="signed", trusted_keys=[pub]))
    card = next(iter(app.state.engines.values())).model
    assert card.verification["signed_by"] == signed["entry"]["signed_by"]
    assert "signature (trusted_keys)" in card.verification["checks"]
    with pytest.raises(ConfigError, match="no signature that verifies with a key in trusted"):
        create_app(make_settings(data, model="smol", model_trust="signed",
                                 trusted_keys=[signed["other"]]))


def test_the_signature_is_checked_cryptographically_at_load(signed, tmp_path: Path) -> None:
    """The registry's record of the signer is not trusted: a signature made by another key
    and then recorded as the trusted one's, or a forged signature file, is refused."""
    import json

    data, pub, reg = signed["data"], signed["pub"], signed["reg"]
    sig = signing.signature_path(reg, "smol")
    good = sig.read_bytes()
    doc = json.loads(good)
    envelope = doc["dsseEnvelope"]
    envelope["signatures"][0]["sig"] = envelope["signatures"][0]["sig"][::-1]
    sig.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="trusted_keys"):
        create_app(make_settings(data, model="smol", model_trust="signed", trusted_keys=[pub]))
    other_priv, _ = keypair(tmp_path, "intruder")
    entry = dict(reg.get("smol"))
    signing.sign(reg, "smol", other_priv)  # signed by an untrusted key...
    reg.save({**reg.get("smol"), "signed_by": entry["signed_by"]})  # ...recorded as trusted
    with pytest.raises(ConfigError, match="trusted_keys"):
        create_app(make_settings(data, model="smol", model_trust="signed", trusted_keys=[pub]))
    sig.write_bytes(good)
    create_app(make_settings(data, model="smol", model_trust="signed", trusted_keys=[pub]))


def test_cli_verify_with_pubkey_exit_status(signed, monkeypatch) -> None:
    monkeypatch.setenv("AUTOGLM_DATA_DIR", str(signed["data"]))
    ok = CliRunner().invoke(cli, ["model", "verify", "smol", "--pubkey", str(signed["pub"])])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, ["model", "verify", "smol", "--pubkey", str(signed["other"])])
    assert bad.exit_code == 1 and "does not verify" in bad.output
