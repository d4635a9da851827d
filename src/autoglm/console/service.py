"""The console's parts, built once per app (``api/app.py`` puts it on ``app.state``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from jinja2 import Environment

from autoglm.console import assets
from autoglm.console.gate import ConsoleGate
from autoglm.console.sessions import SessionStore
from autoglm.console.web import templates
from autoglm.security.access import Authorizer
from autoglm.security.keystore import KeyService
from autoglm.settings import Settings
from autoglm.store.db import Database


@dataclass(frozen=True)
class Console:
    sessions: SessionStore
    gate: ConsoleGate
    templates: Environment
    static: Mapping[str, tuple[bytes, str]]

    @classmethod
    def build(cls, settings: Settings, db: Database, keys: KeyService | None,
              authz: Authorizer) -> Console:
        sessions = SessionStore(db, keys, idle=timedelta(hours=settings.console_idle_hours),
                                lifetime=timedelta(hours=settings.console_max_hours))
        return cls(sessions, ConsoleGate(sessions, authz), templates(), assets.load())
