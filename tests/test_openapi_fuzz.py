"""The published OpenAPI document against the running service: schemathesis reads /openapi.json from the
stack (through nginx, over HTTPS), generates requests for every operation from it (the document's
examples, boundary cases, then random valid and invalid data) and checks every answer with all of its
standard checks: no server error; status, content type, headers and body as documented; valid data
accepted and invalid data refused; no answer without the documented authentication; 405 with the right
Allow header for methods a path does not have.

The stack is one of its own, on llama.cpp with SmolLM2 (a real model), set up so that the fuzzer
exercises the API rather than the model or the limits:
- max_tokens is at most 8 and prompts at most 1,000 characters: the document says so (it is derived
  from the settings), so the fuzzer asks for no more and each answer takes well under a second;
- the fuzzing user may send 100,000 requests a minute, and failed logins from one address lock nobody
  out (the fuzzer's random logins all come from 127.0.0.1); both limits have tests of their own.

Who calls: an ordinary user, and for the admin-only operations an admin, both made for this test. The
admin cannot be locked out: no case of an operation on a named user (PATCH /api/v1/users/{username},
POST /api/v1/users/{username}/password) names either of them (a generated name is random anyway, and the
gateway refuses to disable or demote the caller), the caller's own password is changed only by
POST /api/v1/auth/password, which is sent as the ordinary user and needs the old password, and
POST /api/v1/auth/logout (which revokes the token it is sent with) gets a token of its own for each case.

What no schema can say is allowed for where it applies, and nowhere else: a schema-valid request may get
a 400 where a cursor is opaque or fields depend on each other (OPAQUE_OR_RELATED), and a body that only
pydantic's lax mode accepts ("stream": 0) is not counted as invalid data accepted (_accepted_by_coercion).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import routing
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from schemathesis.checks import negative_data_rejection
from schemathesis.config import SchemathesisConfig

from genai_devstack import infra
from genai_gateway.app import create_app
from genai_gateway.settings import GatewaySettings
from tests.conftest import _own_database
from tests.harness import RunningStack, User, launch

pytestmark = pytest.mark.slow

# Cases per operation in the fuzzing phase (the examples and coverage phases add theirs, bounded by the
# document): enough to find a wrong status or shape, few enough for a few minutes on two cores.
MAX_EXAMPLES = 25
MAX_TOKENS_LIMIT = 8
MAX_PROMPT_CHARS = 1000

LOGOUT = "/api/v1/auth/logout"


@pytest.fixture(scope="module")
def fuzz_stack(work_dir: Path, postgres_server: infra.Service, redis_url: str) -> Iterator[RunningStack]:
    with _own_database(postgres_server) as database:
        running = launch(
            work_dir,
            database,
            # A Redis database of its own: login failures, limits and the cache stay apart from other stacks.
            redis_url.rsplit("/", 1)[0] + "/2",
            name="fuzz-stack",
            overrides={
                "GENAI_GATEWAY_MAX_TOKENS_LIMIT": str(MAX_TOKENS_LIMIT),
                "GENAI_GATEWAY_DEFAULT_MAX_TOKENS": "4",
                "GENAI_GATEWAY_MAX_PROMPT_CHARS": str(MAX_PROMPT_CHARS),
                "GENAI_GATEWAY_LIMITS_USER__REQUESTS_PER_MINUTE": "100000",
                "GENAI_AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS": "1000000",
            },
        )
        try:
            yield running
        finally:
            running.stop_all()


class Callers:
    """Who sends each case: the admin for admin-only operations, the ordinary user for the rest."""

    def __init__(self, stack: RunningStack) -> None:
        self.stack = stack
        self.user: User = stack.new_user()
        self.admin: User = stack.new_user(role="admin")
        self.protected = {self.user.username.lower(), self.admin.username.lower()}
        self._last_login = 0.0

    def _own_token(self) -> str:
        """A new session of the user's: a logout case ends the session it names, refresh tokens and all.
        Paced under nginx's 10 logins a second per address."""
        wait = self._last_login + 0.12 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_login = time.monotonic()
        return self.stack.login(self.user.username, self.user.password)

    def headers(self, operation: Any) -> dict[str, str]:
        if operation.path == LOGOUT:
            return {"Authorization": f"Bearer {self._own_token()}"}
        admin_only = operation.definition.raw.get("x-required-role") == "admin"
        return self.admin.headers if admin_only else self.user.headers


