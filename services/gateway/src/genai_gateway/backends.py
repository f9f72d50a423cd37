"""The gateway's long-lived clients: one gRPC channel and typed client per internal service, and Redis."""

from __future__ import annotations

import redis.asyncio as redis

from genai_common.grpc_client import create_channel
from genai_common.mtls import files_from_settings
from genai_common.redis_client import create_redis
from genai_gateway.clients import AuthClient, HistoryClient, ModelClient
from genai_gateway.credentials import CredentialCache, ForgetOnChange
from genai_gateway.flights import FOLLOW_BLOCK_S
from genai_gateway.settings import GatewaySettings


class Backends:
    """Created once in the app's lifespan, shared by every request, closed on shutdown."""

    def __init__(self, settings: GatewaySettings) -> None:
        # Who recently presented which token: most requests skip Authenticate (genai_gateway.credentials).
        self.credentials = CredentialCache(settings.auth_cache_ttl_s, settings.auth_cache_max_entries)
        # Mutual TLS with the gateway's own certificate; each channel accepts only the service it expects.
        mtls = files_from_settings(settings)
        self.auth_channel = create_channel(
            settings.auth_target,
            interceptors=[ForgetOnChange(self.credentials)],
            mtls=mtls,
            server_identity="auth",
        )
        self.history_channel = create_channel(settings.history_target, mtls=mtls, server_identity="history")
        self.adapter_channel = create_channel(settings.adapter_target, mtls=mtls, server_identity="adapter")
        self.auth = AuthClient(self.auth_channel, self.credentials, settings.auth_timeout_s)
        self.history = HistoryClient(
            self.history_channel, settings.history_timeout_s, settings.export_timeout_s
        )
        self.model = ModelClient(self.adapter_channel, settings.generate_timeout_s)
        self.redis: redis.Redis = create_redis(settings.redis_url, settings.redis_timeout_s)
        # The same state Redis for blocking reads (followers of another gateway's generation): a socket
        # timeout that outlasts the block, and a pool of their own, so that they never hold up the rest.
        self.blocking_redis: redis.Redis = create_redis(
            settings.redis_url, settings.redis_timeout_s + FOLLOW_BLOCK_S
        )
        # Cached answers and the similar-request index: a Redis of their own when one is set, else this one.
        self.cache_redis: redis.Redis = self.redis
        if settings.cache_redis_url and settings.cache_redis_url != settings.redis_url:
            self.cache_redis = create_redis(settings.cache_redis_url, settings.redis_timeout_s)

    async def close(self) -> None:
        for channel in (self.auth_channel, self.history_channel, self.adapter_channel):
            await channel.close()
        await self.redis.aclose()
        await self.blocking_redis.aclose()
        if self.cache_redis is not self.redis:
            await self.cache_redis.aclose()
