"""The platform's one timestamp format: RFC 3339 in UTC, milliseconds, explicit offset
(``2026-11-25T16:46:29.559+00:00``), in API answers, logs, manifests and records alike."""

from __future__ import annotations

from datetime import UTC, datetime


def stamp(value: datetime | None = None) -> str:
    """``value`` (now when None) in the one format. A naive value is UTC: every time is
    stored in UTC, and SQLite hands stored times back without their zone."""
    value = value or datetime.now(UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds")
