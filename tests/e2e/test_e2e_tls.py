"""TLS termination in the gateway: 1.3 only by default, 1.2 only when allowed."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .support import MODEL, ServerProcess

pytestmark = pytest.mark.e2e


def _ctx(cert: Path, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    if max_version is not None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = max_version
    return ctx


def _handshake(srv: ServerProcess, ctx: ssl.SSLContext) -> str:
    """Open a TLS connection to the server; returns the negotiated protocol version."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version() or ""


@pytest.fixture(scope="module")
def tls_server(start_server, stop_server, tls_cert) -> Iterator[ServerProcess]:
    srv = start_server("tls13", tls=tls_cert, verify=_ctx(tls_cert[0]))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def tls12_server(start_server, stop_server, tls_cert) -> Iterator[ServerProcess]:
    srv = start_server("tls12", tls=tls_cert, verify=_ctx(tls_cert[0]),
                       env={"AUTOGLM_TLS_ALLOW_1_2": "true"})
    yield srv
    stop_server(srv)


def test_https_with_tls13(tls_server: ServerProcess, tls_cert) -> None:
    cert = tls_cert[0]
    assert tls_server.base_url.startswith("https://")
    with tls_server.client(auth=True, verify=_ctx(cert)) as http:
        r = http.get("/v1/models")
        assert r.status_code == 200, r.text
        assert [m["id"] for m in r.json()["data"]] == [MODEL]
        tls = r.extensions["network_stream"].get_extra_info("ssl_object")
        assert tls.version() == "TLSv1.3"
        assert r.headers["strict-transport-security"].startswith("max-age=")
    assert _handshake(tls_server, _ctx(cert)) == "TLSv1.3"
    # The openai SDK over https, trusting only our certificate.
    with tls_server.openai(http_client=openai.DefaultHttpxClient(
        verify=_ctx(cert), trust_env=False)) as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}], temperature=0,
            max_tokens=4,
        )
    assert answer.usage.completion_tokens >= 1


def test_untrusted_certificate_is_rejected_by_client(tls_server: ServerProcess) -> None:
    # Proves the server really presents our self-signed certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls_server, ssl.create_default_context())


def test_plain_http_is_not_served_on_the_tls_port(tls_server: ServerProcess) -> None:
    with httpx.Client(timeout=5, trust_env=False) as http:
        with pytest.raises(httpx.HTTPError):
            r = http.get(f"http://127.0.0.1:{tls_server.port}/healthz")
            r.raise_for_status()


def test_tls12_client_is_refused_by_default(tls_server: ServerProcess, tls_cert) -> None:
    ctx12 = _ctx(tls_cert[0], max_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        _handshake(tls_server, ctx12)
    with tls_server.client(verify=ctx12) as http:
        with pytest.raises(httpx.ConnectError):
            http.get("/healthz")
    # The server is unharmed by the failed handshakes.
    with tls_server.client() as http:
        assert http.get("/healthz").status_code == 200


def test_tls12_accepted_when_allowed(tls12_server: ServerProcess, tls_cert) -> None:
    ctx12 = _ctx(tls_cert[0], max_version=ssl.TLSVersion.TLSv1_2)
    assert _handshake(tls12_server, ctx12) == "TLSv1.2"
    with tls12_server.client(auth=True, verify=ctx12) as http:
        r = http.get("/v1/models")
        assert r.status_code == 200, r.text
        assert r.extensions["network_stream"].get_extra_info("ssl_object").version() == "TLSv1.2"
    # TLS 1.3 clients still get TLS 1.3.
    assert _handshake(tls12_server, _ctx(tls_cert[0])) == "TLSv1.3"
