"""Two tenants set up from the CLI (database mode), then used with the openai SDK, and
the same CLI against the running server (--url)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from .support import ServerProcess, base_env

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m-instruct"
EXE = str(Path(sys.executable).with_name("autoglm"))


def cli(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run([EXE, *args, "--json"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_two_tenants_from_the_cli_used_with_the_openai_sdk(tmp_path: Path) -> None:
    env = base_env(AUTOGLM_DATA_DIR=str(tmp_path / "data"))
    keys = {}
    for t in ("bank", "hospital"):
        tenant = cli(env, "tenants", "create", t)
        assert cli(env, "tenants", "grant", tenant["id"], "--model", MODEL)["models"] == [MODEL]
        proj = cli(env, "projects", "create", tenant["id"], "main", "--model", MODEL)
        for who, role in (("member", "member"), ("guest", "guest")):
            prn = cli(env, "principals", "create", tenant["id"], f"{t}-{who}")
            cli(env, "principals", "bind", prn["id"], role, "--project", proj["id"])
            keys[f"{t}/{who}"] = cli(env, "keys", "create", prn["id"])["key"]
    srv = ServerProcess(tmp_path, name="cli-server",
                        args=["--data-dir", str(tmp_path / "data")]).start()
    try:
        for t in ("bank", "hospital"):
            member = openai.OpenAI(base_url=srv.api_base, api_key=keys[f"{t}/member"],
                                   max_retries=0)
            r = member.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            assert r.choices[0].message.content is not None
            assert [m.id for m in member.models.list()] == [MODEL]
            guest = openai.OpenAI(base_url=srv.api_base, api_key=keys[f"{t}/guest"],
                                  max_retries=0)
            with pytest.raises(openai.NotFoundError):
                guest.chat.completions.create(model=MODEL, max_tokens=3,
                                              messages=[{"role": "user", "content": "hi"}])
        # the same CLI against the running server
        listed = cli(env, "tenants", "list", "--url", srv.base_url, "--key", srv.key)
        assert {t["name"] for t in listed["data"]} == {"bank", "hospital"}
        bad = subprocess.run([EXE, "tenants", "list", "--url", srv.base_url, "--key", "nope"],
                             capture_output=True, text=True, timeout=60, env=env)
        assert bad.returncode == 1 and "401" in bad.stderr
    finally:
        srv.stop(check=False)
