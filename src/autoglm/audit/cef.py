"""ArcSight Common Event Format (CEF) lines for audit records, for a SIEM.

``CEF:0|Open-AutoGLM|autoglm|<version>|<action>|<action>|<severity>|key=value ...``

Header fields escape ``\\`` and ``|``; extension values escape ``\\``, ``=``, and line
breaks (as ``\\n`` and ``\\r``); neither may hold a real line break, so one record is
always one line. Keys are CEF's own where one fits (``rt``, ``externalId`` = seq,
``suser``, ``src``, ``outcome``, ``cnt``, ...) and labelled custom fields otherwise;
``cs5``/``cs6`` carry the previous and the record's chain hash.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from autoglm import __version__

SEVERITY = {"allow": 3, "deny": 6, "error": 8}

# (record field, CEF key, label key, label); in this order on each line
_FIELDS: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("seq", "externalId", None, None),
    ("actor", "suser", None, None),
    ("key_id", "suid", None, None),
    ("decision", "outcome", None, None),
    ("resource", "request", None, None),
    ("count", "cnt", None, None),
    ("status", "cn1", "cn1Label", "status"),
    ("prompt_tokens", "cn2", "cn2Label", "promptTokens"),
    ("completion_tokens", "cn3", "cn3Label", "completionTokens"),
    ("latency_ms", "cfp1", "cfp1Label", "latencyMs"),
    ("tenant_id", "cs1", "cs1Label", "tenant"),
    ("project_id", "cs2", "cs2Label", "project"),
    ("request_id", "cs3", "cs3Label", "requestId"),
    ("model", "cs4", "cs4Label", "model"),
    ("prev", "cs5", "cs5Label", "prevHash"),
    ("hash", "cs6", "cs6Label", "hash"),
    ("client_request_id", "flexString1", "flexString1Label", "clientRequestId"),
    ("purpose", "flexString2", "flexString2Label", "purpose"),
    ("consent_id", "deviceExternalId", None, None),
)


def header(value: object) -> str:
    """A header field: ``\\`` and ``|`` escaped, line breaks made spaces."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def value(value: object) -> str:
    """An extension value: ``\\``, ``=`` and line breaks escaped."""
    text = str(value).replace("\\", "\\\\").replace("=", "\\=")
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def _epoch_ms(ts: Any) -> int | str:
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts)
        except ValueError:
            return ts
    return int(ts.timestamp() * 1000)


def line(rec: Mapping[str, Any]) -> str:
    """One CEF line (no newline) for a record in the export's shape (``ts`` as text)."""
    action = rec.get("action") or "unknown"
    sev = SEVERITY.get(str(rec.get("decision")), 5)
    ext = [f"rt={value(_epoch_ms(rec['ts']))}"]
    addr = rec.get("client_addr")
    if addr:
        try:
            ipaddress.ip_address(addr)
            ext.append(f"src={value(addr)}")
        except ValueError:
            ext.append(f"shost={value(addr)}")
    for field, key, label_key, label in _FIELDS:
        v = rec.get(field)
        if v is None or v == "":
            continue
        ext.append(f"{key}={value(v)}")
        if label_key is not None:
            ext.append(f"{label_key}={label}")
    detail = rec.get("detail")
    if detail:
        text = detail if isinstance(detail, str) else orjson.dumps(detail).decode()
        ext.append(f"msg={value(text)}")
    return (f"CEF:0|Open-AutoGLM|autoglm|{header(__version__)}|{header(action)}|"
            f"{header(action)}|{sev}|{' '.join(ext)}")
