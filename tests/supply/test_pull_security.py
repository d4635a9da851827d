"""``model pull`` against a hostile or careless mirror (the stand-in hub, a real HTTP server):
files with no published hash, bodies longer or shorter than the published size, and the hub
token never following a redirect to another origin."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from autoglm.errors import HubError, IntegrityError, NotFoundError
from autoglm.supply.pull import Puller, PullRequest, Quiet
from autoglm.supply.registry import Registry
from tests.supply.hub import REPO, HubProcess, make_repo, sha256
from tests.supply.test_pull import GGUF, cli, puller

TOKEN = "hf_s3cr3t-token-for-the-hub-only"


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


class Recorder(Quiet):
    """What the pull told its reporter: bytes written per file, files without a hash."""

    def __init__(self) -> None:
        self.written: Counter[str] = Counter()
        self.unhashed_files: list[str] = []

    def advance(self, path: str, n: int) -> None:
        self.written[path] += n

    def unhashed(self, paths: list[str]) -> None:
        self.unhashed_files.extend(paths)


# -- files the hub publishes no hash for ----------------------------------------------------

@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_a_file_without_a_published_hash_is_refused_before_any_byte(
        hub, registry, source) -> None:
    hub.control(unhashed=["config.json", GGUF])
    with pytest.raises(IntegrityError) as err:
        puller(registry).pull(PullRequest(REPO, source=source, endpoint=hub.url))
    assert "config.json" in err.value.message and GGUF in err.value.message
    assert "--allow-unhashed" in err.value.message
    assert "tokenizer/vocab.txt" not in err.value.message  # that one is hashed
    assert hub.requests() == []  # refused from the listing: nothing fetched, nothing written
    with pytest.raises(NotFoundError):
        registry.get("tiny-model")


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_allow_unhashed_accepts_them_records_local_hashes_and_says_which(
        hub, registry, source) -> None:
    hub.control(unhashed=["config.json", GGUF])
    seen = Recorder()
    result = Puller(registry, retries=2, backoff_s=0.01, timeout_s=10, reporter=seen).pull(
        PullRequest(REPO, source=source, endpoint=hub.url, allow_unhashed=True))
    manifest = registry.get("tiny-model")["manifest"]
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        p: sha256(d) for p, d in hub.files.items()}  # hashed here, from the bytes received
    assert manifest["unhashed"] == ["config.json", GGUF]
    assert result.unhashed == ["config.json", GGUF]
    assert sorted(seen.unhashed_files) == ["config.json", GGUF]
    assert registry.verify("tiny-model").intact


def test_without_a_reporter_the_unhashed_files_are_logged(hub, registry, caplog) -> None:
    hub.control(unhashed=["config.json"])
    with caplog.at_level("WARNING", logger="autoglm.pull"):
        result = puller(registry).pull(PullRequest(REPO, endpoint=hub.url, allow_unhashed=True))
    assert result.unhashed == ["config.json"]
    assert [r.unhashed for r in caplog.records if r.name == "autoglm.pull"] == [["config.json"]]
    assert "no hash published for config.json" in caplog.text


def test_the_cli_refuses_unhashed_files_and_takes_the_flag(hub, tmp_path: Path) -> None:
    hub.control(unhashed=["config.json"])
    data = tmp_path / "data"
    r = cli(data, REPO, "--endpoint", hub.url)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "config.json" in last and "--allow-unhashed" in last
    r = cli(data, REPO, "--endpoint", hub.url, "--allow-unhashed")
    assert r.returncode == 0, r.stderr
    assert "warning: no hash published for config.json" in r.stderr
    entry = json.loads((data / "models" / "tiny-model.json").read_text())
    assert entry["manifest"]["unhashed"] == ["config.json"]


# -- the published size bounds what is read ---------------------------------------------

@pytest.mark.parametrize("declare", [True, False], ids=["length-declared", "until-close"])
def test_a_body_longer_than_published_stops_reading_and_keeps_nothing(
        hub, registry, declare) -> None:
    extra = 64 << 20
    size = len(hub.files[GGUF])
    hub.control(faults=[{"kind": "oversize", "extra": extra, "declare": declare,
                         "path": GGUF}])
    seen = Recorder()
    with pytest.raises(IntegrityError, match=f"{GGUF}: the mirror sends more than the "
                                             f"{size:,} bytes the hub publishes"):
        Puller(registry, retries=2, backoff_s=0.01, timeout_s=10, reporter=seen).pull(
            PullRequest(REPO, endpoint=hub.url))
    assert seen.written[GGUF] <= size  # never more than the published size written
    staging = registry.dir / ".incoming" / "tiny-model"
    assert not (staging / GGUF).exists() and not (staging / f"{GGUF}.part").exists()
    with pytest.raises(NotFoundError):
        registry.get("tiny-model")
    time.sleep(0.5)  # the stand-in stops at the first write after the client hung up
    sent = hub.requests(GGUF)[-1]["bytes_sent"]
    assert sent < size + (32 << 20), sent  # reading stopped, the rest was never received
    puller(registry).pull(PullRequest(REPO, endpoint=hub.url))  # an honest mirror again
    assert registry.verify("tiny-model").intact


@pytest.mark.parametrize("path", ["config.json", GGUF])
def test_a_file_shorter_than_published_fails_and_does_not_loop(
        hub, tmp_path: Path, path: str) -> None:
    size = len(hub.files[path])
    hub.control(fake_size={path: size + 1000})
    data = tmp_path / "data"
    r = cli(data, REPO, "--endpoint", hub.url, timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {path}: the mirror sends {size:,} bytes but the hub publishes "
        f"{size + 1000:,}; the download was discarded (if it repeats, the mirror does not "
        "serve the published file)")
    assert not (data / "models" / "tiny-model.json").exists()


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_a_file_listed_without_a_size_is_refused_before_any_byte(hub, registry, source) -> None:
    hub.control(fake_size={"config.json": None})  # listed with "size": null: no bound
    with pytest.raises(HubError, match="without (a )?file sizes?"):
        puller(registry).pull(PullRequest(REPO, source=source, endpoint=hub.url))
    assert hub.requests() == []


# -- the hub token stays with the hub ---------------------------------------------------

@pytest.mark.parametrize("source,env", [("hf", "HF_TOKEN"),
                                        ("modelscope", "MODELSCOPE_API_TOKEN")])
@pytest.mark.parametrize("where", ["other-host", "other-port", "same-origin"])
def test_the_hub_token_never_follows_a_redirect_to_another_origin(
        hub, registry, monkeypatch, source, env, where) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv(env, TOKEN)
    target = {"other-host": f"127.0.0.2:{hub.port}", "other-port": f"127.0.0.1:{hub.other_port}",
              "same-origin": f"127.0.0.1:{hub.port}"}[where]
    hub.control(cdn=target, redirect_all=True)  # every download answers 302 to `target`
    puller(registry).pull(PullRequest(REPO, source=source, endpoint=hub.url))
    assert registry.verify("tiny-model").intact
    seen = hub.seen()
    listing = [s for s in seen if not s["path"].startswith("/_lfs/")
               and s["at"] == f"127.0.0.1:{hub.port}"]
    fetched = [s for s in seen if s["path"].startswith("/_lfs/")]
    assert listing and all(s["authorization"] == f"Bearer {TOKEN}" for s in listing)
    assert len(fetched) == len(hub.files) and all(s["at"] == target for s in fetched)
    expected = f"Bearer {TOKEN}" if where == "same-origin" else None
    assert [s["authorization"] for s in fetched] == [expected] * len(fetched)


@pytest.mark.parametrize("url,keeps", [
    ("http://hub.example/api/models/a/b", True),
    ("http://HUB.example:80/a/b/resolve/c/f", True),  # same origin, spelled otherwise
    ("https://hub.example/a/b/resolve/c/f", False),  # another scheme (httpx keeps it here)
    ("http://hub.example:8080/f", False),  # another port
    ("http://cdn.hub.example/f", False),  # another host, even a subdomain
    ("http://hub.example@evil.example/f", False),  # userinfo: the host is evil.example
])
def test_the_token_goes_to_the_hub_origin_only(url: str, keeps: bool) -> None:
    from autoglm.supply.hubs import HubToken

    hook = HubToken("http://hub.example", TOKEN)
    request = httpx.Request("GET", url, headers={"authorization": f"Bearer {TOKEN}"})
    hook(request)  # as httpx calls it on every hop: the header copied from the last one goes
    assert request.headers.get("authorization") == (f"Bearer {TOKEN}" if keeps else None)
    assert TOKEN not in repr(hook)
