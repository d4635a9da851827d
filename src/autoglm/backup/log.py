"""The record of backups made: ``data_dir/backups.jsonl``, one JSON line per backup
(when, where, its SHA-256 and size, the audit head it holds). ``autoglm compliance
report`` reads it as the evidence that backups are taken; the archives themselves are
wherever the operator put them (ideally off this host)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson


def log_path(data_dir: Path) -> Path:
    return data_dir / "backups.jsonl"


def record(data_dir: Path, entry: dict[str, Any]) -> None:
    """Append one line (one write, O_APPEND, fsynced)."""
    path = log_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, orjson.dumps(entry) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def entries(data_dir: Path) -> list[dict[str, Any]]:
    """Every well-formed line, oldest first (a damaged line is skipped)."""
    try:
        raw = log_path(data_dir).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("created_at"), str):
            out.append(doc)
    return out
