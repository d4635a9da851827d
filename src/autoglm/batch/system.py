"""The batch API's parts, built once per app from its settings and shared objects.

``autoglm serve`` (and ``autoglm worker``, the same app without listeners) starts the
worker and the file sweeper in its lifespan and stops the worker first at shutdown, while
the engines still run (its lines in flight go back to the queue).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoglm.audit import AuditLog
from autoglm.batch.batches import BatchStore
from autoglm.batch.files import FileStore
from autoglm.batch.finalize import Finalizer
from autoglm.batch.owner import Owners
from autoglm.batch.queue import DatabaseQueue, JobQueue
from autoglm.batch.redis_queue import RedisQueue
from autoglm.batch.runner import LineRunner
from autoglm.batch.sweep import FileSweeper
from autoglm.batch.worker import BatchWorker
from autoglm.pipeline.service import InferenceService
from autoglm.security.auth import Authenticator
from autoglm.settings import Settings
from autoglm.state.redis import RedisLink
from autoglm.store.db import Database


@dataclass
class BatchSystem:
    files: FileStore
    store: BatchStore
    queue: JobQueue
    worker: BatchWorker
    sweeper: FileSweeper
    max_file_bytes: int
    max_lines: int

    @classmethod
    def build(cls, settings: Settings, db: Database, service: InferenceService,
              audit: AuditLog, auth: Authenticator, engines: dict[str, Any],
              link: RedisLink | None = None) -> BatchSystem:
        """With ``link`` (``redis_url``) lines are delivered through a Redis stream shared
        by every process and replica; without, through the database."""
        files = FileStore(db, settings.data_dir / "files")
        store = BatchStore(db, files, lease_s=settings.batch_lease_s)
        queue: JobQueue = (RedisQueue(link, settings.batch_lease_s) if link is not None
                           else DatabaseQueue(db, settings.batch_lease_s))
        worker = BatchWorker(
            store=store, queue=queue, runner=LineRunner(service, audit), owners=Owners(auth),
            finalizer=Finalizer(db, files, settings.batch_lease_s), engines=engines,
            concurrency=settings.batch_concurrency, lease_s=settings.batch_lease_s,
            poll_s=settings.batch_poll_s)
        sweeper = FileSweeper(files, interval_s=settings.batch_file_sweep_s, audit=audit)
        return cls(files, store, queue, worker, sweeper, settings.batch_file_max_bytes,
                   settings.batch_max_lines)
