"""Telegram links (services/telegram-bot): a one-time code from the web page, redeemed by the bot for a
chat-scoped API key; the user's own links, unlinking, and every link for admins.

Redeeming takes no bearer credential: the code is one (auth, `genai_auth.telegram`, says why that is enough).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from genai.auth.v1 import auth_pb2
from pydantic import BaseModel, Field

from genai_gateway.clients import Auth
from genai_gateway.security import AdminUser, CurrentUser, Token

router = APIRouter(tags=["telegram"])

# What a code may look like once typed: letters, digits, spaces and dashes; auth says whether it is one.
CODE_PATTERN = r"^[A-Za-z0-9 -]{1,64}$"


class LinkCodeOut(BaseModel):
    code: str = Field(description="shown once: send it to the bot as /start CODE or /link CODE")
    expires_at: int = Field(description="seconds since the epoch")
    command: str = Field(description="what to send the bot")
    link: str | None = Field(description="a t.me link that sends it, when the bot's username is configured")


class LinkRedeem(BaseModel):
    code: str = Field(pattern=CODE_PATTERN)
    telegram_user_id: int = Field(ge=1, le=2**53 - 1, description="the Telegram account that sent the code")
    telegram_username: str = Field("", max_length=64)


class LinkOut(BaseModel):
    id: str
    owner: str
    telegram_user_id: int
    telegram_username: str
    created_at: int
    revoked: bool
    api_key_id: str


class LinkCreated(BaseModel):
    link: LinkOut
    api_key: str = Field(description="a chat-scoped API key for the bot to act with; shown once")


class LinkList(BaseModel):
    links: list[LinkOut]


def link_out(link: auth_pb2.TelegramLink) -> LinkOut:
    return LinkOut(
        id=link.id,
        owner=link.owner_username,
        telegram_user_id=link.telegram_user_id,
        telegram_username=link.telegram_username,
        created_at=link.created_at,
        revoked=link.revoked,
        api_key_id=link.api_key_id,
    )


class CodeCreate(BaseModel):
    password: str = Field(
        "",
        max_length=1024,
        description="your password; needed unless you signed in with it in the last few minutes",
    )


@router.post("/api/v1/telegram/codes", response_model=LinkCodeOut, status_code=201)
async def create_code(
    request: Request, _: CurrentUser, token: Token, auth: Auth, body: CodeCreate | None = None
) -> LinkCodeOut:
    """A one-time code for the bot. The link gives the bot a key that never expires, so, as for an API key,
    your password is needed unless you signed in with it in the last few minutes."""
    made = await auth.create_telegram_link_code(
        auth_pb2.CreateTelegramLinkCodeRequest(password=body.password if body else ""), token
    )
    bot = request.app.state.settings.telegram_bot_username
    return LinkCodeOut(
        code=made.code,
        expires_at=made.expires_at,
        command=f"/start {made.code}",
        link=f"https://t.me/{bot}?start={made.code}" if bot else None,
    )


@router.post("/api/v1/telegram/links", response_model=LinkCreated, status_code=201)
async def redeem_code(body: LinkRedeem, auth: Auth) -> LinkCreated:
    redeemed = await auth.redeem_telegram_link_code(
        auth_pb2.RedeemTelegramLinkCodeRequest(
            code=body.code, telegram_user_id=body.telegram_user_id, telegram_username=body.telegram_username
        )
    )
    return LinkCreated(link=link_out(redeemed.link), api_key=redeemed.api_key)


@router.get("/api/v1/telegram/links", response_model=LinkList)
async def list_links(_: CurrentUser, token: Token, auth: Auth, include_revoked: bool = False) -> LinkList:
    found = await auth.list_telegram_links(
        auth_pb2.ListTelegramLinksRequest(include_revoked=include_revoked), token
    )
    return LinkList(links=[link_out(link) for link in found.links])


@router.delete("/api/v1/telegram/links/{link_id}", response_model=LinkOut)
async def unlink(link_id: str, _: CurrentUser, token: Token, auth: Auth) -> LinkOut:
    """Your own link (also with that link's own key, which the bot uses), or any link for an admin."""
    return link_out(await auth.revoke_telegram_link(auth_pb2.RevokeTelegramLinkRequest(id=link_id), token))


@router.get("/api/v1/admin/telegram/links", response_model=LinkList)
async def admin_list_links(
    _: AdminUser,
    token: Token,
    auth: Auth,
    owner: Annotated[str, Query(max_length=64, description="a username; empty: everyone")] = "",
    include_revoked: bool = False,
) -> LinkList:
    found = await auth.list_telegram_links(
        auth_pb2.ListTelegramLinksRequest(owner_username=owner or "*", include_revoked=include_revoked), token
    )
    return LinkList(links=[link_out(link) for link in found.links])
