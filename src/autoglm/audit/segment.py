"""``autoglm audit verify --file``: check an exported JSONL chain segment offline.

Needs the chain's HMAC key, not the database. The segment must start from the ``prev``
of its first line (bound into that record's HMAC, so it cannot be changed unseen) and
chain record by record (``verify.ChainScan``: the same rules and the same fault kinds as
the database check). Its trailer (``audit.export``) must carry a valid MAC and agree with
the lines: first and last seq, count, hashes; lines cut off at the start or the end, or a
missing trailer, are found that way. With the checkpoints file and its public key, every
signed checkpoint (or prune anchor) that falls inside the segment, or right before it,
must name the hash the segment holds at its seq (else ``resealed``).

Memory stays bounded: lines are read one at a time; only the checkpoints inside the
segment's range are kept.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from autoglm.audit import checkpoints as cps
from autoglm.audit.export import FORMAT, trailer_mac
from autoglm.audit.record import COLUMNS
from autoglm.audit.verify import ChainScan, Fault, Report
from autoglm.errors import ConfigError

_FIELDS = frozenset((*COLUMNS, "prev")) - {"personal"}  # absent from exports before 0007


def _last_line(path: Path) -> tuple[bytes, int]:
    """The file's last non-empty line and the byte offset where it starts."""
    with path.open("rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        pos, tail = end, b""
        while pos > 0:
            step = min(8192, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
            body = tail.rstrip(b"\r\n")
            cut = body.rfind(b"\n")
            if cut >= 0:
                return body[cut + 1:], pos + cut + 1
        body = tail.rstrip(b"\r\n")
        return body, 0


def _trailer(raw: bytes, key: bytes) -> tuple[dict[str, Any] | None, Fault | None]:
    """The trailer's metadata if ``raw`` is a trailer line (None if it is not one), and a
    fault if its MAC does not verify."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(doc, dict) or not isinstance(doc.get("export"), dict):
        return None, None
    meta, mac = doc["export"], doc.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(trailer_mac(key, meta), mac):
        return meta, Fault(None, "modified", "the export's trailer line does not verify with "
                           "the audit key: it was edited, or the export is of another chain")
    if meta.get("format") != FORMAT:
        return meta, Fault(None, "modified", f"the trailer names format {meta.get('format')!r}; "
                           f"this verifier reads {FORMAT}")
    return meta, None


class _Lines:
    """The record lines (up to ``stop`` bytes) as rows; ``notes`` the faults the chain
    scan does not see: a ``prev`` that disagrees with the line before, a checkpoint the
    segment contradicts."""

    def __init__(self, path: Path, stop: int, cps_by_seq: dict[int, cps.Checkpoint],
                 report: Report) -> None:
        self.path, self.stop, self.cps, self.report = path, stop, cps_by_seq, report
        self.notes: list[Fault] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        last_seq, last_hash = None, None
        with self.path.open("rb") as fh:
            used = 0
            for number, raw in enumerate(fh, 1):
                used += len(raw)
                if used > self.stop:
                    break
                if not raw.strip():
                    continue
                row = self._row(raw, last_seq)
                if (last_seq is not None and row["seq"] == last_seq + 1
                        and row.get("prev") != last_hash):
                    self.notes.append(Fault(row["seq"], "modified", (
                        f"line {number}: the prev field of record {row['seq']} was changed")))
                cp = self.cps.get(row["seq"])
                if cp is not None and cp.hash != row["hash"]:
                    self.notes.append(_resealed(cp))
                elif cp is not None:
                    self.report.checkpoints += 1
                last_seq, last_hash = row["seq"], row["hash"]
                yield row

    @staticmethod
    def _row(raw: bytes, last_seq: int | None) -> dict[str, Any]:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if (isinstance(doc, dict) and _FIELDS <= doc.keys() and isinstance(doc["seq"], int)
                and not isinstance(doc["seq"], bool)):
            return doc
        # not a record: it fails where the next record was due (no HMAC matches it)
        return {**dict.fromkeys(_FIELDS), "seq": (last_seq or 0) + 1, "hash": ""}


def _resealed(cp: cps.Checkpoint) -> Fault:
    what = "anchor" if cp.anchor else "checkpoint"
    return Fault(cp.seq, "resealed", f"signed {what} line {cp.line} (signed {cp.ts}) names "
                 f"another hash for record {cp.seq}: the records were rewritten with the key")


def verify_file(path: Path, key: bytes, public: Ed25519PublicKey | None = None,
                checkpoints: Path | None = None) -> Report:
    """Check the exported segment in ``path``; the first fault and what it is."""
    if not path.is_file():
        raise ConfigError(f"no export at {path}")
    report = Report()
    raw, at = _last_line(path)
    meta, bad = _trailer(raw, key)
    if bad is not None:
        report.faults.append(bad)
    stop = at if meta is not None else path.stat().st_size
    wanted: dict[int, cps.Checkpoint] = {}
    if meta is not None and public is not None and checkpoints is not None \
            and isinstance(meta.get("first_seq"), int) and isinstance(meta.get("last_seq"), int):
        lo, hi = meta["first_seq"] - 1, meta["last_seq"]
        for entry in cps.read(checkpoints, public):
            if isinstance(entry, cps.Checkpoint) and lo <= entry.seq <= hi:
                wanted[entry.seq] = entry
    lines = _Lines(path, stop, wanted, report)
    rows = iter(lines)
    first = next(rows, None)
    if first is not None:
        start, prev_hex = first["seq"], first.get("prev")
        try:
            prev = bytes.fromhex(prev_hex) if isinstance(prev_hex, str) else b""
        except ValueError:
            prev = b""
        report.anchor = start - 1
        report.head_seq = start - 1
        report.head_hash = prev_hex if isinstance(prev_hex, str) else ""
        before = wanted.get(start - 1)
        if before is not None and before.hash != prev_hex:
            report.faults.append(_resealed(before))
        elif before is not None:
            report.checkpoints += 1
        head = meta["last_seq"] if meta and isinstance(meta.get("last_seq"), int) else 2**62
        known = len(report.faults)
        ChainScan(key, head, report).run(_chain(first, rows), start, prev)
        # a note counts only before the chain's own first fault (which says more)
        limit = min((f.seq for f in report.faults[known:] if f.seq is not None),
                    default=None)
        report.faults += [f for f in lines.notes
                          if limit is None or (f.seq is not None and f.seq < limit)]
    _against_trailer(meta, first, report)
    if report.faults:
        report.fault = min(report.faults, key=lambda f: (f.seq is None, f.seq or 0))
    return report


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest


def _against_trailer(meta: dict[str, Any] | None, first: dict[str, Any] | None,
                     report: Report) -> None:
    if report.faults:
        return  # the chain's own fault comes first
    if meta is None:
        seq = report.head_seq + 1
        report.faults.append(Fault(seq, "truncated", "the export has no trailer line: it "
                                   f"was cut off after seq {report.head_seq}"))
        return
    if meta.get("records", 0) == 0:
        if first is not None:
            report.faults.append(Fault(first["seq"], "inserted", (
                "the trailer says the export holds no record; lines were added")))
        return
    if first is None or meta.get("first_seq") != first["seq"]:
        seq = meta.get("first_seq")
        report.faults.append(Fault(seq if isinstance(seq, int) else None, "deleted", (
            f"the trailer says the export starts at seq {seq}; its first line is "
            f"{first['seq'] if first else 'missing'}: lines were cut from the start")))
    elif meta.get("prev") != first.get("prev"):
        report.faults.append(Fault(first["seq"], "modified", (
            f"the prev of record {first['seq']} is not the one the trailer names")))
    elif meta.get("last_seq") != report.head_seq or meta.get("last_hash") != report.head_hash:
        report.faults.append(Fault(report.head_seq + 1, "truncated", (
            f"the export ends at seq {report.head_seq} but its trailer says "
            f"{meta.get('last_seq')}: lines were cut from the end")))
    elif meta.get("records") != report.records:
        report.faults.append(Fault(None, "modified", (
            f"the trailer counts {meta.get('records')} records; {report.records} verified")))
