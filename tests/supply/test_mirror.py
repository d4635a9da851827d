"""The internal mirror: node A (`autoglm serve --mirror`) publishes its registry's verified
models over the Hugging Face API; node B pulls one through a connection that is cut, resumes,
checks A's signature and serves the model. The official client reads the mirror too."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autoglm.api.app import create_app
from autoglm.api.routes import CONSOLE_ROUTES, MIRROR_ROUTES, ROUTES, RouteTable
from autoglm.engine.catalog import embedded_model_path
from autoglm.supply import signing, trust
from autoglm.supply.mirror import MANIFEST_FILE, SIGNATURE_FILE
from autoglm.supply.pull import Puller, PullRequest
from autoglm.supply.registry import Registry
from tests.conftest import make_settings
from tests.e2e.support import AUTOGLM, ServerProcess, base_env
from tests.supply.cutproxy import CutProxy
from tests.supply.test_signing import keypair

pytestmark = [pytest.mark.e2e, pytest.mark.model]

GGUF = "smol.Q4_1.gguf"
CONFIG = b'{"architectures": ["LlamaForCausalLM"]}\n'


@pytest.fixture(scope="module")
def node_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Node A: a signed directory model (smol), a signed one-file model (solo), a model whose
    last verification failed (broken), and two keys: one narrowed to model.pull, one
    without it."""
    work = tmp_path_factory.mktemp("node-a")
    reg = Registry(work / "data")
    model = work / "src" / "smol"
    model.mkdir(parents=True)
    shutil.copyfile(embedded_model_path(), model / GGUF)
    (model / "config.json").write_bytes(CONFIG)
    reg.add(model, "smol")
    reg.add(embedded_model_path(), "solo")
    priv, pub = keypair(work, "ops")
    signing.sign(reg, "smol", priv)
    signing.sign(reg, "solo", priv)
    broken = work / "src" / "broken"
    broken.mkdir()
    (broken / "weights.bin").write_bytes(b"\0" * 4096)
    reg.add(broken, "broken")
    (broken / "weights.bin").write_bytes(b"\1" * 4096)  # same size: only a full check sees it
    assert not reg.verify("broken").intact
    server = ServerProcess(work, args=["--mirror"], name="node-a").start()
    try:
        with server.client(auth=True) as http:
            def key(actions: list[str]) -> str:
                r = http.post("/admin/v1/principals/prn_platform_admin/keys",
                              json={"name": "+".join(actions), "actions": actions})
                assert r.status_code == 201, r.text
                return r.json()["key"]

            yield {"server": server, "reg": reg, "pub": pub, "model": model,
                   "pull_key": key(["model.pull"]), "list_key": key(["model.list"])}
    finally:
        server.stop()


def _cli(data: Path, key: str, *args: str) -> subprocess.CompletedProcess:
    env = base_env(AUTOGLM_DATA_DIR=str(data), HF_TOKEN=key, AUTOGLM_PULL_RETRIES="0",
                   AUTOGLM_PULL_BACKOFF_S="0.01")
    return subprocess.run([str(AUTOGLM), *args], env=env, text=True, capture_output=True,
                          check=False, timeout=300)


