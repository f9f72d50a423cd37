"""What /ask does once the caller is known and admitted: cache, generation, history."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import grpc
from genai.auth.v1 import auth_pb2
from genai.history.v1 import history_pb2
from genai.inference.v1 import inference_pb2
from genai_common.grpc_client import call_metadata
from genai_common.request_id import current_request_id

from genai_gateway.backends import Backends
from genai_gateway.cache import AnswerCache, CachedAnswer, cache_key
from genai_gateway.errors import ApiError, from_grpc
from genai_gateway.settings import GatewaySettings
from genai_gateway.spool import HistoryRecorder

MODEL_SERVICE = "the model service"


@dataclass
class Answer:
    text: str
    source: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    conversation_id: str
    latency_ms: int


class AskService:
    def __init__(
        self, settings: GatewaySettings, backends: Backends, cache: AnswerCache, recorder: HistoryRecorder
    ):
        self.settings = settings
        self.backends = backends
        self.cache = cache
        self.recorder = recorder
        self._model = settings.model
        self._model_lock = asyncio.Lock()

    def check_input(self, prompt: str, max_tokens: int | None) -> int:
        """Refuse what the service won't take, with a message that says why; return max_tokens to use."""
        if not prompt.strip():
            raise ApiError(422, "prompt must not be empty")
        if len(prompt) > self.settings.max_prompt_chars:
            raise ApiError(
                413,
                f"prompt is too long: {len(prompt)} characters, the limit is {self.settings.max_prompt_chars}",
            )
        if max_tokens is None:
            return self.settings.default_max_tokens
        if not 1 <= max_tokens <= self.settings.max_tokens_limit:
            raise ApiError(422, f"max_tokens must be between 1 and {self.settings.max_tokens_limit}")
        return max_tokens

    @property
    def known_model(self) -> str:
        """The model, if already configured or looked up; "" before that."""
        return self._model

    async def model(self) -> str:
        """The model to ask: the configured one, or the adapter's first, looked up once."""
        if self._model:
            return self._model
        async with self._model_lock:
            if not self._model:
                try:
                    listing = await self.backends.adapter.ListModels(
                        inference_pb2.ListModelsRequest(), timeout=10, metadata=call_metadata()
                    )
                except grpc.aio.AioRpcError as exc:
                    raise from_grpc(exc, MODEL_SERVICE) from None
                if not listing.models:
                    raise ApiError(503, "the model server serves no model")
                self._model = listing.models[0].id
        return self._model

    async def ask(self, principal: auth_pb2.Principal, prompt: str, max_tokens: int) -> Answer:
        started = time.perf_counter()
        model = await self.model()
        messages = [{"role": "user", "content": prompt}]
        key = cache_key(model, messages, {"max_tokens": max_tokens})
        cached = await self.cache.get(key)
        if cached is not None:
            source, result = "cache", cached
        else:
            source, result = "model", await self._generate(principal, model, messages, max_tokens)
            # Only complete answers are worth repeating; a cut-off one would be served cut off forever.
            if result.finish_reason in ("stop", "length", ""):
                await self.cache.put(key, result)
        latency_ms = int((time.perf_counter() - started) * 1000)
        conversation_id = await self.recorder.record(
            history_pb2.AppendExchangeRequest(
                owner_id=principal.user_id,
                prompt=prompt,
                response=result.text,
                source=source,
                model=result.model,
                usage=history_pb2.Usage(
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    total_tokens=result.prompt_tokens + result.completion_tokens,
                ),
                latency_ms=latency_ms,
                request_id=current_request_id.get(),
                created_at_ms=int(time.time() * 1000),
                exchange_id=uuid.uuid4().hex,
            )
        )
        return Answer(
            text=result.text,
            source=source,
            model=result.model,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            conversation_id=conversation_id,
            latency_ms=latency_ms,
        )

    async def _generate(
        self, principal: auth_pb2.Principal, model: str, messages: list[dict[str, str]], max_tokens: int
    ) -> CachedAnswer:
        request = inference_pb2.GenerateRequest(
            model=model,
            messages=[inference_pb2.ChatMessage(**m) for m in messages],
            max_tokens=max_tokens,
            user=principal.user_id,
        )
        try:
            response = await self.backends.adapter.Generate(
                request, timeout=self.settings.generate_timeout_s, metadata=call_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, MODEL_SERVICE) from None
        return CachedAnswer(
            text=response.text,
            model=response.model or model,
            prompt_tokens=response.usage.prompt_tokens,
            completion_tokens=response.usage.completion_tokens,
            finish_reason=response.finish_reason,
        )
