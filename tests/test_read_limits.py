"""Exports and searches, the expensive reads, are limited per user (so many a minute), through nginx."""

from __future__ import annotations

import uuid

from tests.harness import RunningStack


def test_exports_beyond_the_limit_get_429_with_retry_after(live: RunningStack) -> None:
    user, other = live.new_user(), live.new_user()
    with live.client() as client:
        asked = client.post(
            "/ask", json={"prompt": f"Hello {uuid.uuid4().hex[:6]}", "max_tokens": 4}, headers=user.headers
        )
        assert asked.status_code == 200, asked.text
        conversation_id = asked.json()["conversation_id"]
        # The default limit is 10 exports a minute; whole and single-conversation exports count together.
        codes = [
            client.get(
                f"/api/v1/history/{conversation_id}/export" if n % 2 else "/api/v1/history/export",
                params={"format": "csv"},
                headers=user.headers,
            ).status_code
            for n in range(10)
        ]
        assert codes == [200] * 10
        refused = client.get("/api/v1/history/export", params={"format": "json"}, headers=user.headers)
        # Someone else's exports are their own.
        theirs = client.get("/api/v1/history/export", headers=other.headers)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["detail"].startswith("exports: rate limit of 10 requests per minute reached")
    assert theirs.status_code == 200


def test_searches_beyond_the_limit_get_429(live: RunningStack) -> None:
    user = live.new_user()
    with live.client() as client:
        codes = [
            client.get("/api/v1/history/search", params={"q": f"word{n}"}, headers=user.headers).status_code
            for n in range(61)
        ]
    assert codes[:60] == [200] * 60, codes
    assert codes[60] == 429
