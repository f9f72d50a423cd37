from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from jose import jwt

from genai_auth.settings import AuthSettings
from genai_auth.tokens import ACCESS, REFRESH, InvalidToken, Tokens
from genai_auth.users import User

MakeUser = Callable[..., Awaitable[tuple[User, str]]]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _hand_made(header: dict[str, Any], payload: dict[str, Any], secret: str | None) -> str:
    """A JWT assembled by hand, HMAC-SHA256-signed whatever the header claims (or unsigned)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _claims(user: User, settings: AuthSettings, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user.id),
        "username": user.username,
        "role": user.role,
        "typ": ACCESS,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    for key, value in changes.items():
        if value is None:
            claims.pop(key)
        else:
            claims[key] = value
    return claims


def _signed(claims: dict[str, Any], secret: str, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def test_issue_and_decode_round_trip(tokens: Tokens) -> None:
    pair = tokens.issue_pair(user_id=str(uuid.uuid4()), username="alice", role="admin")
    access = tokens.decode(pair.access_token, ACCESS)
    refresh = tokens.decode(pair.refresh_token, REFRESH)
    assert access == pair.access
    assert refresh == pair.refresh
    assert access.jti != refresh.jti
    assert access.expires_at - access.issued_at == 1800
    assert refresh.expires_at - refresh.issued_at == 604800
    header = jwt.get_unverified_header(pair.access_token)
    assert header["alg"] == "HS256"
    payload = jwt.get_unverified_claims(pair.access_token)
    assert set(payload) == {
        "sub",
        "username",
        "role",
        "typ",
        "jti",
        "iat",
        "exp",
        "iss",
        "aud",
        "auth_time",
        "fam",
    }
    assert (payload["iss"], payload["aud"], payload["typ"]) == ("genai-auth", "genai", "access")


def test_tokens_are_not_interchangeable_by_type(tokens: Tokens) -> None:
    pair = tokens.issue_pair(user_id=str(uuid.uuid4()), username="bob", role="user")
    with pytest.raises(InvalidToken):
        tokens.decode(pair.refresh_token, ACCESS)
    with pytest.raises(InvalidToken):
        tokens.decode(pair.access_token, REFRESH)


def test_oversized_token_refused_before_parsing(tokens: Tokens) -> None:
    with pytest.raises(InvalidToken, match="oversized"):
        tokens.decode("a" * 10_000, ACCESS)


def _tampered(claims: dict[str, Any], secret: str) -> str:
    """A validly signed token whose payload is then swapped for one claiming the admin role."""
    header, _, signature = _signed(claims, secret).split(".")
    payload = _b64(json.dumps({**claims, "role": "admin"}).encode())
    return f"{header}.{payload}.{signature}"


# Each case turns valid claims for a real, enabled user into one bad token.
BAD_TOKENS: dict[str, Callable[[dict[str, Any], str], str]] = {
    "expired": lambda c, s: _signed({**c, "iat": c["iat"] - 7200, "exp": c["iat"] - 3600}, s),
    "forged with another secret": lambda c, s: _signed(c, "another-secret-" + "x" * 32),
    "alg none, unsigned": lambda c, s: _hand_made({"alg": "none", "typ": "JWT"}, c, None),
    "alg none, signed anyway": lambda c, s: _hand_made({"alg": "none", "typ": "JWT"}, c, s),
    "alg None spelled differently": lambda c, s: _hand_made({"alg": "None"}, c, None),
    "RS256 header over an HMAC signature": lambda c, s: _hand_made({"alg": "RS256", "typ": "JWT"}, c, s),
    "HS512 with the right secret": lambda c, s: _signed(c, s, "HS512"),
    "no alg in header": lambda c, s: _hand_made({"typ": "JWT"}, c, s),
    "missing aud": lambda c, s: _signed({k: v for k, v in c.items() if k != "aud"}, s),
    "missing iss": lambda c, s: _signed({k: v for k, v in c.items() if k != "iss"}, s),
    "missing exp": lambda c, s: _signed({k: v for k, v in c.items() if k != "exp"}, s),
    "missing iat": lambda c, s: _signed({k: v for k, v in c.items() if k != "iat"}, s),
    "missing jti": lambda c, s: _signed({k: v for k, v in c.items() if k != "jti"}, s),
    "missing sub": lambda c, s: _signed({k: v for k, v in c.items() if k != "sub"}, s),
    "missing typ": lambda c, s: _signed({k: v for k, v in c.items() if k != "typ"}, s),
    "wrong aud": lambda c, s: _signed({**c, "aud": "someone-else"}, s),
    "wrong iss": lambda c, s: _signed({**c, "iss": "evil-issuer"}, s),
    "refresh token used as access": lambda c, s: _signed({**c, "typ": REFRESH}, s),
    "unknown user": lambda c, s: _signed({**c, "sub": str(uuid.uuid4())}, s),
    "sub not a uuid": lambda c, s: _signed({**c, "sub": "1 OR 1=1"}, s),
    "payload changed after signing": lambda c, s: _tampered(c, s),
    "garbage": lambda c, s: "not.a.jwt",
    "empty": lambda c, s: "",
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_are_unauthenticated(
    case: str, make_user: MakeUser, settings: AuthSettings, stub: auth_pb2_grpc.AuthServiceStub
) -> None:
    user, _ = await make_user()
    secret = settings.jwt_secret.get_secret_value()
    claims = _claims(user, settings)
    # The untouched claims are accepted, so each case fails for its own reason only.
    principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=_signed(claims, secret)))
    assert principal.user_id == str(user.id)

    bad = BAD_TOKENS[case](claims, secret)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Authenticate(auth_pb2.AuthenticateRequest(token=bad))
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert failed.value.details() == "invalid or expired token"


async def test_access_token_cannot_refresh(
    make_user: MakeUser, stub: auth_pb2_grpc.AuthServiceStub, address: str
) -> None:
    user, password = await make_user()
    pair = await stub.Login(
        auth_pb2.LoginRequest(username=user.username, password=password, client_address=address)
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=pair.access_token))
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
