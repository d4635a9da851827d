"""``autoglm model pull`` against the stand-in hub, a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from autoglm.errors import (
    ConfigError,
    HubError,
    IntegrityError,
    NotFoundError,
    StorageFullError,
)
from autoglm.supply import manifest as mf
from autoglm.supply.pull import Puller, PullRequest
from autoglm.supply.registry import Registry
from tests.e2e.support import AUTOGLM, free_port
from tests.supply.hub import REPO, HubProcess, make_repo, sha256

GGUF = "tiny.Q4_0.gguf"


@pytest.fixture
def hub(tmp_path: Path):
    files = make_repo(tmp_path / "hub")
    proc = HubProcess(tmp_path / "hub")
    proc.files = files
    yield proc
    proc.stop()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "data")


def puller(registry: Registry, retries: int = 4) -> Puller:
    return Puller(registry, retries=retries, backoff_s=0.01, timeout_s=10)


def cli(data: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOGLM_DATA_DIR": str(data), "AUTOGLM_PULL_BACKOFF_S": "0.01"}
    return subprocess.run([str(AUTOGLM), "model", "pull", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_pull_registers_a_model_whose_manifest_matches_the_hub(hub, registry, source) -> None:
    result = puller(registry).pull(PullRequest(REPO, source=source, endpoint=hub.url))
    entry = registry.get("tiny-model")
    assert entry == result.entry
    assert entry["source"] == f"{source}:{REPO}"
    assert len(entry["revision"]) == 40  # the commit, not the branch name
    assert {f["path"]: f["sha256"] for f in entry["manifest"]["files"]} == {
        p: sha256(d) for p, d in hub.files.items()}
    root = Path(entry["path"])
    assert root.parent.name == "store"
    assert mf.verify(root, entry["manifest"]).intact
    assert result.fetched == sum(len(d) for d in hub.files.values())
    assert not list((registry.dir / ".incoming").glob("*.json"))  # no leftover state


def test_include_fetches_only_matching_files(hub, registry) -> None:
    puller(registry).pull(PullRequest(REPO, endpoint=hub.url, include=["*.json"], name="cfg"))
    assert [f["path"] for f in registry.get("cfg")["manifest"]["files"]] == ["config.json"]
    assert {r["path"] for r in hub.requests()} == {"config.json"}
    with pytest.raises(ConfigError, match="no file .* matches --include"):
        puller(registry).pull(PullRequest(REPO, endpoint=hub.url, include=["*.bin"], name="x"))


def test_a_cut_connection_resumes_and_bytes_on_disk_are_not_fetched_again(hub, registry) -> None:
    cut = 1 << 20
    hub.control(faults=[{"kind": "cut", "after_bytes": cut, "times": 1, "path": GGUF}])
    with pytest.raises(HubError, match="closed mid-transfer; gave up after 1 tries"):
        puller(registry, retries=0).pull(PullRequest(REPO, endpoint=hub.url))
    with pytest.raises(NotFoundError):  # nothing half-written looks complete
        registry.get("tiny-model")
    part = registry.dir / ".incoming" / "tiny-model" / f"{GGUF}.part"
    assert part.stat().st_size == cut
    result = puller(registry).pull(PullRequest(REPO, endpoint=hub.url))
    last = hub.requests(GGUF)[-1]
    assert last["range_start"] == cut and last["status"] == 206
    assert last["bytes_sent"] == len(hub.files[GGUF]) - cut
    assert result.resumed >= cut
    assert registry.verify("tiny-model").intact


def test_transient_errors_are_retried_with_backoff(hub, registry) -> None:
    hub.control(faults=[{"kind": "status", "status": 429, "times": 2, "path": GGUF},
                        {"kind": "status", "status": 500, "times": 1, "path": GGUF},
                        {"kind": "cut", "after_bytes": 300_000, "times": 2, "path": GGUF}])
    puller(registry, retries=5).pull(PullRequest(REPO, endpoint=hub.url))
    reqs = hub.requests(GGUF)
    assert [r["status"] for r in reqs] == [429, 429, 500, "cut", "cut", 206], reqs
    assert registry.verify("tiny-model").intact


def test_transient_errors_give_up_with_a_clear_error(hub, registry) -> None:
    hub.control(faults=[{"kind": "status", "status": 503, "times": 99, "path": GGUF}])
    with pytest.raises(HubError, match=r"downloading tiny.Q4_0.gguf: the hub answered 503; "
                                       r"gave up after 3 tries"):
        puller(registry, retries=2).pull(PullRequest(REPO, endpoint=hub.url))
    with pytest.raises(NotFoundError):
        registry.get("tiny-model")


def test_a_corrupted_byte_is_an_error_and_the_bytes_are_discarded(hub, registry) -> None:
    hub.control(faults=[{"kind": "corrupt", "times": 1, "path": GGUF}])
    with pytest.raises(IntegrityError, match=f"{GGUF}: downloaded SHA-256 .* but the hub "
                                             f"publishes {sha256(hub.files[GGUF])}"):
        puller(registry).pull(PullRequest(REPO, endpoint=hub.url))
    with pytest.raises(NotFoundError):
        registry.get("tiny-model")
    staging = registry.dir / ".incoming" / "tiny-model"
    assert not (staging / GGUF).exists() and not (staging / f"{GGUF}.part").exists()
    puller(registry).pull(PullRequest(REPO, endpoint=hub.url))  # a good mirror: it completes
    assert registry.verify("tiny-model").intact


def test_a_small_file_is_checked_against_its_git_blob_id(hub, registry) -> None:
    hub.control(faults=[{"kind": "corrupt", "times": 1, "path": "config.json", "at": 3}])
    with pytest.raises(IntegrityError, match="config.json: downloaded its git blob id differs"):
        puller(registry).pull(PullRequest(REPO, endpoint=hub.url))


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_missing_repository_and_wrong_revision(hub, registry, source) -> None:
    with pytest.raises(NotFoundError, match="repository acme/nope not found"):
        puller(registry).pull(PullRequest("acme/nope", source=source, endpoint=hub.url))
    with pytest.raises(NotFoundError, match="revision 'v9' not found in acme/tiny-model"):
        puller(registry).pull(PullRequest(REPO, source=source, revision="v9",
                                          endpoint=hub.url))
    with pytest.raises(ConfigError, match="should look like ORG/NAME"):
        puller(registry).pull(PullRequest("../etc", endpoint=hub.url))


def test_mirror_down_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    r = cli(tmp_path / "data", REPO, "--endpoint", f"http://127.0.0.1:{port}")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == (f"error: listing {REPO}: cannot connect (connection refused); "
                         "gave up after 7 tries")
    assert "Traceback" not in r.stderr


def test_not_enough_disk_space_is_refused_before_downloading(hub, registry) -> None:
    hub.control(fake_size={GGUF: 1 << 50})
    with pytest.raises(StorageFullError, match=r"not enough disk space for acme/tiny-model: "
                                               r"1024\.0 TiB still to fetch"):
        puller(registry).pull(PullRequest(REPO, endpoint=hub.url))
    assert hub.requests() == []


def test_pulling_again_is_a_no_op_and_names_are_not_overwritten(hub, registry) -> None:
    puller(registry).pull(PullRequest(REPO, endpoint=hub.url))
    hub.control(reset_stats=True)
    again = puller(registry).pull(PullRequest(REPO, endpoint=hub.url))
    assert again.up_to_date and hub.requests() == []
    (hub.root / REPO / "config.json").write_text("{}")  # a new commit upstream
    with pytest.raises(ConfigError, match="already registered .* pass --name"):
        puller(registry).pull(PullRequest(REPO, endpoint=hub.url))


def test_sigkill_mid_download_then_resume_from_the_cli(hub, tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub.control(rate=1 << 20)  # 1 MiB/s: the 3 MiB file takes about 3 s
    proc = subprocess.Popen([str(AUTOGLM), "model", "pull", REPO, "--endpoint", hub.url],
                            env={**os.environ, "AUTOGLM_DATA_DIR": str(data)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = data / "models" / ".incoming" / "tiny-model" / f"{GGUF}.part"
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size >= 512 * 1024):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    on_disk = part.stat().st_size
    assert 0 < on_disk < len(hub.files[GGUF])
    assert not (data / "models" / "tiny-model.json").exists()
    hub.control(rate=None)
    r = cli(data, REPO, "--endpoint", hub.url)
    assert r.returncode == 0, r.stderr
    kept = on_disk + len(hub.files["config.json"])  # the part, and the file done before it
    assert f"{kept:,} already on disk, not fetched again" in r.stderr
    last = hub.requests(GGUF)[-1]
    assert last["range_start"] == on_disk
    assert last["bytes_sent"] == len(hub.files[GGUF]) - on_disk
    entry = json.loads((data / "models" / "tiny-model.json").read_text())
    assert {f["path"]: f["sha256"] for f in entry["manifest"]["files"]}[GGUF] == sha256(
        hub.files[GGUF])


def test_two_pulls_at_once_do_not_corrupt_each_other(hub, tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub.control(rate=2 << 20)
    env = {**os.environ, "AUTOGLM_DATA_DIR": str(data)}
    args = [str(AUTOGLM), "model", "pull", REPO, "--endpoint", hub.url]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    part = data / "models" / ".incoming" / "tiny-model" / f"{GGUF}.part"
    deadline = time.monotonic() + 30
    while not part.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    first_err = first.communicate(timeout=60)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second.stderr
    assert "another pull of tiny-model is running; waiting" in second.stderr
    assert "already pulled" in second.stderr
    assert sum(r["bytes_sent"] for r in hub.requests(GGUF)) == len(hub.files[GGUF])
    assert Registry(data).verify("tiny-model").intact


def _can_mount_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs "
                               "/mnt"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_disk_full_mid_download_is_one_line_and_resumes_after_space_is_freed(
        hub, tmp_path: Path) -> None:
    """A real full disk: the data directory is a small tmpfs (in a private mount namespace)
    that another writer fills while the pull is running."""
    if not _can_mount_tmpfs():
        pytest.skip("needs `unshare -m` and tmpfs mounts (root or user namespaces)")
    data = tmp_path / "data"
    data.mkdir()
    hub.control(rate=1 << 20)
    script = f"""
        set -u
        mount -t tmpfs -o size=6m tmpfs {data}
        export AUTOGLM_DATA_DIR={data} AUTOGLM_PULL_BACKOFF_S=0.01
        {AUTOGLM} model pull {REPO} --endpoint {hub.url} 2>{tmp_path}/first.err &
        pid=$!
        while [ ! -s {data}/models/.incoming/tiny-model/{GGUF}.part ]; do sleep 0.05; done
        dd if=/dev/zero of={data}/filler bs=64k 2>/dev/null
        wait $pid; echo "first=$?"
        rm {data}/filler
        {AUTOGLM} model pull {REPO} --endpoint {hub.url} 2>{tmp_path}/second.err
        echo "second=$?"
        {AUTOGLM} model verify tiny-model 2>&1; echo "verify=$?"
    """
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                       timeout=120)
    first = (tmp_path / "first.err").read_text()
    assert "first=1" in r.stdout, (r.stdout, r.stderr, first)
    assert first.strip().splitlines()[-1].startswith(
        f"error: disk full while writing {GGUF} into ")
    assert "bytes already fetched are kept" in first and "Traceback" not in first
    assert "second=0" in r.stdout, (tmp_path / "second.err").read_text()
    assert "already on disk, not fetched again" in (tmp_path / "second.err").read_text()
    assert "tiny-model: intact" in r.stdout and "verify=0" in r.stdout


@pytest.mark.model
async def test_a_pulled_gguf_is_served_by_name(tmp_path: Path) -> None:
    from autoglm.engine.catalog import embedded_model_path
    from tests.conftest import make_settings, start_app

    repo = tmp_path / "hub" / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF"
    repo.mkdir(parents=True)
    os.symlink(embedded_model_path(), repo / "smollm2-135m-instruct.Q4_1.gguf")
    (repo / "README.md").write_text("SmolLM2 135M Instruct, Q4_1\n")
    proc = HubProcess(tmp_path / "hub")
    try:
        data = tmp_path / "data"
        Puller(Registry(data), retries=2, backoff_s=0.01).pull(PullRequest(
            "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", endpoint=proc.url, include=["*.gguf"],
            name="smol"))
    finally:
        proc.stop()
    async for c in start_app(make_settings(data, model="smol")):
        models = (await c.get("/v1/models")).json()["data"]
        assert models[0]["id"] == "smol"
        assert models[0]["verification"]["source"] == "registry:smol"
        r = await c.post("/v1/chat/completions", json={
            "model": "smol", "max_tokens": 4,
            "messages": [{"role": "user", "content": "Say hi"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_a_removed_model_pulled_again_reuses_its_checked_files(hub, registry) -> None:
    puller(registry).pull(PullRequest(REPO, endpoint=hub.url))
    registry.remove("tiny-model")  # the files stay in the store
    stored = registry.dir / "store" / "tiny-model"
    (stored / "config.json").write_text('{"changed": true}')  # this one must come again
    hub.control(reset_stats=True)
    result = puller(registry).pull(PullRequest(REPO, endpoint=hub.url))
    assert [r["path"] for r in hub.requests()] == ["config.json"]
    assert result.fetched == len(hub.files["config.json"])
    assert registry.verify("tiny-model").intact


def test_the_stand_in_hub_serves_the_official_huggingface_hub_client(
        hub, tmp_path: Path, monkeypatch) -> None:
    """The stand-in is only worth its tests if the real client can use it as a mirror."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    out = huggingface_hub.snapshot_download(REPO, endpoint=hub.url, local_dir=tmp_path / "dl",
                                            token=False)
    for rel, data in hub.files.items():
        assert (Path(out) / rel).read_bytes() == data
    lfs = [r for r in hub.requests(GGUF) if r["method"] == "GET"]
    assert lfs and lfs[-1]["bytes_sent"] == len(hub.files[GGUF])  # via the "CDN" redirect


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_a_hostile_file_name_is_refused_before_anything_is_written(
        hub, registry, tmp_path: Path, source) -> None:
    hub.control(fake_name={"config.json": "../../../escaped.json"})
    with pytest.raises(HubError, match="unsafe file name: '../../../escaped.json'"):
        puller(registry).pull(PullRequest(REPO, source=source, endpoint=hub.url))
    assert not list(tmp_path.rglob("escaped.json")) and hub.requests() == []


def test_on_a_terminal_the_pull_shows_a_progress_bar_with_speed_and_eta(
        hub, tmp_path: Path) -> None:
    if shutil.which("script") is None:
        pytest.skip("needs `script` (util-linux) to give the pull a terminal")
    hub.control(rate=2 << 20)  # about 1.5 s: the bar is redrawn several times
    cmd = f"{AUTOGLM} model pull {REPO} --endpoint {hub.url}"
    r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "AUTOGLM_DATA_DIR": str(tmp_path / "d"),
                                        "COLUMNS": "120", "TERM": "xterm"})
    assert r.returncode == 0, r.stdout
    frames = [line for line in r.stdout.splitlines() if GGUF in line and "MB/s" in line]
    assert len(frames) >= 2, r.stdout[-2000:]  # redrawn, with a speed
    assert any(re.search(r"\d+:\d\d:\d\d", f) for f in frames)  # and a time remaining
    assert "every file matches the hub's hashes" in r.stdout
