"""The report as JSON or as one self-contained, printable HTML page (inline CSS, no
script, no external asset), each signed (``signing``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jinja2 import Environment

from autoglm.audit.keys import fingerprint
from autoglm.compliance import signing
from autoglm.compliance.report import LABELS

TEMPLATE = Path(__file__).with_name("report.html.j2")
FORMATS = ("json", "html")


def html(doc: dict[str, Any], key_fingerprint: str) -> bytes:
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    groups = [(fw, name, [c for c in doc["controls"] if c["framework"] == fw])
              for fw, name in doc["frameworks"].items()]
    return template.render(doc=doc, groups=groups, labels=LABELS,
                           key=key_fingerprint).encode("utf-8")


def signed(doc: dict[str, Any], fmt: str, key: Ed25519PrivateKey) -> bytes:
    if fmt == "json":
        return signing.sign_json(doc, key)
    return signing.sign_html(html(doc, fingerprint(key.public_key())), doc["generated_at"], key)
