"""A real installation made with the CLI (in-process, the same commands an operator runs):
a tenant, a project, a member with a key, a registered model; shared by the backup and
compliance tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from autoglm.cli.main import app


@dataclass
class Installation:
    data_dir: Path
    tenant: str
    principal: str
    key_id: str
    key: str


def cli(*args: str, code: int = 0) -> tuple[str, str]:
    """Run ``autoglm ARGS``; its stdout and stderr (the exit code must be ``code``)."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == code, (args, result.stdout, result.stderr)
    return result.stdout, result.stderr


def cli_json(*args: str) -> dict:
    return json.loads(cli(*args, "--json")[0])


def make_installation(data_dir: Path, tmp: Path) -> Installation:
    tenant = cli_json("tenants", "create", "bank")["id"]
    project = cli_json("projects", "create", tenant, "main")["id"]
    member = cli_json("principals", "create", tenant, "alice")["id"]
    cli_json("principals", "bind", member, "member", "--project", project)
    created = cli_json("keys", "create", member, "--name", "alice-laptop")
    weights = tmp / "weights" / "tiny.gguf"
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    cli("model", "add", str(weights), "--name", "tiny")
    return Installation(data_dir, tenant, member, created["id"], created["key"])
