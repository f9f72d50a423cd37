"""genai.assistant.v1.Assistant: the public gRPC API, with the same auth, limits, cache and history as HTTP."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from genai.assistant.v1 import assistant_pb2, assistant_pb2_grpc
from genai.auth.v1 import auth_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as server_reflection

from genai_common.grpc_server import ServiceInterceptor
from genai_common.request_id import current_request_id
from genai_gateway.clients import AuthClient
from genai_gateway.errors import ApiError
from genai_gateway.pipeline import Answer, AskPipeline, Delta, Generation, Ticket

logger = logging.getLogger(__name__)

SERVICE_NAME = assistant_pb2.DESCRIPTOR.services_by_name["Assistant"].full_name


async def _abort(context: grpc.aio.ServicerContext, error: ApiError) -> NoReturn:
    # The request id, as HTTP error bodies carry it: what to look up in the logs of every hop.
    trailing = [("x-request-id", current_request_id.get())]
    retry_after = error.headers.get("Retry-After")
    if retry_after:
        trailing.append(("retry-after", retry_after))
    context.set_trailing_metadata(tuple(trailing))
    await context.abort(error.grpc_code, error.message)
    raise AssertionError("unreachable: abort raises")


def _usage(answer: Answer) -> assistant_pb2.Usage:
    return assistant_pb2.Usage(
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        total_tokens=answer.total_tokens,
    )


def _failures_answered(
    method: Callable[[AssistantServicer, Any, grpc.aio.ServicerContext], Awaitable[Any]],
) -> Callable[[AssistantServicer, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """A unary method whose ApiErrors are answered with their gRPC status."""

    @functools.wraps(method)
    async def answered(self: AssistantServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except ApiError as error:
            await _abort(context, error)

    return answered


class AssistantServicer(assistant_pb2_grpc.AssistantServicer):
    """Other services' way in. Credentials: metadata "authorization: Bearer <token or API key>"."""

    def __init__(self, pipeline: AskPipeline, auth: AuthClient) -> None:
        self.pipeline = pipeline
        self.auth = auth

    async def _principal(self, context: grpc.aio.ServicerContext) -> auth_pb2.Principal:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                scheme, _, rest = str(value).partition(" ")
                if scheme.lower() == "bearer":
                    token = rest.strip()
        if not token:
            raise ApiError(401, "missing credentials: send 'authorization: Bearer <token>' metadata")
        return await self.auth.authenticate(token)

    async def _ticket(self, request: assistant_pb2.AskRequest, context: grpc.aio.ServicerContext) -> Ticket:
        principal = await self._principal(context)
        generation = Generation(
            messages=[{"role": "user", "content": request.prompt}],
            model=request.model,
            # proto3 has no null: 0 means the server's default.
            max_tokens=request.max_tokens or None,
            temperature=request.temperature if request.HasField("temperature") else None,
            top_p=request.top_p if request.HasField("top_p") else None,
            conversation_id=request.conversation_id,
            no_cache=request.no_cache,
            input_name="prompt",
        )
        return await self.pipeline.admit(principal, generation)

    @_failures_answered
    async def Ask(
        self, request: assistant_pb2.AskRequest, context: grpc.aio.ServicerContext
    ) -> assistant_pb2.AskResponse:
        answer = await (await self._ticket(request, context)).answer()
        return assistant_pb2.AskResponse(
            response=answer.text,
            source=answer.source,
            model=answer.model,
            usage=_usage(answer),
            conversation_id=answer.conversation_id,
            request_id=current_request_id.get(),
            finish_reason=answer.finish_reason,
        )

    async def AskStream(
        self, request: assistant_pb2.AskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[assistant_pb2.AskChunk]:
        try:
            async for item in (await self._ticket(request, context)).events():
                if isinstance(item, Delta):
                    if item.text:
                        yield assistant_pb2.AskChunk(text=item.text)
                elif isinstance(item, Answer):
                    yield assistant_pb2.AskChunk(
                        done=True,
                        source=item.source,
                        model=item.model,
                        usage=_usage(item),
                        conversation_id=item.conversation_id,
                        request_id=current_request_id.get(),
                        finish_reason=item.finish_reason,
                    )
        except ApiError as error:
            await _abort(context, error)

    @_failures_answered
    async def ListModels(
        self, request: assistant_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> assistant_pb2.ListModelsResponse:
        await self._principal(context)
        models = await self.pipeline.models()
        return assistant_pb2.ListModelsResponse(
            models=[assistant_pb2.Model(id=m.id, owned_by=m.owned_by) for m in models]
        )


async def start_server(
    pipeline: AskPipeline, auth: AuthClient, host: str, port: int, *, reflection: bool = True
) -> grpc.aio.Server:
    server = grpc.aio.server(interceptors=[ServiceInterceptor()])
    assistant_pb2_grpc.add_AssistantServicer_to_server(AssistantServicer(pipeline, auth), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection:
        server_reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                server_reflection.SERVICE_NAME,
            ),
            server,
        )
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise RuntimeError(f"cannot listen on {host}:{port} for the gRPC API")
    await server.start()
    for name in (SERVICE_NAME, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("public gRPC API listening on %s:%s", host, port)
    return server
