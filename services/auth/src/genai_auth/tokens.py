"""Access and refresh tokens: HS256-signed JWTs with every registered claim required."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jose import jwt
from jose.exceptions import ExpiredSignatureError, JWTError
from pydantic import SecretStr

from genai_auth.settings import AuthSettings

ALGORITHM = "HS256"
ACCESS = "access"
REFRESH = "refresh"
# Far above any token we issue; stops a caller from making us parse megabytes of base64.
MAX_TOKEN_LENGTH = 8192

_DECODE_OPTIONS = {
    "require_exp": True,
    "require_iat": True,
    "require_sub": True,
    "require_jti": True,
    "require_iss": True,
    "require_aud": True,
}


class InvalidToken(Exception):
    """A token that cannot be trusted. The message says why, for debug logs only: callers get one
    generic answer so that they learn nothing about which check failed."""


@dataclass(frozen=True)
class Claims:
    """The verified content of a token."""

    user_id: str
    username: str
    role: str
    typ: str
    jti: str
    issued_at: int
    expires_at: int
    # When the user last gave their password (OIDC's auth_time): kept across refreshes, so that "signed in
    # a moment ago" means a password, not a renewal. 0 for tokens issued before it was recorded.
    auth_time: int = 0
    # The session's chain: every token of one login and its refreshes shares it, so that a reused refresh
    # token or a logout revokes the chain as a whole. The jti for tokens issued before chains existed.
    family: str = ""


@dataclass(frozen=True)
class IssuedPair:
    """A fresh access token and the refresh token that can replace it."""

    access_token: str
    refresh_token: str
    access: Claims
    refresh: Claims


class Tokens:
    """Issues and verifies this service's JWTs."""

    def __init__(
        self,
        *,
        secret: SecretStr,
        issuer: str,
        audience: str,
        access_ttl_s: int,
        refresh_ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._ttl = {ACCESS: access_ttl_s, REFRESH: refresh_ttl_s}
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> Tokens:
        return cls(
            secret=settings.jwt_secret,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_ttl_s=settings.access_ttl_s,
            refresh_ttl_s=settings.refresh_ttl_s,
        )

    @property
    def access_ttl_s(self) -> int:
        return self._ttl[ACCESS]

    @property
    def refresh_ttl_s(self) -> int:
        return self._ttl[REFRESH]

    def issue(
        self,
        *,
        user_id: str,
        username: str,
        role: str,
        typ: str,
        ttl_s: int | None = None,
        auth_time: int | None = None,
        family: str | None = None,
    ) -> tuple[str, Claims]:
        now = int(self._clock())
        jti = uuid.uuid4().hex
        claims = Claims(
            user_id=user_id,
            username=username,
            role=role,
            typ=typ,
            jti=jti,
            issued_at=now,
            expires_at=now + (ttl_s or self._ttl[typ]),
            auth_time=now if auth_time is None else auth_time,
            family=family or jti,
        )
        payload = {
            "sub": claims.user_id,
            "username": claims.username,
            "role": claims.role,
            "typ": claims.typ,
            "jti": claims.jti,
            "iat": claims.issued_at,
            "exp": claims.expires_at,
            "iss": self._issuer,
            "aud": self._audience,
            "auth_time": claims.auth_time,
            "fam": claims.family,
        }
        token = jwt.encode(payload, self._secret.get_secret_value(), algorithm=ALGORITHM)
        return token, claims

    def issue_pair(
        self,
        *,
        user_id: str,
        username: str,
        role: str,
        access_ttl_s: int | None = None,
        renewing: Claims | None = None,
    ) -> IssuedPair:
        """An access token (living `access_ttl_s`, or the configured lifetime) and its refresh token: of a
        new chain after a sign-in, or of the chain of the refresh token being renewed."""
        now = int(self._clock())
        family = renewing.family if renewing else uuid.uuid4().hex
        auth_time = renewing.auth_time if renewing else now
        access_token, access = self.issue(
            user_id=user_id,
            username=username,
            role=role,
            typ=ACCESS,
            ttl_s=access_ttl_s,
            auth_time=auth_time,
            family=family,
        )
        refresh_token, refresh = self.issue(
            user_id=user_id, username=username, role=role, typ=REFRESH, auth_time=auth_time, family=family
        )
        return IssuedPair(access_token, refresh_token, access, refresh)

    def decode(self, token: str, typ: str) -> Claims:
        """Verify signature, algorithm, issuer, audience, expiry and type; raise InvalidToken if any fails."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("empty or oversized token")
        # Checked before jose sees the token: "none" and public-key algorithms must never reach a
        # verifier, whatever the library would make of them.
        try:
            header = jwt.get_unverified_header(token)
        except JWTError as exc:
            raise InvalidToken("malformed token header") from exc
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("token algorithm is not " + ALGORITHM)
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                self._secret.get_secret_value(),
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options=_DECODE_OPTIONS,
            )
        except ExpiredSignatureError as exc:
            raise InvalidToken("token expired") from exc
        except JWTError as exc:
            raise InvalidToken(f"token rejected: {exc}") from exc
        if payload.get("typ") != typ:
            raise InvalidToken(f"token type is not {typ}")
        fields = (payload.get("sub"), payload.get("username"), payload.get("role"), payload.get("jti"))
        if not all(isinstance(value, str) and value for value in fields):
            raise InvalidToken("token claims are missing or have the wrong types")
        # jose has checked that exp and iat are integers.
        return Claims(
            user_id=payload["sub"],
            username=payload["username"],
            role=payload["role"],
            typ=typ,
            jti=payload["jti"],
            issued_at=int(payload["iat"]),
            expires_at=int(payload["exp"]),
            auth_time=_int_claim(payload.get("auth_time")),
            family=payload["fam"]
            if isinstance(payload.get("fam"), str) and payload["fam"]
            else payload["jti"],
        )


def _int_claim(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
