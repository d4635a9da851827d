"""Settings fields: Edge nodes (``autoglm.edge``): the centre they sync with, and how stale
they may get."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class EdgeFields(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    # --- edge node (autoglm.edge) --------------------------------------------------------
    centre_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="Makes this an edge "
        "node of the centre at this URL: it serves from a copy of the centre's tenants, keys "
        "and limits, synced every edge_sync_s, and forwards its audit records there. "
        "Tenants, projects, principals, keys and limits are then managed at the centre.")
    centre_key: SecretStr | None = Field(
        None, description="The edge's key at the centre (a platform key narrowed to "
        "edge.sync, and model.pull for the mirror); required with centre_url.")
    centre_ca_file: Path | None = Field(
        None, description="PEM bundle of the CAs the centre's TLS certificate is checked "
        "against. Unset: the system's.")
    edge_node: str = Field(
        default_factory=lambda: socket.gethostname()[:64] or "edge",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="This edge node's name "
        "at the centre (its forwarded audit chain is kept under it). Unset: the host name.")
    edge_sync_s: float = Field(
        10.0, gt=0, le=3600, description="How often an edge node syncs with its centre and "
        "forwards its audit records, in seconds.")
    edge_max_staleness_s: float = Field(
        86_400.0, gt=0, le=30 * 86_400, description="How long after its last sync with the "
        "centre an edge node still serves tenant keys from its copy (a revocation made at "
        "the centre meanwhile is not known); then 503 edge_stale until the centre answers.")
