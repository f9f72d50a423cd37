"""API keys of LiteLLM's feature-matched configuration, checked inside its proxy (its `custom_auth` hook).

LiteLLM keeps virtual keys and their limits in PostgreSQL through Prisma, whose query and schema engines
are native binaries that Prisma downloads from its own server at install time; no package on the
registries the bench may use ships them, so that database cannot run here. The keys and their limits
come instead from a JSON file the bench writes (named by BENCH_LITELLM_KEYS): {sha-256 of the key:
{"key_alias", "rpm_limit", "tpm_limit", "max_parallel_requests"}}. What LiteLLM does with them is its
own: its rate limiter counts every request and token of the key in Redis, shared by all its workers.

This file runs inside LiteLLM's virtual environment only (copied beside its config); the bench never
imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from fastapi import HTTPException, Request
from litellm.proxy._types import UserAPIKeyAuth


def _load() -> dict[str, dict[str, Any]]:
    with open(os.environ["BENCH_LITELLM_KEYS"], encoding="utf-8") as f:
        keys: dict[str, dict[str, Any]] = json.load(f)
    return keys


# Read once per worker, like LiteLLM's own in-memory cache of the keys it read from its database.
_KEYS = _load()


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    # Stored and compared as SHA-256, as LiteLLM stores its virtual keys: a leaked file holds no key.
    token = hashlib.sha256(api_key.removeprefix("Bearer ").strip().encode()).hexdigest()
    entry = _KEYS.get(token)
    if entry is None:
        raise HTTPException(status_code=401, detail="invalid API key")
    return UserAPIKeyAuth(
        api_key=token,
        token=token,
        key_alias=entry.get("key_alias"),
        rpm_limit=entry.get("rpm_limit"),
        tpm_limit=entry.get("tpm_limit"),
        max_parallel_requests=entry.get("max_parallel_requests"),
    )
