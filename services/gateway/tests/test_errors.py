"""gRPC failures become HTTP answers in one place, with messages a person can act on."""

from __future__ import annotations

import grpc
import pytest

from genai_gateway.errors import error_body, from_grpc


class _Failure(grpc.aio.AioRpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNKNOWN, 500),
    ],
)
def test_status_codes(code: grpc.StatusCode, status: int) -> None:
    assert from_grpc(_Failure(code, "details"), "the model service").status == status


def test_outage_names_the_dependency_not_the_transport() -> None:
    error = from_grpc(
        _Failure(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; ipv4:127.0.0.1:1"),
        "the model service",
    )
    assert error.message == "the model service is unavailable; try again shortly"


def test_internal_details_are_not_leaked() -> None:
    error = from_grpc(_Failure(grpc.StatusCode.INTERNAL, "Traceback: secret path"), "auth")
    assert error.message == "internal error"


def test_retry_after_is_passed_on() -> None:
    error = from_grpc(
        _Failure(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "too many failed login attempts", (("retry-after", "42"),)
        ),
        "auth",
    )
    assert error.headers["Retry-After"] == "42"
    assert error.message == "too many failed login attempts"


def test_one_error_shape() -> None:
    body = error_body(429, "slow down", "rate_limited")
    assert body == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limited"},
        "detail": "slow down",
    }


def test_a_busy_model_is_503_with_retry_after() -> None:
    error = from_grpc(
        _Failure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the model is busy: 9 requests are waiting",
            (("retry-after", "7"),),
        ),
        "the model service",
        busy_status=503,
    )
    assert (error.status, error.headers["Retry-After"]) == (503, "7")
    assert "busy" in error.message


def test_a_service_that_is_up_says_what_it_cannot_reach() -> None:
    # auth answers UNAVAILABLE when the directory does not: its words are for the caller, with Retry-After.
    error = from_grpc(
        _Failure(
            grpc.StatusCode.UNAVAILABLE,
            "the directory (LDAP/AD) is not answering",
            (("retry-after", "30"), ("genai-caller-message", "1")),
        ),
        "the authentication service",
    )
    assert (error.status, error.message) == (503, "the directory (LDAP/AD) is not answering")
    assert error.headers["Retry-After"] == "30"
