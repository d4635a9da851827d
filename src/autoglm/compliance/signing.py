"""Signing a report file so an auditor can check it offline, and checking it.

The key is the audit chain's checkpoint key (Ed25519, ``data_dir/secrets/
audit_signing_key.pem``, 0600); its public half, ``data_dir/audit/checkpoint_key.pub.pem``,
is all a verifier needs, and its fingerprint is the one every signed audit checkpoint
(and its syslog copy) carries. Messages are domain-separated
(``autoglm-compliance-report-v1``), so no report signature can pass for a checkpoint or
an anchor, nor the other way round.

What is signed is the file's exact bytes:
- JSON: the report is written canonically (sorted keys, two-space indent) with a
  ``signature`` member; the signature covers ``meta`` and the canonical report without
  it, and ``verify`` also requires the file to be byte for byte that canonical form, so
  any change, even of whitespace, fails;
- HTML: the document is followed by one last line ``<!-- autoglm-signature {...} -->``;
  the signature covers ``meta`` and every byte before that line, which must itself be in
  its canonical form.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from autoglm.audit.keys import fingerprint

DOMAIN = b"autoglm-compliance-report-v1"
_CANON = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2
_TRAILER = re.compile(rb"<!-- autoglm-signature (\{[^\n]*\}) -->\n\Z")


def _message(meta: dict[str, Any], body: bytes) -> bytes:
    return DOMAIN + b"\n" + orjson.dumps(meta, option=orjson.OPT_SORT_KEYS) + b"\n" + body


def _meta(key: Ed25519PrivateKey, kind: str, generated_at: str) -> dict[str, Any]:
    return {"alg": "Ed25519", "key": fingerprint(key.public_key()), "format": kind,
            "generated_at": generated_at}


def sign_json(doc: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    meta = _meta(key, "json", doc["generated_at"])
    body = orjson.dumps(doc, option=_CANON)
    sig = base64.b64encode(key.sign(_message(meta, body))).decode()
    return orjson.dumps({**doc, "signature": {**meta, "sig": sig}}, option=_CANON) + b"\n"


def sign_html(html: bytes, generated_at: str, key: Ed25519PrivateKey) -> bytes:
    meta = _meta(key, "html", generated_at)
    body = html if html.endswith(b"\n") else html + b"\n"
    sig = base64.b64encode(key.sign(_message(meta, body))).decode()
    return body + _trailer({**meta, "sig": sig})


def _trailer(signature: dict[str, Any]) -> bytes:
    return (b"<!-- autoglm-signature " + orjson.dumps(signature, option=orjson.OPT_SORT_KEYS)
            + b" -->\n")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    kind: str | None = None
    key: str | None = None
    generated_at: str | None = None
    summary: dict[str, int] | None = None


def verify(data: bytes, public: Ed25519PublicKey) -> Verdict:
    """Whether ``data`` is a report file exactly as signed by ``public``'s private half."""
    want = fingerprint(public)
    if data.lstrip().startswith(b"{"):
        return _verify_json(data, public, want)
    return _verify_html(data, public, want)


def _check(meta: dict[str, Any], sig: Any, body: bytes, public: Ed25519PublicKey,
           want: str) -> str | None:
    """Why the signature fails, or None."""
    if meta.get("alg") != "Ed25519" or not isinstance(sig, str):
        return "its signature block is malformed"
    if meta.get("key") != want:
        return (f"it is signed by key {meta.get('key')}, not by the trusted key {want}")
    try:
        public.verify(base64.b64decode(sig, validate=True), _message(meta, body))
    except (InvalidSignature, binascii.Error, ValueError):
        return "the signature does not match its content: the file was altered"
    return None


def _verify_json(data: bytes, public: Ed25519PublicKey, want: str) -> Verdict:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Verdict(False, "it is not valid JSON: the file was altered", "json")
    if not isinstance(doc, dict) or not isinstance(doc.get("signature"), dict):
        return Verdict(False, "it carries no signature", "json")
    signature = doc.pop("signature")
    sig = signature.pop("sig", None)
    if orjson.dumps({**doc, "signature": {**signature, "sig": sig}},
                    option=_CANON) + b"\n" != data:
        return Verdict(False, "its bytes are not the form autoglm wrote: the file was "
                       "altered", "json")
    if signature.get("format") != "json":
        return Verdict(False, "its signature block is malformed", "json")
    why = _check(signature, sig, orjson.dumps(doc, option=_CANON), public, want)
    if why:
        return Verdict(False, why, "json", signature.get("key"))
    summary = doc.get("summary", {}).get("all") if isinstance(doc.get("summary"), dict) else None
    return Verdict(True, "unaltered", "json", want, signature.get("generated_at"), summary)


def _verify_html(data: bytes, public: Ed25519PublicKey, want: str) -> Verdict:
    m = _TRAILER.search(data)
    if m is None:
        return Verdict(False, "it carries no signature line at its end (or bytes follow it)",
                       "html")
    try:
        signature = orjson.loads(m.group(1))
    except orjson.JSONDecodeError:
        return Verdict(False, "its signature line is damaged: the file was altered", "html")
    if not isinstance(signature, dict) or signature.get("format") != "html":
        return Verdict(False, "its signature block is malformed", "html")
    if _trailer(signature) != data[m.start():]:
        return Verdict(False, "its signature line is not the form autoglm wrote: the file "
                       "was altered", "html")
    sig = signature.pop("sig", None)
    why = _check(signature, sig, data[:m.start()], public, want)
    if why:
        return Verdict(False, why, "html", signature.get("key"))
    return Verdict(True, "unaltered", "html", want, signature.get("generated_at"))
