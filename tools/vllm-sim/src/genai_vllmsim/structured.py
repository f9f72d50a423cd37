"""Structured output and tool calls: what vLLM checks in `response_format`, `tools` and `tool_choice`,
and a deterministic JSON value for a schema (the simulator's stand-in for guided decoding).

The checks raise `Refusal` with vLLM's own wording where vLLM has one, so that clients meet the same
400s here as in production. The JSON values follow the simple schemas found in practice (objects with
properties and required, strings, numbers, integers, booleans, null, arrays, enum, const, anyOf/oneOf,
local `$ref`s); anything else gets a string, as an unconstrained model would write.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from genai_vllmsim import text

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
NAMED_CHOICE_USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'
AUTO_TOOL_CHOICE_DISABLED = (
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
)
# What a json_object answer looks like: any object would do; one with a short text is typical.
JSON_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}
# Nested schemas deeper than this get a string: a recursive $ref must not recurse forever.
MAX_DEPTH = 8
# A JSON answer is sent in pieces of this many characters at most, one piece per token.
PIECE_CHARS = 8
_PIECE = re.compile(rf"\s*\S{{1,{PIECE_CHARS}}}")


class Refusal(ValueError):
    """A request field vLLM would refuse with a 400; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """The function a request makes the model call, and how it was chosen ("auto", "required", "named")."""

    name: str
    parameters: dict[str, Any]
    mode: str


def response_schema(raw: Any) -> dict[str, Any] | None:
    """The JSON schema the answer must follow ({} for json_object), or None for plain text."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("type") not in RESPONSE_FORMAT_TYPES:
        raise Refusal(
            f"response_format.type must be one of {', '.join(RESPONSE_FORMAT_TYPES)}.", "response_format"
        )
    kind = raw["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_SCHEMA
    spec = raw.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name", "schema"), str):
        raise Refusal(
            "When response_format.type is json_schema, response_format.json_schema must be an object "
            "with a name and a schema.",
            "response_format",
        )
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise Refusal("response_format.json_schema.schema must be an object.", "response_format")
    return schema


def tool_choice(tools: Any, choice: Any, *, auto_enabled: bool) -> ToolChoice | None:
    """The function to call, checked as vLLM's request model and serving layer do; None: answer text."""
    if tools is not None:
        if not isinstance(tools, list):
            raise Refusal("tools must be a list of tool definitions.", "tools")
        if not tools:
            raise Refusal(
                "`tools` must not be an empty array. Either provide at least one tool or omit the field "
                "entirely.",
                "tools",
            )
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if (
                not isinstance(function, dict)
                or tool.get("type", "function") != "function"
                or not isinstance(function.get("name"), str)
                or not function["name"]
                or not isinstance(function.get("parameters", {}), dict)
            ):
                raise Refusal(
                    'Each tool must be {"type": "function", "function": {"name": ..., "parameters": {...}}}.',
                    "tools",
                )
    if choice is None and tools:
        choice = "auto"
    if choice is None or choice == "none":
        return None
    if tools is None:
        raise Refusal("When using `tool_choice`, `tools` must be set.", "tool_choice")
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    if isinstance(choice, dict):
        function = choice.get("function")
        if not isinstance(function, dict):
            raise Refusal(
                f"Invalid value for `function`: `{function}` in `tool_choice`! {NAMED_CHOICE_USAGE}",
                "tool_choice",
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise Refusal(
                f"Invalid `name` in `function`: `{name}` in `tool_choice`! {NAMED_CHOICE_USAGE}",
                "tool_choice",
            )
        if name not in by_name:
            raise Refusal(
                "The tool specified in `tool_choice` does not match any of the specified `tools`",
                "tool_choice",
            )
        return ToolChoice(name, by_name[name].get("parameters") or {}, "named")
    if choice not in ("auto", "required"):
        raise Refusal(
            f'Invalid value for `tool_choice`: {choice}! Only named tools, "none", "auto" or "required" are '
            "supported.",
            "tool_choice",
        )
    if choice == "auto" and not auto_enabled:
        raise Refusal(AUTO_TOOL_CHOICE_DISABLED, "tool_choice")
    first = tools[0]["function"]
    return ToolChoice(first["name"], first.get("parameters") or {}, str(choice))


def value_for(schema: Any, seed: int) -> Any:
    """A JSON value that validates against `schema`, the same for the same seed."""
    return _Builder(schema, random.Random(seed)).build(schema, 0)  # noqa: S311 - sample data


def dumps(value: Any) -> str:
    """JSON text as a model writes it: spaces after separators, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False)


def pieces(answer: str) -> list[str]:
    """The answer cut into tokens: runs of at most PIECE_CHARS non-space characters with the spaces before."""
    return _PIECE.findall(answer)


class _Builder:
    def __init__(self, root: Any, rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def words(self, count: int) -> str:
        indices, _ = text.plan(self.rng.getrandbits(32), count, frozenset())
        return text.join(indices).lower()

    def resolve(self, schema: dict[str, Any]) -> Any:
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return schema
        target: Any = self.root
        for part in ref[2:].split("/"):
            target = (
                target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
            )
        return target if isinstance(target, dict) else {}

    def build(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, dict) or depth > MAX_DEPTH:
            return self.words(2)
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self.rng.randrange(len(enum))]
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.build(options[0], depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind == "object":
            props = schema.get("properties")
            props = props if isinstance(props, dict) else {}
            value = {name: self.build(sub, depth + 1) for name, sub in props.items()}
            required = schema.get("required")
            for name in required if isinstance(required, list) else ():
                if isinstance(name, str) and name not in value:
                    value[name] = self.words(2)
            return value
        if kind == "array":
            low = schema.get("minItems", 1)
            high = schema.get("maxItems", max(low, 2))
            count = max(0, min(max(low, 2), high)) if isinstance(low, int) and isinstance(high, int) else 2
            return [self.build(schema.get("items", {}), depth + 1) for _ in range(count)]
        if kind == "integer":
            return self.rng.randint(*self.bounds(schema, 0, 100))
        if kind == "number":
            low, high = self.bounds(schema, 0, 100)
            return round(self.rng.uniform(low, high), 2)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        value = self.words(2)
        min_length = schema.get("minLength")
        if isinstance(min_length, int) and len(value) < min_length:
            value = value.ljust(min_length, "x")
        max_length = schema.get("maxLength")
        if isinstance(max_length, int):
            value = value[:max_length]
        return value

    @staticmethod
    def bounds(schema: dict[str, Any], low: int, high: int) -> tuple[int, int]:
        minimum, maximum = schema.get("minimum"), schema.get("maximum")
        if isinstance(minimum, int | float):
            low = int(-(-minimum // 1))
            high = max(high, low)
        if isinstance(maximum, int | float):
            high = int(maximum // 1)
            low = min(low, high)
        return low, high
