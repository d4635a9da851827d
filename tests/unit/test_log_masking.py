"""Every log line passes the PII guard, whatever wrote it: a message, extra fields, a
library's line, a traceback, the access log's fast path."""

from __future__ import annotations

import io
import logging

from autoglm.logs import AccessLog, BatchingStreamHandler, JsonFormatter

MOBILE, ID, MAIL = "13812345678", "11010519491231002X", "li.lei@example.com"


def _capture() -> tuple[io.StringIO, BatchingStreamHandler]:
    out = io.StringIO()
    handler = BatchingStreamHandler(out)
    handler.setFormatter(JsonFormatter("gateway"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return out, handler


def test_no_log_line_holds_a_raw_value() -> None:
    out, handler = _capture()
    try:
        logging.getLogger("autoglm.test").info("caller %s wrote from %s", MOBILE, MAIL,
                                                extra={"subject": ID, "client": "10.20.30.40"})
        logging.getLogger("some.library").warning(f"id={ID}")
        try:
            raise ValueError(f"bad card holder {MOBILE}")
        except ValueError:
            logging.getLogger("autoglm.test").exception("failed")
        AccessLog().write({"client": "192.168.7.9", "path": f"/v1/x?phone={MOBILE}"})
        handler.flush()
    finally:
        logging.getLogger().handlers[:] = []
    text = out.getvalue()
    assert text.count("\n") == 4
    for raw in (MOBILE, ID, MAIL, "10.20.30.40", "192.168.7.9"):
        assert raw not in text, raw
    assert "138****5678" in text and "bad card holder" in text
