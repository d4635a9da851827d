"""Erasure of a data subject (GDPR Art. 17, PIPL Art. 47) that keeps the audit chain.

``erase`` destroys every personal data key of the subjects named (``privacy.vault``) and
records the act in the audit chain, in one transaction: the subject's records stay
exactly as sealed, so ``autoglm audit verify`` still passes, while their personal fields
(client address, purpose, kept prompt and answer text) can no longer be read by anyone.
The act's own record names the principal erased and how many keys and records it
covered, never personal data.

Subjects are principals (``--principal``) and the per-day anonymous subjects of records
without one (``--anonymous-before``: failed authentications' client addresses).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError, ProgrammingError

from autoglm.audit import AuditLog, Record
from autoglm.errors import ConfigError, InvalidRequestError
from autoglm.privacy.vault import PersonalVault
from autoglm.store.models import AuditRecord, valid_id

T = AuditRecord.__table__


@dataclass(frozen=True)
class Erasure:
    subjects: tuple[str, ...]
    keys: int  # keys destroyed now
    records: int  # sealed records of those subjects, now unreadable
    seq: int | None  # the erasure's own audit record


def erase(audit: AuditLog, *, principal: str | None = None,
          anonymous_before: datetime | None = None, actor: str) -> Erasure:
    """Destroy the keys of ``principal`` and/or of the anonymous days before
    ``anonymous_before``; the erasure's record is committed with it."""
    if principal is None and anonymous_before is None:
        raise InvalidRequestError("name what to erase: a principal, or anonymous records "
                                  "before a date")
    if principal is not None and not (valid_id(principal) and principal.startswith("prn_")):
        raise InvalidRequestError(f"{principal[:40]!r} is not a principal id (prn_...)",
                                  param="principal")
    vault: PersonalVault = audit.vault
    db = audit.db
    try:
        with db.session() as session:
            subjects = [principal] if principal is not None else []
            if anonymous_before is not None:
                subjects += vault.anonymous_before(session, anonymous_before)
            keys = vault.erase(subjects, session)
            records = 0
            if principal is not None:
                records += session.execute(select(func.count()).where(
                    T.c.actor == principal, T.c.personal.is_not(None))).scalar_one()
            anonymous = [s for s in subjects if s != principal]
            if anonymous:
                records += session.execute(select(func.count()).where(
                    T.c.actor.is_(None), T.c.personal.is_not(None),
                    T.c.ts < anonymous_before)).scalar_one()
            detail = {"keys": keys, "records": int(records)}
            if anonymous:
                detail["anonymous_days"] = len(anonymous)
            rec = Record(action="privacy.erase", actor=actor, status=200,
                         resource=f"principal:{principal}" if principal else "anonymous",
                         detail=detail)
            seqs = audit.append([rec], session=session)
            session.commit()
    except (OperationalError, ProgrammingError) as exc:
        reason = " ".join(str(exc.orig).split())[:300]
        raise ConfigError(f"cannot erase in the database: {reason}") from None
    return Erasure(tuple(subjects), keys, int(records), seqs[0] if seqs else None)
