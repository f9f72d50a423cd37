"""The published OpenAPI document: valid OpenAPI 3.1, one error schema, every status a route can answer."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from genai_gateway.app import create_app
from genai_gateway.errors import error_body
from genai_gateway.openapi import Error
from genai_gateway.settings import GatewaySettings

ERROR_REF = "#/components/schemas/Error"
# Redeeming a Telegram link code: the code is the credential.
PUBLIC = {
    "POST /token",
    "POST /api/v1/auth/refresh",
    "POST /api/v1/auth/logout",
    "POST /api/v1/telegram/links",
}
# Anyone may call; an admin's credential adds to the answer, any other is never refused.
OPTIONAL_AUTH = {"GET /health"}
GENERATION = ("POST /ask", "POST /v1/chat/completions", "POST /v1/completions")


@pytest.fixture(scope="module")
def settings() -> GatewaySettings:
    return GatewaySettings(max_tokens_limit=512, max_prompt_chars=4000)


@pytest.fixture(scope="module")
def document(settings: GatewaySettings) -> dict[str, Any]:
    return create_app(settings).openapi()


def _operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]


def _errors(operation: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(status): response for status, response in operation["responses"].items() if status[0] in "45"}


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_error_of_every_operation_has_the_one_error_schema(document: dict[str, Any]) -> None:
    for key, operation in _operations(document):
        assert _errors(operation), key
        for status, response in _errors(operation).items():
            schema = response["content"]["application/json"]["schema"]
            refs = [option["$ref"] for option in schema["anyOf"]] if "anyOf" in schema else [schema["$ref"]]
            assert ERROR_REF in refs, (key, status)
            assert response["description"], (key, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_error_schema_is_what_the_service_sends() -> None:
    Error.model_validate(error_body(429, "slow down", "rate_limited"))
    # nginx's own errors carry no "param".
    Error.model_validate({"error": {"message": "m", "type": "t", "code": "413"}, "detail": "m"})


def test_protected_operations_declare_bearer_security_and_401(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert {scheme["scheme"] for scheme in schemes.values()} == {"bearer"}
    for key, operation in _operations(document):
        if key in PUBLIC:
            assert "security" not in operation, key
            continue
        if key in OPTIONAL_AUTH:
            assert operation["security"] == [{}, {"accessToken": []}, {"apiKey": []}], key
            assert not {401, 403, 504} & set(_errors(operation)), key
            continue
        assert operation["security"] == [{"accessToken": []}, {"apiKey": []}], key
        assert {401, 503, 504} <= set(_errors(operation)), key
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], key


def test_admin_operations_document_403(document: dict[str, Any]) -> None:
    admin = [key for key, operation in _operations(document) if operation.get("x-required-role") == "admin"]
    assert {key.split(" ")[1].split("/")[3] for key in admin} == {"users", "admin"}
    for key, operation in _operations(document):
        if key in admin:
            assert 403 in _errors(operation), key


def test_input_answers_422_and_path_parameters_404(document: dict[str, Any]) -> None:
    for key, operation in _operations(document):
        parameters = operation.get("parameters", [])
        has_input = "requestBody" in operation or any(p["in"] == "query" for p in parameters)
        assert (422 in _errors(operation)) == has_input, key
        if any(p["in"] == "path" for p in parameters):
            assert 404 in _errors(operation), key
        if "requestBody" in operation:
            assert {400, 413} <= set(_errors(operation)), key


def test_generation_routes(document: dict[str, Any], settings: GatewaySettings) -> None:
    for key in GENERATION:
        method, path = key.split(" ")
        operation = document["paths"][path][method.lower()]
        assert {400, 401, 404, 413, 422, 429, 503, 504} <= set(_errors(operation)), key
        limited = operation["responses"]["429"]["headers"]
        assert limited["Retry-After"]["required"] is True
        assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(limited)
        ok = operation["responses"]["200"]
        assert {"application/json", "text/event-stream"} <= set(ok["content"]), key
        assert "[DONE]" in ok["description"]
    ask = document["components"]["schemas"]["AskRequest"]["properties"]
    assert ask["prompt"]["maxLength"] == settings.max_prompt_chars
    assert {"type": "integer", "minimum": 1, "maximum": settings.max_tokens_limit} in ask["max_tokens"][
        "anyOf"
    ]


def test_conflicts_are_documented_where_names_clash(document: dict[str, Any]) -> None:
    conflicts = {key for key, operation in _operations(document) if 409 in _errors(operation)}
    assert conflicts == {"POST /api/v1/users"}


def test_the_main_routes_have_examples(document: dict[str, Any]) -> None:
    for path in ("/token", "/ask", "/v1/chat/completions"):
        operation = document["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["example"], path
        assert operation["responses"]["200"]["content"]["application/json"]["example"], path


def test_a_wrong_method_names_every_method_of_the_path(settings: GatewaySettings) -> None:
    client = TestClient(create_app(settings))
    answer = client.put("/api/v1/keys")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, POST"
    assert answer.json()["error"]["code"] == "405"
    assert client.put("/api/v1/history/0f8e4b8e").headers["allow"] == "DELETE, GET, PATCH"
    # A concrete path before a templated one, as OpenAPI matches them.
    assert client.post("/api/v1/history/search").headers["allow"] == "GET"


def test_openai_requests_refuse_unknown_fields(document: dict[str, Any]) -> None:
    for model in ("ChatCompletionRequest", "CompletionRequest"):
        request = document["components"]["schemas"][model]
        assert request["additionalProperties"] is False
        assert request["properties"]["logprobs"]["anyOf"] == [
            {"const": False},
            {"const": 0},
            {"type": "null"},
        ]


def test_the_reference_and_reflection_can_be_turned_off() -> None:
    # Off unless asked for: nobody learns the API's shape before signing in.
    client = TestClient(create_app(GatewaySettings()))  # no lifespan: the routes only
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert client.get(path).status_code == 404, path
    on = TestClient(create_app(GatewaySettings(public_api_docs=True)))
    assert on.get("/openapi.json").status_code == 200
    assert on.get("/docs").status_code == 200


def test_health_documents_the_public_and_the_admin_answer(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["HealthOut"]
    # Only `status` is always there: the details are sent to admins alone, and left out (never null) for others.
    assert schema["required"] == ["status"]
    assert {"reasons", "dependencies", "history_spool", "credential_cache"} <= set(schema["properties"])
    assert not any("default" in field for field in schema["properties"].values())
