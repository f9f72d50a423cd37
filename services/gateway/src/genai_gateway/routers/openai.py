"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

Shapes follow the OpenAI API as vLLM serves it, so the official SDK and existing tools work unchanged.
vLLM's extra sampling fields, structured output (`response_format`) and tools (`tools`, `tool_choice`) are
passed on to the model server; a field this server cannot honour is refused with a 400 that names it,
never silently ignored. Answers carry two extra fields, `source` ("model" or "cache") and `conversation_id`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from genai_common.request_id import current_request_id
from genai_gateway.errors import ApiError
from genai_gateway.pipeline import Answer, AskPipeline, Delta, Generation, Message
from genai_gateway.responses import Encoder, serve, usage_dict
from genai_gateway.security import CurrentUser
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
    "parallel_tool_calls",
)

# OpenAI fields this server cannot honour, with the value that asks for nothing: sent with that value
# (as some clients always do) they are accepted; with any other, refused by name.
UNSUPPORTED_FIELDS: dict[str, Any] = {
    "logprobs": False,
    "top_logprobs": 0,
    "logit_bias": {},
    "functions": [],
    "function_call": "none",
    "audio": None,
    "modalities": ["text"],
    "prediction": None,
    "web_search_options": None,
    "reasoning_effort": None,
    "store": False,
    "metadata": {},
    "service_tier": "auto",
    "echo": False,
    "best_of": 1,
    "suffix": None,
}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(max_length=256)
    arguments: str = Field("", max_length=100_000)


