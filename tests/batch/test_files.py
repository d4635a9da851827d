"""``/v1/files``: upload checked line by line, tenant-scoped reads, content, delete."""

from __future__ import annotations

import os
import stat

import orjson
import pytest

from tests.batch.conftest import CHAT, auth, jsonl, line, upload

pytestmark = pytest.mark.model

GOOD = line("a")


@pytest.mark.parametrize(("lines", "bad", "words"), [
    ([GOOD, b"{not json"], 2, "not valid JSON"),
    ([GOOD, [1, 2]], 2, "JSON object"),
    ([GOOD, line("a")], 2, "custom_id 'a' was used"),
    ([GOOD, {**line("b"), "custom_id": 7}], 2, "custom_id must be"),
    ([GOOD, {**line("b"), "method": "GET"}], 2, "method must be"),
    ([GOOD, line("b", url="/v1/embeddings")], 2, "url must be one of"),
    ([GOOD, line("b", url="/v1/completions")], 2, "differs from the first line"),
    ([GOOD, GOOD | {"custom_id": "b", "body": []}], 2, "body must be a JSON object"),
    ([GOOD, line("b", model="")], 2, "body.model"),
    ([GOOD, line("b", stream=None) | {"body": {**GOOD["body"], "stream": True}}], 2,
     "stream"),
    ([b"", GOOD, b"   ", b"oops"], 4, "not valid JSON"),  # blank lines count, are skipped
])
async def test_a_bad_line_is_a_400_naming_it(world, lines, bad, words) -> None:
    r = await upload(world["http"], world["keys"]["member"], jsonl(*lines))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["message"].startswith(f"line {bad} of the file"), err
    assert words in err["message"], err
    assert (err["param"], err["code"]) == ("file", "invalid_batch_line")


async def test_upload_limits_and_form(world) -> None:
    http, key = world["http"], world["keys"]["member"]
    empty = await upload(http, key, b"\n\n")
    assert empty.status_code == 400 and "no requests" in empty.json()["error"]["message"]
    purpose = await upload(http, key, jsonl(GOOD), purpose="fine-tune")
    assert purpose.status_code == 400 and purpose.json()["error"]["param"] == "purpose"
    nofile = await http.post("/v1/files", headers=auth(key), data={"purpose": "batch"})
    assert nofile.status_code == 400 and nofile.json()["error"]["param"] == "file"
    notform = await http.post("/v1/files", headers=auth(key), json={"purpose": "batch"})
    assert notform.status_code == 400
    system = world["client"].app.state.batch
    lines, system.max_lines = system.max_lines, 3
    try:
        many = await upload(http, key, jsonl(*(line(f"c{i}") for i in range(4))))
    finally:
        system.max_lines = lines
    assert many.status_code == 400 and "more than 3 requests" in many.json()["error"]["message"]
    size, system.max_file_bytes = system.max_file_bytes, 1024
    try:
        big = await upload(http, key, jsonl(*(line(f"d{i}") for i in range(20))))
    finally:
        system.max_file_bytes = size
    assert big.status_code == 413, big.text
    assert os.listdir(system.files.root) == [] or all(
        not n.endswith(".part") for n in os.listdir(system.files.root))


