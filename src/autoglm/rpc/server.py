"""The gRPC front end: a thin adapter over the inference service, like ``api/inference.py``.

Each call becomes a ``RequestContext`` (credentials from the ``authorization`` metadata,
project from ``openai-project``) and an ``InferenceRequest`` whose body is the OpenAI JSON
object built from the message (``convert.py``); ``InferenceService.open`` runs every stage
and the engine. Events become OpenAI objects through ``OpenAIEncoder`` (as for REST), then
messages. Errors become gRPC statuses carrying the OpenAI error; a call that ends early
(client cancel, deadline) closes its answer, which frees its slot at once. Every call is
counted in the same metrics and access log as HTTP requests, with an HTTP-equivalent
status.

``RpcServer`` runs the ``autoglm.v1.Inference`` service with the standard health service
and server reflection on ``grpc_port``, TLS as on the HTTP port (``tls.py``).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import grpc
import orjson
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from autoglm.api.errors import to_error
from autoglm.api.middleware import SAFE_REQUEST_ID, sane
from autoglm.api.models import visible_cards
from autoglm.engine.base import Delta, Finished
from autoglm.errors import ConfigError
from autoglm.logs import request_id_var
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.openai_format import OpenAIEncoder
from autoglm.pipeline.request import InferenceRequest, Kind
from autoglm.rpc import convert
from autoglm.rpc.gen.autoglm.v1 import inference_pb2 as pb
from autoglm.rpc.gen.autoglm.v1 import inference_pb2_grpc as pb_grpc
from autoglm.rpc.tls import TlsFront, server_context
from autoglm.settings import Settings

log = logging.getLogger("autoglm.access")
SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name  # autoglm.v1.Inference

_S = grpc.StatusCode
_STATUS = {400: _S.INVALID_ARGUMENT, 401: _S.UNAUTHENTICATED, 403: _S.PERMISSION_DENIED,
           404: _S.NOT_FOUND, 405: _S.UNIMPLEMENTED, 408: _S.DEADLINE_EXCEEDED,
           409: _S.ABORTED, 413: _S.RESOURCE_EXHAUSTED, 429: _S.RESOURCE_EXHAUSTED,
           499: _S.CANCELLED, 500: _S.INTERNAL, 501: _S.UNIMPLEMENTED, 502: _S.UNAVAILABLE,
           503: _S.UNAVAILABLE, 504: _S.DEADLINE_EXCEEDED, 507: _S.RESOURCE_EXHAUSTED}


def _peer_address(peer: str | None, fronted: dict[str, str]) -> str | None:
    """``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` -> the address part; a connection
    from the TLS front (``unix-abstract:NAME``) -> the address of the client it carries,
    so the limit on failed keys holds per client there too."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    if kind == "unix-abstract":
        return fronted.get(rest)
    return None


def status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status for an HTTP status (other 4xx: INVALID_ARGUMENT, else INTERNAL)."""
    code = _STATUS.get(http_status)
    if code is not None:
        return code
    return _S.INVALID_ARGUMENT if 400 <= http_status < 500 else _S.INTERNAL


class _Api(NamedTuple):
    kind: Kind
    body: Callable[..., dict[str, Any]]
    whole: Callable[[dict[str, Any]], Any]
    chunk: Callable[[dict[str, Any]], Any]


_CHAT = _Api("chat", convert.chat_body, convert.chat_response, convert.chat_chunk)
_TEXT = _Api("completion", convert.completion_body, convert.completion_response,
             convert.completion_chunk)


class _Call:
    """One RPC: its request context, and its outcome for the metrics and the access log."""

    __slots__ = ("context", "route", "ctx", "status", "_token")

    def __init__(self, context: grpc.aio.ServicerContext, method: str, rid: str,
                 fronted: dict[str, str]) -> None:
        md: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, str):
                md[key] = value
        given = md.get("x-client-request-id") or md.get("x-request-id")
        theirs = given if given and SAFE_REQUEST_ID.match(given) else None
        self.context = context
        self.route = f"grpc:/{SERVICE}/{method}"
        self.ctx = RequestContext(rid, "grpc", md.get("authorization"),
                                  md.get("openai-project") or None,
                                  client=_peer_address(context.peer(), fronted),
                                  client_request_id=theirs,
                                  purpose=sane(md.get("x-processing-purpose")),
                                  consent_id=sane(md.get("x-consent-id")),
                                  cache=md.get("x-autoglm-cache"))
        self.status = 0
        self._token = request_id_var.set(rid)

    async def begin(self) -> None:
        ids = [("x-request-id", self.ctx.request_id)]
        if self.ctx.client_request_id:
            ids.append(("x-client-request-id", self.ctx.client_request_id))
        await self.context.send_initial_metadata(tuple(ids))

    async def abort(self, exc: Exception) -> NoReturn:
        """End the call with ``exc`` as a status (unexpected errors: logged, INTERNAL)."""
        err = to_error(exc)
        self.status = err.status
        trailers = []
        if err.code:
            trailers.append(("x-openai-error-code", err.code))
        if err.retry_after is not None:
            trailers.append(("retry-after", str(max(1, math.ceil(err.retry_after)))))
        trailers += self.stage_metadata()
        await self.context.abort(status_code(err.status), orjson.dumps(err.to_dict()).decode(),
                                 tuple(trailers))

    def stage_metadata(self) -> list[tuple[str, str]]:
        """What the stages add to an answer (x-ratelimit-*), as trailing metadata: the
        initial metadata went out before the stages ran."""
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.ctx.response_headers]

    def succeeded(self) -> None:
        self.status = 200
        extra = self.stage_metadata()
        if extra:
            self.context.set_trailing_metadata(tuple(extra))

    def end(self, state: Any) -> None:
        elapsed = time.perf_counter() - self.ctx.started
        status = self.status or 499  # cancelled, or past its deadline
        ctx = self.ctx
        state.metrics.observe_request(self.route, ctx.model, status, elapsed)
        identity = ctx.identity
        log.info("request", extra={
            "transport": "grpc", "method": "POST", "path": self.route[len("grpc:"):],
            "status": status, "model": ctx.model or None,
            "principal": identity.id if identity is not None else None,
            "duration_ms": round(elapsed * 1e3, 2),
        })
        request_id_var.reset(self._token)


class InferenceServicer(pb_grpc.InferenceServicer):
    """``state``: the app's state (service, auth, authz, engines, metrics)."""

    def __init__(self, state: Any, fronted: dict[str, str] | None = None) -> None:
        self.state = state
        self.fronted = fronted if fronted is not None else {}  # TlsFront.peers
        # Request ids need to be unique, not secret: a seeded PRNG, no system call each.
        self.ids = random.Random(os.urandom(32))

    def _call(self, context: grpc.aio.ServicerContext, method: str) -> _Call:
        return _Call(context, method, f"req_{self.ids.getrandbits(128):032x}", self.fronted)

    async def ChatCompletion(self, request: pb.ChatCompletionRequest,
                             context: grpc.aio.ServicerContext) -> pb.ChatCompletionResponse:
        return await self._unary(_CHAT, "ChatCompletion", request, context)

    async def Completion(self, request: pb.CompletionRequest,
                         context: grpc.aio.ServicerContext) -> pb.CompletionResponse:
        return await self._unary(_TEXT, "Completion", request, context)

    async def ChatCompletionStream(self, request: pb.ChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> None:
        await self._stream(_CHAT, "ChatCompletionStream", request, context)

    async def CompletionStream(self, request: pb.CompletionRequest,
                               context: grpc.aio.ServicerContext) -> None:
        await self._stream(_TEXT, "CompletionStream", request, context)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        call = self._call(context, "ListModels")
        state = self.state
        try:
            await call.begin()
            ctx = call.ctx
            ctx.identity = await state.auth.authenticate(ctx.credentials, ctx.client)
            cards = await visible_cards(state.engines, state.authz, ctx.identity, ctx.project)
            call.status = 200
            return pb.ListModelsResponse(models=[convert.model(c) for c in cards])
        except Exception as exc:  # noqa: BLE001 - the one place errors become statuses
            await call.abort(exc)
        finally:
            call.end(state)

    async def _unary(self, api: _Api, method: str, request: Any,
                     context: grpc.aio.ServicerContext) -> Any:
        call = self._call(context, method)
        try:
            await call.begin()
            req = InferenceRequest(api.kind, body=api.body(request, stream=False))
            answer = await self.state.service.open(call.ctx, req)
            result = await OpenAIEncoder(req, answer).collect(answer)  # closes the answer
            call.succeeded()
            return api.whole(result)
        except Exception as exc:  # noqa: BLE001 - the one place errors become statuses
            await call.abort(exc)
        finally:
            call.end(self.state)

    async def _stream(self, api: _Api, method: str, request: Any,
                      context: grpc.aio.ServicerContext) -> None:
        """Written with ``context.write`` in this task: a cancelled call is cancelled here,
        and the ``finally`` closes the answer (the slot is free before the next step)."""
        call = self._call(context, method)
        answer = None
        try:
            await call.begin()
            req = InferenceRequest(api.kind, body=api.body(request, stream=True))
            answer = await self.state.service.open(call.ctx, req)
            enc = OpenAIEncoder(req, answer)
            if answer.started.raw is not None:  # an upstream answered a stream with JSON
                for chunk in convert.as_chunks(api.kind, await enc.collect(answer)):
                    await context.write(api.chunk(chunk))
            else:
                async for ev in answer:
                    if isinstance(ev, Delta):
                        chunk = enc.chunk(ev)
                        if chunk is not None:
                            await context.write(api.chunk(chunk))
                    elif isinstance(ev, Finished):
                        await context.write(api.chunk(enc.usage_chunk(ev)))
                        break
            call.succeeded()
        except Exception as exc:  # noqa: BLE001 - the one place errors become statuses
            await call.abort(exc)
        finally:
            if answer is not None:
                await answer.aclose()
            call.end(self.state)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class RpcServer:
    """The gRPC listener of one app: Inference, health (grpc.health.v1) and reflection."""

    def __init__(self, state: Any, settings: Settings, run_dir: Path) -> None:
        self.state = state
        self.settings = settings
        self.run_dir = run_dir
        self.port = 0
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.front: TlsFront | None = None

    async def start(self) -> None:
        s = self.settings
        if s.grpc_port is None:
            raise ConfigError("the gRPC server needs grpc_port")
        server = self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", s.max_body_bytes),
            ("grpc.so_reuseport", 1),  # several gateway processes may share the port
        ])
        fronted: dict[str, str] = {}  # the TLS front's connections -> client addresses
        pb_grpc.add_InferenceServicer_to_server(InferenceServicer(self.state, fronted), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), server)
        where = _address(s.host, s.grpc_port)
        try:
            if s.ssl_certfile is not None and s.ssl_keyfile is not None:
                backend = self.run_dir / "grpc.sock"
                server.add_insecure_port(f"unix:{backend}")
                self.front = TlsFront(server_context(s.ssl_certfile, s.ssl_keyfile,
                                                     s.tls_allow_1_2), backend, fronted)
                await server.start()
                self.port = await self.front.start(s.host, s.grpc_port)
            else:
                self.port = server.add_insecure_port(where)
                await server.start()
        except (RuntimeError, OSError) as exc:
            await server.stop(None)
            raise ConfigError(f"cannot serve gRPC on {where}: {exc}") from exc
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING, no new connections, in-flight calls get ``grace`` seconds. Never
        raises: the engines are closed after it, whatever happens here."""
        try:
            await self.health.enter_graceful_shutdown()
            if self.front is not None:
                self.front.stop_accepting()
            if self.server is not None:
                await self.server.stop(grace)
            if self.front is not None:
                await self.front.close()
        except Exception:  # noqa: BLE001 - shutting down; say what failed and go on
            logging.getLogger("autoglm.rpc").exception("the gRPC server did not stop cleanly")
