"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

Shapes follow the OpenAI API as vLLM serves it, so the official SDK and existing tools work unchanged.
vLLM's extra sampling fields are passed on; fields this server does not know are ignored. Answers carry
two extra fields, `source` ("model" or "cache") and `conversation_id`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from genai_common.request_id import current_request_id
from genai_gateway.errors import ApiError
from genai_gateway.responses import Encoder, serve, usage_dict
from genai_gateway.security import CurrentUser
from genai_gateway.serving import Answer, AskService, Delta, Generation
from genai_gateway.streaming import sse

router = APIRouter(prefix="/v1", tags=["openai"])

# vLLM's sampling fields beyond OpenAI's, passed to the upstream as given.
VLLM_EXTRA_FIELDS = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "length_penalty",
    "min_tokens",
    "ignore_eos",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "stop_token_ids",
)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        if any(part.type != "text" for part in self.content):
            raise ApiError(400, "only text content is supported", code="unsupported_content")
        return "".join(part.text or "" for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """What chat and completion requests share. Unknown fields are ignored, as OpenAI clients expect."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field("", max_length=256)
    max_tokens: int | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # This server's own: continue a conversation from history.
    conversation_id: str | None = Field(None, max_length=64)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    stop_token_ids: list[int] | None = None

    def generation(self, service: AskService, max_tokens: int | None, **fields: Any) -> Generation:
        if self.n != 1:
            raise ApiError(400, "only n=1 is supported", code="unsupported_parameter")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "at most 4 stop sequences", code="invalid_stop")
        return Generation(
            model=self.model,
            max_tokens=service.check_max_tokens(max_tokens),
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stops,
            seed=self.seed,
            extra={
                name: getattr(self, name) for name in VLLM_EXTRA_FIELDS if getattr(self, name) is not None
            },
            conversation_id=self.conversation_id or "",
            **fields,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]


def _chat_messages(service: AskService, body: ChatCompletionRequest) -> list[dict[str, str]]:
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    ]
    total = sum(len(m["content"]) for m in messages)
    limit = service.settings.max_prompt_chars
    if total > limit:
        raise ApiError(413, f"messages are too long: {total} characters, the limit is {limit}")
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise ApiError(422, "messages must include a non-empty user message")
    return messages


def _extras(answer: Answer) -> dict[str, Any]:
    return {"source": answer.source, "conversation_id": answer.conversation_id or None}


class ChatEncoder(Encoder):
    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{current_request_id.get()}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]], **more: Any) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **more,
            }
        )

    def start(self) -> list[bytes]:
        delta = {"role": "assistant", "content": ""}
        return [self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])]

    def delta(self, delta: Delta) -> bytes:
        return self._chunk(
            [{"index": 0, "delta": {"content": delta.text}, "logprobs": None, "finish_reason": None}]
        )

    def final(self, answer: Answer) -> list[bytes]:
        finish = answer.finish_reason or "stop"
        out = [
            self._chunk(
                [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}], **_extras(answer)
            )
        ]
        if self.include_usage:
            out.append(self._chunk([], usage=usage_dict(answer)))
        return out


class CompletionEncoder(ChatEncoder):
    def _chunk(self, choices: list[dict[str, Any]], **more: Any) -> bytes:
        return sse(
            {
                "id": self.id.replace("chatcmpl-", "cmpl-"),
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **more,
            }
        )

    def start(self) -> list[bytes]:
        return []

    def delta(self, delta: Delta) -> bytes:
        return self._chunk([{"index": 0, "text": delta.text, "logprobs": None, "finish_reason": None}])

    def final(self, answer: Answer) -> list[bytes]:
        finish = answer.finish_reason or "stop"
        out = [
            self._chunk(
                [{"index": 0, "text": "", "logprobs": None, "finish_reason": finish}], **_extras(answer)
            )
        ]
        if self.include_usage:
            out.append(self._chunk([], usage=usage_dict(answer)))
        return out


def _whole_chat(answer: Answer) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{current_request_id.get()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "logprobs": None,
                "finish_reason": answer.finish_reason or "stop",
            }
        ],
        "usage": usage_dict(answer),
        **_extras(answer),
    }


def _whole_completion(answer: Answer) -> dict[str, Any]:
    return {
        "id": f"cmpl-{current_request_id.get()}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "text": answer.text,
                "logprobs": None,
                "finish_reason": answer.finish_reason or "stop",
            }
        ],
        "usage": usage_dict(answer),
        **_extras(answer),
    }


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, response: Response, principal: CurrentUser
) -> Any:
    service: AskService = request.app.state.ask_service
    generation = body.generation(
        service, body.max_completion_tokens or body.max_tokens, messages=_chat_messages(service, body)
    )
    return await serve(
        generation,
        stream=body.stream,
        encoder=lambda model: ChatEncoder(model, body.include_usage),
        whole=_whole_chat,
        request=request,
        response=response,
        principal=principal,
    )


@router.post("/completions")
async def completions(
    body: CompletionRequest, request: Request, response: Response, principal: CurrentUser
) -> Any:
    service: AskService = request.app.state.ask_service
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise ApiError(400, "only one prompt per request is supported", code="unsupported_parameter")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    service.check_prompt(prompt)
    generation = body.generation(service, body.max_tokens, prompt=prompt)
    return await serve(
        generation,
        stream=body.stream,
        encoder=lambda model: CompletionEncoder(model, body.include_usage),
        whole=_whole_completion,
        request=request,
        response=response,
        principal=principal,
    )


@router.get("/models")
async def models(request: Request, _: CurrentUser) -> dict[str, Any]:
    served = await request.app.state.ask_service.models()
    return {
        "object": "list",
        "data": [
            {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by or "genai"}
            for m in served
        ],
    }