async def test_file_round_trip(world) -> None:
    http, key = world["http"], world["keys"]["member"]
    data = jsonl(line("x"), line("y"))
    r = await upload(http, key, data)
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["object"] == "file" and f["id"].startswith("file_")
    assert (f["bytes"], f["filename"], f["purpose"], f["status"]) == (
        len(data), "input.jsonl", "batch", "processed")
    path = world["client"].app.state.batch.files.path(f["id"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (await http.get(f"/v1/files/{f['id']}", headers=auth(key))).json() == f
    content = await http.get(f"/v1/files/{f['id']}/content", headers=auth(key))
    assert content.status_code == 200 and content.content == data
    listed = (await http.get("/v1/files", headers=auth(key))).json()
    assert listed["object"] == "list" and f["id"] in [x["id"] for x in listed["data"]]
    assert (await upload(http, key, data)).status_code == 200  # a second one
    one = (await http.get("/v1/files?limit=1&order=asc", headers=auth(key))).json()
    assert len(one["data"]) == 1 and one["has_more"] is True
    nxt = (await http.get(f"/v1/files?limit=100&order=asc&after={one['last_id']}",
                          headers=auth(key))).json()
    assert one["last_id"] not in [x["id"] for x in nxt["data"]]
    gone = await http.delete(f"/v1/files/{f['id']}", headers=auth(key))
    assert gone.json() == {"id": f["id"], "object": "file", "deleted": True}
    assert not path.exists()
    assert (await http.get(f"/v1/files/{f['id']}", headers=auth(key))).status_code == 404


async def test_another_tenants_file_is_a_404(world) -> None:
    http, k = world["http"], world["keys"]
    mine = (await upload(http, k["member"], jsonl(GOOD))).json()["id"]
    fake = mine[:-4] + ("0000" if not mine.endswith("0000") else "1111")
    for path in (f"/v1/files/{mine}", f"/v1/files/{mine}/content"):
        theirs = await http.get(path, headers=auth(k["other"]))
        nowhere = await http.get(path.replace(mine, fake), headers=auth(k["other"]))
        assert theirs.status_code == nowhere.status_code == 404
        assert theirs.json() == nowhere.json()
    assert (await http.delete(f"/v1/files/{mine}", headers=auth(k["other"]))).status_code == 404
    listed = (await http.get("/v1/files", headers=auth(k["other"]))).json()["data"]
    assert mine not in [f["id"] for f in listed]
    # the same tenant: its admin sees it; a guest of the project may not read files
    assert (await http.get(f"/v1/files/{mine}", headers=auth(k["tadmin"]))).status_code == 200
    assert (await http.get(f"/v1/files/{mine}", headers=auth(k["guest"]))).status_code == 404
    assert (await upload(http, k["guest"], jsonl(GOOD))).status_code == 403
    # naming another tenant's project is the same 404 as naming none that exists
    other = await upload(http, k["member"], jsonl(GOOD), project=world["ids"]["hospital/open"])
    none = await upload(http, k["member"], jsonl(GOOD), project="prj_doesnotexist")
    assert other.status_code == none.status_code == 404
    # the platform admin may read it
    assert (await world["client"].get(f"/v1/files/{mine}")).status_code == 200
    assert orjson.loads((await http.get(f"/v1/files/{mine}/content",
                                        headers=auth(k["member"]))).content)["url"] == CHAT


async def test_uploads_have_their_own_body_limit(tmp_path) -> None:  # noqa: ANN001
    """POST /v1/files takes batch_file_max_bytes, not the (smaller) max_body_bytes of
    other requests; beyond its own limit it is a 413 too."""
    from tests.conftest import make_settings, start_app

    settings = make_settings(tmp_path / "data", max_body_bytes=4096,
                             batch_file_max_bytes=64 * 1024)
    line = ('{"custom_id": "c%d", "method": "POST", "url": "/v1/chat/completions", '
            '"body": {"model": "m", "messages": [{"role": "user", "content": "%s"}]}}\n')
    data = "".join(line % (i, "x" * 100) for i in range(100)).encode()  # about 17 KiB
    async for client in start_app(settings):
        ok = await client.http.post("/v1/files", headers=client.auth, data={"purpose": "batch"},
                                    files={"file": ("in.jsonl", data)})
        assert ok.status_code == 200, ok.text
        big = await client.http.post("/v1/files", headers=client.auth,
                                     data={"purpose": "batch"},
                                     files={"file": ("in.jsonl", data * 8)})
        assert big.status_code == 413
        other = await client.post("/v1/chat/completions", {"model": "m", "messages": [
            {"role": "user", "content": "x" * 5000}]})
        assert other.status_code == 413  # the rest keep max_body_bytes
