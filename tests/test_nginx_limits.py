"""nginx's own guards, through the shipped site config: the login flood guard (limit_req on /token), stalled
bodies dropped (client_body_timeout) and a cap on the requests one address holds open (limit_conn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
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


def _site_setting(pattern: str, live: RunningStack | None = None) -> str:
    """A setting of the site as the template has it, or as `live` runs it (placeholders filled)."""
    if live is None:
        site = (repo_root() / "deploy" / "nginx" / "genai.conf.template").read_text()
    else:
        site = (live.cfg.work_dir / "nginx" / "genai.conf").read_text()
    found = re.search(pattern, site)
    assert found, f"`{pattern}` is gone from the site config"
    return found.group(1)


def _stalled_request(live: RunningStack) -> ssl.SSLSocket:
    """A TLS connection whose request promises a body and then sends only its first byte."""
    url = httpx.URL(live.base_url)
    raw = socket.create_connection((url.host, url.port), timeout=60)
    conn = live.tls_context().wrap_socket(raw, server_hostname=url.host)
    conn.sendall(
        b"POST /ask HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    return conn


def _read_response(conn: ssl.SSLSocket) -> bytes:
    """The server's response (head and body), or what it sent before closing; the socket's timeout is 60 s."""
    data = b""
    with contextlib.suppress(ssl.SSLError, ConnectionResetError):
        while chunk := conn.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if sep and length and len(body) >= int(length.group(1)):
                break
    return data


def test_a_stalled_body_is_dropped_not_waited_for(live: RunningStack) -> None:
    timeout_s = int(_site_setting(r"client_body_timeout (\d+)s;"))
    conn = _stalled_request(live)
    started = time.monotonic()
    try:
        answer = _read_response(conn)  # raises TimeoutError if nginx held the request for a minute
    finally:
        conn.close()
    print(f"stalled body dropped after {time.monotonic() - started:.1f} s (client_body_timeout {timeout_s}s)")
    # nginx answers 408 (or just closes); the gateway never saw the request.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_one_address_cannot_hold_more_than_its_share_of_requests(live: RunningStack) -> None:
    cap = int(_site_setting(r"limit_conn genai_per_addr (\d+);", live))
    extra = 10
    held = [_stalled_request(live) for _ in range(cap)]
    try:
        refused = []
        for _ in range(extra):
            conn = _stalled_request(live)
            try:
                refused.append(_read_response(conn))
            finally:
                conn.close()
        for answer in refused:
            assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
            body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert body["error"]["type"] == "rate_limit_error", body
    finally:
        for conn in held:
            conn.close()
    # Their slots are back as soon as those requests end.
    deadline = time.monotonic() + 30
    with live.client() as client:
        while (status := client.get("/health").status_code) == 429:
            assert time.monotonic() < deadline, "the per-address limit did not let go"
            time.sleep(0.2)
    assert status == 200


def test_a_body_beyond_the_memory_buffer_still_reaches_the_gateway(live: RunningStack) -> None:
    # 33 KB of JSON: past nginx's 16k in-memory buffer, so it goes through a temporary file, which nginx's
    # workers (an unprivileged user when the master runs as root) must be able to write. The gateway's own
    # answer (its prompt limit, not nginx's body limit) shows that the body reached it.
    buffer = _site_setting(r"client_body_buffer_size (\d+)k;")
    user = live.new_user()
    prompt = "я" * 16_500
    with live.client() as client:
        response = client.post("/ask", json={"prompt": prompt}, headers=user.headers)
    assert len(prompt.encode()) > int(buffer) * 1024
    assert response.status_code == 413, response.text
    assert "prompt is too long" in response.json()["detail"]
