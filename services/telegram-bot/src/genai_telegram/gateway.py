"""The gateway's public HTTPS API, as the bot calls it: one client, every failure mapped here.

| what happened                                     | raised                                   |
|---------------------------------------------------|------------------------------------------|
| no connection, a timeout, 502/503/504 (nginx or   | `Unavailable`: the user is told to try   |
| the gateway saying a dependency is down)          | again shortly; the bot goes on           |
| 401 with a linked account's key                   | `Unlinked`: the link was ended elsewhere |
| 429                                               | `Limited`, with Retry-After in seconds   |
| any other 4xx                                     | `Refused`, with the gateway's message    |
| 5xx otherwise                                     | `Unavailable`                            |
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from genai_telegram.settings import TelegramSettings

# Calls other than a question's answer (linking, the conversation list) are quick for the gateway: a hung
# one is cut off long before an answer's deadline.
QUICK_TIMEOUT_S = 30.0
# Answers stream at once for many accounts, each on a connection of its own.
MAX_CONNECTIONS = 1000


class GatewayError(Exception):
    """A call that did not give an answer."""


class Unavailable(GatewayError):
    """The service cannot be reached or is down for now."""


class Unlinked(GatewayError):
    """The key was refused: the link was ended (from the web page, by an admin) or its user disabled."""


class Limited(GatewayError):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Refused(GatewayError):
    """A request the gateway would not take (a wrong link code, a prompt too long); the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Redeemed:
    link_id: str
    owner: str
    api_key: str


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(body.get("detail"), str):
            return str(body["detail"])
    return response.reason_phrase


def _retry_after(response: httpx.Response) -> int:
    try:
        return max(1, int(float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1


def _raise_for(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    message = _message(response)
    if status == 401:
        raise Unlinked(message)
    if status == 429:
        raise Limited(message, _retry_after(response))
    if status >= 500:
        raise Unavailable(message)
    raise Refused(status, message)


class Gateway:
    def __init__(self, settings: TelegramSettings) -> None:
        verify: ssl.SSLContext | bool = True
        if settings.gateway_ca_file:
            verify = ssl.create_default_context(cafile=settings.gateway_ca_file)
            # The file may be the certificate nginx serves with its intermediates (a corporate CA's chain
            # without the root): what it holds is trusted as it is.
            verify.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self._client = httpx.AsyncClient(
            base_url=settings.gateway_url,
            verify=verify,
            timeout=httpx.Timeout(settings.gateway_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=50),
            headers={"User-Agent": "genai-telegram-bot"},
            # The site's proxy is for Telegram; the gateway is inside.
            trust_env=False,
        )
        self._max_tokens = settings.max_tokens
        self._quick = httpx.Timeout(min(QUICK_TIMEOUT_S, settings.gateway_timeout_s), connect=10.0)

    async def close(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, url: str, key: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = await self._client.request(method, url, headers=headers, timeout=self._quick, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(str(exc) or type(exc).__name__) from exc
        _raise_for(response)
        return response.json()

    async def redeem(self, code: str, telegram_user_id: int, telegram_username: str) -> Redeemed:
        body = await self._request(
            "POST",
            "/api/v1/telegram/links",
            json={"code": code, "telegram_user_id": telegram_user_id, "telegram_username": telegram_username},
        )
        return Redeemed(body["link"]["id"], body["link"]["owner"], body["api_key"])

    async def unlink(self, key: str, link_id: str) -> None:
        await self._request("DELETE", f"/api/v1/telegram/links/{link_id}", key)

    async def conversations(self, key: str, limit: int) -> list[dict[str, Any]]:
        body = await self._request("GET", "/api/v1/history", key, params={"limit": limit, "origin": "chat"})
        return list(body["conversations"])

    async def conversation(self, key: str, conversation_id: str) -> dict[str, Any]:
        return dict(await self._request("GET", f"/api/v1/history/{conversation_id}", key))

    async def ask(self, key: str, prompt: str, conversation_id: str) -> AsyncIterator[dict[str, Any]]:
        """The events of a streamed POST /ask: {"type": "delta", "text"}, ..., {"type": "done", ...}, or
        {"type": "error", ...} when the answer breaks off after it began."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "stream": True,
            "origin": "chat",
            "max_tokens": self._max_tokens,
        }
        if conversation_id:
            body["conversation_id"] = conversation_id
        headers = {"Authorization": f"Bearer {key}"}
        try:
            async with self._client.stream("POST", "/ask", json=body, headers=headers) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    yield json.loads(line[6:])
        except httpx.HTTPError as exc:
            raise Unavailable(str(exc) or type(exc).__name__) from exc