def test_node_b_pulls_through_a_cut_resumes_verifies_a_signature_and_serves(
        node_a: dict, tmp_path: Path) -> None:
    a, key = node_a["server"], node_a["pull_key"]
    b = tmp_path / "node-b"
    proxy = CutProxy(a.port)
    try:
        proxy.arm(20 << 20)  # mid-GGUF: the small files come first
        pull = ("model", "pull", "autoglm/smol", "--endpoint", proxy.url, "--json")
        first = _cli(b / "data", key, *pull)
        assert first.returncode != 0 and proxy.cuts == 1, first.stderr
        part = b / "data" / "models" / ".incoming" / "smol" / f"{GGUF}.part"
        kept = part.stat().st_size
        assert 0 < kept < (node_a["model"] / GGUF).stat().st_size
        assert not (b / "data" / "models" / "smol.json").exists()  # nothing registered yet

        second = _cli(b / "data", key, *pull)
        assert second.returncode == 0, second.stderr
    finally:
        proxy.close()
    out = json.loads(second.stdout)
    published = httpx.get(f"{a.base_url}/api/models/autoglm/smol",
                          headers={"Authorization": f"Bearer {key}"}).json()["siblings"]
    assert out["resumed"] >= kept
    assert out["fetched"] + out["resumed"] == sum(s["size"] for s in published)
    assert any(GGUF in r and f"range: bytes={kept}-" in r.lower() for r in proxy.requests)

    # B's model is A's, file for file; the mirror's extras are not model files
    entry = Registry(b / "data").get("smol")
    mine = node_a["reg"].get("smol")["manifest"]["files"]
    assert entry["manifest"]["files"] == mine
    assert entry["source"] == "hf:autoglm/smol" and len(entry["revision"]) == 40
    root = Path(entry["path"])
    assert sorted(p.name for p in root.iterdir()) == ["config.json", GGUF]
    # A's signature came along and verifies on B with A's public key
    pub = node_a["pub"]
    verify = _cli(b / "data", key, "model", "verify", "smol", "--pubkey", str(pub), "--json")
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["signed_by"] == signing.fingerprint_public(pub.read_bytes())

    # ...and B serves it under model_trust: signed
    conf = b / "b.yaml"
    conf.write_text(f"model: smol\nmodel_trust: signed\ntrusted_keys: ['{pub}']\n")
    server_b = ServerProcess(b, args=["--config", str(conf)], name="node-b").start()
    try:
        with server_b.client(auth=True, timeout=120) as http:
            card = http.get("/v1/models/smol").json()
            assert card["verification"]["signed_by"] == signing.fingerprint_public(
                pub.read_bytes())
            r = http.post("/v1/chat/completions", json={
                "model": "smol", "max_tokens": 4,
                "messages": [{"role": "user", "content": "Say hi"}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"]
    finally:
        server_b.stop()


def test_huggingface_hub_snapshot_download_reads_the_mirror(
        node_a: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    out = Path(huggingface_hub.snapshot_download(
        "autoglm/smol", endpoint=node_a["server"].base_url, token=node_a["pull_key"],
        local_dir=tmp_path / "dl"))
    model = node_a["model"]
    assert (out / "config.json").read_bytes() == CONFIG
    # the signature and the manifest are published beside the files, byte for byte
    assert (out / SIGNATURE_FILE).read_bytes() == signing.signature_path(
        node_a["reg"], "smol").read_bytes()
    assert json.loads((out / MANIFEST_FILE).read_text())["manifest"]["files"] == \
        node_a["reg"].get("smol")["manifest"]["files"]
    assert (out / GGUF).stat().st_size == (model / GGUF).stat().st_size
    assert (out / GGUF).read_bytes() == (model / GGUF).read_bytes()
    # one file, as hf_hub_download does it (a HEAD for the metadata, then the bytes)
    one = huggingface_hub.hf_hub_download("autoglm/smol", "config.json",
                                          endpoint=node_a["server"].base_url,
                                          token=node_a["pull_key"], cache_dir=tmp_path / "c")
    assert Path(one).read_bytes() == CONFIG


def test_keys_without_model_pull_are_refused_and_unverified_models_are_not_published(
        node_a: dict) -> None:
    base = node_a["server"].base_url

    def get(path: str, key: str | None, **headers: str) -> httpx.Response:
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.get(base + path, headers=headers, timeout=30)

    urls = ("/api/models", "/api/models/autoglm/smol", "/api/models/autoglm/smol/tree/main",
            f"/autoglm/smol/resolve/main/{GGUF}")
    for url in urls:
        assert get(url, None).status_code == 401
        assert get(url, node_a["list_key"]).status_code == 403
    key = node_a["pull_key"]
    assert [m["id"] for m in get("/api/models", key).json()] == ["autoglm/smol", "autoglm/solo"]
    for url in ("/api/models/autoglm/broken", "/autoglm/broken/resolve/main/weights.bin",
                "/api/models/autoglm/nothing"):
        r = get(url, key)
        assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound"
    r = get("/api/models/autoglm/smol/revision/v9", key)
    assert r.status_code == 404 and r.headers["x-error-code"] == "RevisionNotFound"
    r = get("/autoglm/smol/resolve/main/nope.bin", key)
    assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"
    # the commit names the revision too, and a range comes back as 206
    commit = get("/api/models/autoglm/smol", key).json()["sha"]
    r = get(f"/autoglm/smol/resolve/{commit}/config.json", key)
    assert r.content == CONFIG and r.headers["x-repo-commit"] == commit
    r = get(f"/autoglm/smol/resolve/main/{GGUF}", key, Range="bytes=10-19")
    assert r.status_code == 206 and r.content == (node_a["model"] / GGUF).read_bytes()[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{(node_a['model'] / GGUF).stat().st_size}"


def test_a_one_file_model_is_pulled_as_one_file_and_its_signature_holds(
        node_a: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", node_a["pull_key"])
    data = tmp_path / "data"
    reg = Registry(data)
    Puller(reg, retries=0, timeout_s=60).pull(PullRequest(
        "autoglm/solo", endpoint=node_a["server"].base_url))
    root = Path(reg.get("solo")["path"])
    assert root.is_file() and root.name == embedded_model_path().name
    state = trust.check(root, "signed", data, [node_a["pub"]])
    assert state["signed_by"] == signing.fingerprint_public(node_a["pub"].read_bytes())


def test_the_mirror_routes_exist_only_when_it_is_on_and_all_need_model_pull(
        tmp_path: Path) -> None:
    assert all(r.action == "model.pull" for r in MIRROR_ROUTES)
    for on in (False, True):
        app = create_app(make_settings(tmp_path / f"d{on}", mirror=on), engines={})
        served = {(m, r.path) for r in app.routes for m in getattr(r, "methods", None) or ()
                  if m != "HEAD"}
        mirror = {(r.method, r.path) for r in MIRROR_ROUTES}
        console = {(r.method, r.path) for r in CONSOLE_ROUTES}
        assert served == ({(r.method, r.path) for r in ROUTES} | console
                          | (mirror if on else set()))
    table = RouteTable(ROUTES + MIRROR_ROUTES)
    assert table.edge_authenticated("/api/models/autoglm/x")
    assert table.edge_authenticated("/autoglm/x/resolve/main/f.gguf")
    assert table.label("/autoglm/x/resolve/main/a/b.gguf") == \
        "/autoglm/{name}/resolve/{revision}/{path}"
