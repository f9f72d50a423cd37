"""nginx's own login flood guard (limit_req on /token), through the shipped site config."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from genai_devstack.nginx import repo_root
from tests.harness import RunningStack


def login_limit() -> tuple[float, int]:
    """(requests per second, burst) as deploy/nginx/genai.conf.template sets them."""
    site = (repo_root() / "deploy" / "nginx" / "genai.conf.template").read_text()
    rate = re.search(r"zone=genai_login:\S+ rate=(\d+)r/s;", site)
    burst = re.search(r"limit_req zone=genai_login burst=(\d+) nodelay;", site)
    assert rate and burst, "the login limit is gone from the site config"
    return float(rate.group(1)), int(burst.group(1))


def test_login_flood_gets_429_from_nginx_in_the_api_error_shape(live: RunningStack) -> None:
    rate, burst = login_limit()

    # Empty bodies: the gateway rejects them (422) without asking auth, so the auth service's own
    # per-address throttling (which other tests rely on) never counts these attempts. Three bursts'
    # worth at once: whatever earlier tests left in the bucket, most of these must be refused.
    async def flood() -> list[httpx.Response]:
        async with live.async_client(timeout=30) as client:
            return await asyncio.gather(*(client.post("/token", json={}) for _ in range(burst * 3)))

    try:
        responses = asyncio.run(flood())
        codes = [r.status_code for r in responses]
        limited = [r for r in responses if r.status_code == 429]
        assert set(codes) <= {422, 429}, codes
        # At most a full bucket plus what refills while the flood lasts gets through.
        assert len(limited) >= burst, codes
        body = limited[0].json()
        assert body["error"]["code"] == "429" and body["error"]["type"] == "rate_limit_error"
        assert body["detail"] == body["error"]["message"]
        # nginx's own answer still carries the security headers.
        assert limited[0].headers["strict-transport-security"].startswith("max-age=")
        assert limited[0].headers["content-type"].startswith("application/json")

        with live.client() as client:
            # Other paths are not limited by it.
            assert client.get("/health").status_code == 200
            # Logins work again moments later.
            deadline = time.monotonic() + 15
            while client.post("/token", json={}).status_code == 429:
                assert time.monotonic() < deadline, "the login limit did not recover"
                time.sleep(0.2)
    finally:
        # A full bucket again for the tests after this one, which log in many times.
        time.sleep(burst / rate)