@pytest.fixture(scope="module")
def callers(fuzz_stack: RunningStack) -> Callers:
    return Callers(fuzz_stack)


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    """Cases sent per operation, reported at the end of the module."""
    counts: Counter[str] = Counter()
    started = time.monotonic()
    yield counts
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and counts:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\nopenapi fuzz: {len(counts)} operations, {sum(counts.values())} cases, "
                f"{time.monotonic() - started:.0f} s"
            )


# The document the gateway of `fuzz_stack` serves, built here from the same code and the same settings:
# schemathesis makes a test per operation at collection time, before any stack runs. The first test
# checks that the stack serves exactly this document.
SETTINGS = GatewaySettings(
    max_tokens_limit=MAX_TOKENS_LIMIT, max_prompt_chars=MAX_PROMPT_CHARS, default_max_tokens=4
)
APP = create_app(SETTINGS)
DOCUMENT = APP.openapi()

# What the document cannot say, so that a schema-valid request may still get a 400:
# - a cursor is opaque: only one a list gave out is valid, and no schema can say which;
# - the usage report's `to` must not be before `from`, nor more than 366 days after it;
# - a chat's named tool_choice must name one of its tools.
OPAQUE_OR_RELATED = sorted(
    (method.upper(), path)
    for path, operations in DOCUMENT["paths"].items()
    for method, operation in operations.items()
    if any(p["name"] in ("cursor", "from") for p in operation.get("parameters", ()))
    or (method, path) == ("post", "/v1/chat/completions")
)
POSITIVE_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=SchemathesisConfig.from_dict(
        {
            "request-timeout": 60,
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
            "operations": [
                {
                    "include-method": method,
                    "include-path": path,
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": [*POSITIVE_ACCEPTED, "400"]}
                    },
                }
                for method, path in OPAQUE_OR_RELATED
            ],
            "checks": {
                # 413 is a refusal too: a prompt over the server's limit (the document gives the limit).
                "negative_data_rejection": {
                    "expected-statuses": ["400", "401", "403", "404", "405", "409", "413", "422", "429"]
                },
            },
        }
    ),
)


def test_the_stack_serves_the_fuzzed_document(fuzz_stack: RunningStack) -> None:
    with fuzz_stack.client() as client:
        served = client.get("/openapi.json")
    served.raise_for_status()
    assert served.json() == DOCUMENT


def _body_types(app: Any) -> dict[str, TypeAdapter[Any]]:
    """Each operation's request body type, as the route validates it."""
    return {
        f"{method} {route.path_format}": TypeAdapter(route.body_field.field_info.annotation)
        for route in routing.iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute) and route.body_field is not None
        for method in route.methods
    }


BODY_TYPES = _body_types(APP)


def _accepted_by_coercion(case: Any) -> bool:
    """Whether the body is refused by its model in strict mode and accepted only by pydantic's lax mode, or
    a query integer is spelled as only a lax reader takes it (`_lax_integer`).

    The models of some routes still coerce types ("stream": 0 is false, "expires_in_days": "5" is 5,
    "frequency_penalty": false is 0.0), which no schema can state exactly. Such a case is sent and
    checked like any other, except for whether a body of the wrong type was refused; a model made
    strict makes this never true.
    """
    if any(_lax_integer(value) for value in (case.query or {}).values()):
        return True
    body_type = BODY_TYPES.get(case.operation.label)
    if body_type is None or case.body is None:
        return False
    try:
        body_type.validate_python(case.body, strict=True)
    except ValidationError:
        try:
            body_type.validate_python(case.body)
        except ValidationError:
            return False
        return True
    return False


def _lax_integer(value: Any) -> bool:
    """A query value that is an integer only to a lax reader: "+1", " 1" (a "+" in a URL is a space), "1_0".
    Query values arrive as text, so FastAPI reads integers from them as int() does, and no schema can say
    which spellings of a number a server accepts."""
    if not isinstance(value, str) or re.fullmatch(r"-?\d+", value):
        return False
    try:
        int(value)
    except ValueError:
        return False
    return True


# The same cases on every run, so that CI is repeatable: a new finding comes with a change, not by chance.
@schema.parametrize()
@hypothesis.settings(derandomize=True)
def test_the_service_answers_as_its_openapi_document_says(
    case: Any, callers: Callers, figures: Counter[str]
) -> None:
    if str((case.path_parameters or {}).get("username", "")).lower() in callers.protected:
        return
    figures[case.operation.label] += 1
    lax = _accepted_by_coercion(case)
    case.call_and_validate(
        base_url=callers.stack.base_url,
        headers=callers.headers(case.operation),
        verify=callers.stack.ca,
        excluded_checks=[negative_data_rejection] if lax else None,
    )
