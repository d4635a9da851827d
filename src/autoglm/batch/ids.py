"""Ids of files and batches: ``file_`` / ``batch_`` (OpenAI's prefixes), then the creation
time in milliseconds (12 hex digits) and 8 random hex digits.

Time first, so that ids sort as the objects were made: lists page by id alone (``after``
needs no lookup, and still works when the object it names was deleted since), newest
first as OpenAI lists them. The random part keeps two ids of one millisecond apart; as
every id of the store, an id says nothing about how many objects exist.
"""

from __future__ import annotations

import re
import secrets
import time

FILE = "file"
BATCH = "batch"
_SHAPE = {prefix: re.compile(rf"^{prefix}_[0-9a-f]{{20}}$") for prefix in (FILE, BATCH)}


def new_id(prefix: str, now: float | None = None) -> str:
    ms = int((time.time() if now is None else now) * 1000)
    return f"{prefix}_{ms:012x}{secrets.token_hex(4)}"


def valid(prefix: str, value: object) -> bool:
    """Shaped like an id of this kind: anything else names nothing, and is answered
    without asking the database."""
    return isinstance(value, str) and _SHAPE[prefix].match(value) is not None
