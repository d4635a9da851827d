"""The report files, JSON and printable HTML, verify offline (only the public key) when
unaltered and fail after any one-byte change, or with another installation's key."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import orjson
import pytest

from tests.backup.install import Installation, cli, make_installation


@pytest.fixture
def inst(tmp_path: Path) -> Installation:
    return make_installation(tmp_path / "data", tmp_path)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.mark.parametrize("fmt", ["json", "html"])
def test_verify_passes_unaltered_and_fails_after_one_byte(
        fmt: str, inst: Installation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / f"report.{fmt}"
    cli("compliance", "report", "--format", fmt, "--output", str(out))
    assert out.stat().st_mode & 0o077 == 0
    _, err = cli("compliance", "verify", str(out))
    assert "is unaltered" in err

    # offline: only the report and the public key, no data directory
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    pub = auditor / "checkpoint_key.pub.pem"
    shutil.copy(inst.data_dir / "audit" / "checkpoint_key.pub.pem", pub)
    shutil.copy(out, auditor / out.name)
    monkeypatch.setenv("AUTOGLM_DATA_DIR", str(tmp_path / "nowhere"))
    copy = auditor / out.name
    cli("compliance", "verify", str(copy), "--public-key", str(pub))

    data = copy.read_bytes()
    status_at = data.find(b"not_met" if fmt == "json" else b"not met")
    for at in sorted({0, status_at, len(data) // 2, len(data) - 3, len(data) - 1}):
        copy.write_bytes(_flip(data, at))
        _, err = cli("compliance", "verify", str(copy), "--public-key", str(pub), code=1)
        assert "does not verify" in err, at
    copy.write_bytes(data + b"\n")  # even a byte appended
    cli("compliance", "verify", str(copy), "--public-key", str(pub), code=1)
    copy.write_bytes(data)
    cli("compliance", "verify", str(copy), "--public-key", str(pub))

    # another installation's key does not vouch for it
    monkeypatch.setenv("AUTOGLM_DATA_DIR", str(tmp_path / "other"))
    cli("tenants", "create", "other")
    _, err = cli("compliance", "verify", str(copy), code=1)
    assert "not by the trusted key" in err


def test_a_re_signed_edit_fails_and_json_content_edits_are_caught(
        inst: Installation, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    cli("compliance", "report", "-o", str(out))
    doc = json.loads(out.read_bytes())
    assert doc["signature"]["alg"] == "Ed25519"
    # turn a "not met" into "met", keeping the file well formed
    target = next(c for c in doc["controls"] if c["status"] == "not_met")
    target["status"] = "met"
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n")
    _, err = cli("compliance", "verify", str(out), code=1)
    assert "altered" in err


def test_html_is_self_contained_and_printable(inst: Installation, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    cli("compliance", "report", "--format", "html", "-o", str(out))
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.IGNORECASE)
    assert "@import" not in text and "url(" not in text
    assert "@media print" in text and "@page" in text
    assert "supports a compliance assessment; it does not replace one" in text
    assert 'class="status not_met">not met<' in text and 'class="status met">met<' in text
    assert "8.1.4.3 a)" in text and "Art. 32(1)(c)" in text and "Art. 51(3)" in text
    assert text.rstrip("\n").splitlines()[-1].startswith("<!-- autoglm-signature ")
