"""The Batch API with the unchanged `openai` SDK against a real `autoglm serve`: upload,
create, poll to completion on the bundled model, read the output file."""

from __future__ import annotations

import io
import json
import time

import pytest

from .conftest import MAX_BODY_BYTES
from .support import MODEL, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.model]

LINES = 6


def _input() -> bytes:
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": MODEL, "max_tokens": 4, "temperature": 0,
                       "messages": [{"role": "user", "content": f"Count to {i}."}]}}
             for i in range(LINES)]
    data = "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines).encode()
    assert len(data) < MAX_BODY_BYTES - 400  # the shared server's body limit, with the form
    return data


def test_openai_sdk_runs_a_batch_to_completion(server: ServerProcess) -> None:
    with server.openai() as client:
        f = client.files.create(file=("questions.jsonl", io.BytesIO(_input())), purpose="batch")
        assert (f.object, f.purpose, f.filename) == ("file", "batch", "questions.jsonl")
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"run": "e2e"})
        assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "e2e"}
        deadline = time.monotonic() + 60
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, batch
            time.sleep(0.25)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed", batch
        assert batch.request_counts.model_dump() == {"total": LINES, "completed": LINES,
                                                     "failed": 0}
        assert batch.error_file_id is None and batch.output_file_id
        out = [json.loads(x) for x in client.files.content(batch.output_file_id).text
               .splitlines()]
        ids = [o["custom_id"] for o in out]
        assert sorted(ids) == sorted(f"q{i}" for i in range(LINES))  # each exactly once
        for o in out:
            assert o["error"] is None and o["response"]["status_code"] == 200
            body = o["response"]["body"]
            assert body["object"] == "chat.completion" and body["model"] == MODEL
            assert 0 < body["usage"]["completion_tokens"] <= 4
        listed = client.batches.list(limit=5)
        assert batch.id in [b.id for b in listed.data]
        assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
        assert client.files.delete(f.id).deleted is True
        assert client.batches.retrieve(batch.id).input_file_id == f.id  # the batch stays