class ToolCall(BaseModel):
    """A call the model asked for, as an assistant message in the request repeats it."""

    model_config = ConfigDict(extra="ignore")
    id: str = Field("", max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    # An assistant turn that called tools, and a tool's answer to one of those calls.
    tool_calls: list[ToolCall] | None = Field(None, max_length=128)
    tool_call_id: str | None = Field(None, max_length=256)

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


class ResponseFormat(BaseModel):
    """Structured output: JSON mode, or JSON that follows a schema (checked by the model server)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]


class SamplingFields(BaseModel):
    """What chat and completion requests share. A field this server does not know is refused by name."""

    model_config = ConfigDict(extra="allow")
    model: str = Field("", max_length=256)
    max_tokens: int | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: str | list[str] | None = None
    # Within what vLLM takes (64 bits) and what every JSON parser keeps exact (53 bits): beyond that, clients
    # that read numbers as doubles cannot tell the bound from the number above it.
    seed: int | None = Field(None, ge=-(2**53 - 1), le=2**53 - 1)
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
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    def generation(self, max_tokens: int | None, **fields: Any) -> Generation:
        if self.n != 1:
            raise ApiError(400, "only n=1 is supported", code="unsupported_parameter")
        for name, value in (self.model_extra or {}).items():
            if name not in UNSUPPORTED_FIELDS:
                raise ApiError(400, f"unknown field `{name}`", code="unsupported_parameter")
            if value is not None and value != UNSUPPORTED_FIELDS[name]:
                raise ApiError(400, f"`{name}` is not supported by this server", code="unsupported_parameter")
        response_format = self.response_format.model_dump() if self.response_format else None
        return Generation(
            model=self.model,
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            seed=self.seed,
            extra={
                name: getattr(self, name) for name in VLLM_EXTRA_FIELDS if getattr(self, name) is not None
            },
            response_format=None if response_format == {"type": "text"} else response_format,
            conversation_id=self.conversation_id or "",
            **fields,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(None, max_length=4096)
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str = Field(max_length=64)


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    def tool_fields(self) -> dict[str, Any]:
        if self.tool_choice is not None and not self.tools and self.tool_choice != "none":
            raise ApiError(400, "tool_choice needs tools", code="invalid_tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools:
            names = {tool.function.name for tool in self.tools}
            if self.tool_choice.function.name not in names:
                raise ApiError(
                    400, f"tool_choice names `{self.tool_choice.function.name}`, which is not among the tools"
                )
        choice = (
            self.tool_choice.model_dump()
            if isinstance(self.tool_choice, NamedToolChoice)
            else self.tool_choice
        )
        return {
            "tools": [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None,
            "tool_choice": choice,
        }


class CompletionRequest(SamplingFields):
    prompt: str | list[str]


def _chat_messages(body: ChatCompletionRequest) -> list[Message]:
    messages: list[Message] = []
    for m in body.messages:
        message: Message = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in m.tool_calls]
        if m.tool_call_id:
            message["tool_call_id"] = m.tool_call_id
        messages.append(message)
    return messages


class OpenAIEncoder(Encoder):
    """Streamed chunks of either OpenAI shape: `chat.completion.chunk` (deltas) or `text_completion`."""

    def __init__(self, chat: bool, model: str, include_usage: bool) -> None:
        self.chat = chat
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time())
        self.request_id = current_request_id.get()

    def _chunk(self, choice: dict[str, Any] | None, **more: Any) -> bytes:
        return sse(
            _envelope(
                self.chat,
                self.model,
                [{"index": 0, **choice, "logprobs": None}] if choice else [],
                created=self.created,
                request_id=self.request_id,
                streamed=True,
                **more,
            )
        )

    def start(self) -> list[bytes]:
        if not self.chat:
            return []
        return [self._chunk({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})]

    def delta(self, delta: Delta) -> bytes:
        if not self.chat:
            return self._chunk({"text": delta.text, "finish_reason": None})
        piece: dict[str, Any] = {"content": delta.text} if delta.text or not delta.tool_calls else {}
        if delta.tool_calls:
            piece["tool_calls"] = delta.tool_calls
        return self._chunk({"delta": piece, "finish_reason": None})

    def final(self, answer: Answer) -> list[bytes]:
        end = {"delta": {}} if self.chat else {"text": ""}
        out = [self._chunk({**end, "finish_reason": answer.finish_reason or "stop"}, **_extras(answer))]
        if self.include_usage:
            out.append(self._chunk(None, usage=usage_dict(answer)))
        return out


def _extras(answer: Answer) -> dict[str, Any]:
    return {
        "source": answer.source,
        "conversation_id": answer.conversation_id or None,
        "similarity": answer.similarity,
    }


def _envelope(
    chat: bool,
    model: str,
    choices: list[Any],
    *,
    created: int,
    request_id: str,
    streamed: bool,
    **more: Any,
) -> dict[str, Any]:
    if chat:
        kind = "chat.completion.chunk" if streamed else "chat.completion"
    else:
        kind = "text_completion"
    prefix = "chatcmpl" if chat else "cmpl"
    return {
        "id": f"{prefix}-{request_id}",
        "object": kind,
        "created": created,
        "model": model,
        "choices": choices,
        **more,
    }


def _whole(chat: bool, answer: Answer) -> dict[str, Any]:
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text}
        if answer.tool_calls:
            message["tool_calls"] = answer.tool_calls
            message["content"] = answer.text or None
        choice: dict[str, Any] = {"message": message}
    else:
        choice = {"text": answer.text}
    choice = {"index": 0, **choice, "logprobs": None, "finish_reason": answer.finish_reason or "stop"}
    return _envelope(
        chat,
        answer.model,
        [choice],
        created=int(time.time()),
        request_id=current_request_id.get(),
        streamed=False,
        usage=usage_dict(answer),
        **_extras(answer),
    )


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, response: Response, principal: CurrentUser
) -> Any:
    generation = body.generation(
        body.max_completion_tokens or body.max_tokens, messages=_chat_messages(body), **body.tool_fields()
    )
    return await serve(
        generation,
        stream=body.stream,
        encoder=lambda model: OpenAIEncoder(True, model, body.include_usage),
        whole=lambda answer: _whole(True, answer),
        request=request,
        response=response,
        principal=principal,
    )


@router.post("/completions")
async def completions(
    body: CompletionRequest, request: Request, response: Response, principal: CurrentUser
) -> Any:
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise ApiError(400, "only one prompt per request is supported", code="unsupported_parameter")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    generation = body.generation(body.max_tokens, prompt=prompt, input_name="prompt")
    return await serve(
        generation,
        stream=body.stream,
        encoder=lambda model: OpenAIEncoder(False, model, body.include_usage),
        whole=lambda answer: _whole(False, answer),
        request=request,
        response=response,
        principal=principal,
    )


@router.get("/models")
async def models(request: Request, _: CurrentUser) -> dict[str, Any]:
    pipeline: AskPipeline = request.app.state.pipeline
    served = await pipeline.models()
    return {
        "object": "list",
        "data": [
            {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by or "genai"}
            for m in served
        ],
    }
