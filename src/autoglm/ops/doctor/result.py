"""What one preflight check found: a status, one line of detail, one line of remedy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skip")


@dataclass(frozen=True)
class Result:
    """``id`` is ``group.name`` (stable, for scripts); ``remedy`` is required unless the
    check passed or did not apply; ``data`` holds the measured values for ``--json``."""

    id: str
    status: Status
    detail: str
    remedy: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.id}: unknown status {self.status!r}")
        if self.status in ("warn", "fail") and not self.remedy:
            raise ValueError(f"check {self.id}: a {self.status} needs a remedy")

    @property
    def group(self) -> str:
        return self.id.split(".", 1)[0]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "group": self.group, "status": self.status,
                "detail": self.detail, "remedy": self.remedy, "data": self.data}


def passed(id: str, detail: str, **data: Any) -> Result:
    return Result(id, "pass", detail, data=data)


def warned(id: str, detail: str, remedy: str, **data: Any) -> Result:
    return Result(id, "warn", detail, remedy, data=data)


def failed(id: str, detail: str, remedy: str, **data: Any) -> Result:
    return Result(id, "fail", detail, remedy, data=data)


def skipped(id: str, detail: str, **data: Any) -> Result:
    return Result(id, "skip", detail, data=data)


def worst(*statuses: Status) -> Status:
    """The most severe of ``statuses`` (fail > warn > pass > skip)."""
    order = {"skip": 0, "pass": 1, "warn": 2, "fail": 3}
    return max(statuses, key=order.__getitem__, default="pass")
