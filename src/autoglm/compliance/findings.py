"""What a check answers (``Finding``), the four statuses, and helpers the checks share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MET, NOT_MET, NOT_APPLICABLE, MANUAL = "met", "not_met", "not_applicable", "manual"
SENSITIVE_PII = ("cn_id", "bank_card", "passport")  # PIPL Art. 28 sensitive personal info
STATUSES = (MET, NOT_MET, NOT_APPLICABLE, MANUAL)

Ev = Mapping[str, Any]
Params = Mapping[str, Any]


@dataclass(frozen=True)
class Finding:
    """A control's status, the evidence it went by (in words), and a remedy when the check
    knows one more precise than the catalogue's."""

    status: str
    evidence: list[str] = field(default_factory=list)
    remedy: str | None = None


def unread(section: Ev, what: str) -> Finding | None:
    """A finding for evidence that could not be read: not met, saying why."""
    if isinstance(section, Mapping) and "error" in section:
        return Finding(NOT_MET, [f"{what} could not be read: {section['error']}"],
                       "Make the installation readable to this command and report again.")
    return None
