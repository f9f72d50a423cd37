"""Prometheus metrics of every service, read from their own ports: present, named genai_, and bounded.

The stack on the vLLM simulator: requests are quick, and the simulator's vllm: metrics are read as
Prometheus reads vLLM's.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid

import httpx

from tests.harness import RunningStack, User

SERVICES = ("gateway", "auth", "history", "adapter")


def _names(stack: RunningStack, service: str) -> set[str]:
    return {name for name, _ in stack.metrics(service)}


def test_every_service_serves_its_metrics_on_its_own_port_and_nginx_hides_them(
    sim_stack: RunningStack,
) -> None:
    for service in SERVICES:
        names = _names(sim_stack, service)
        own = {name for name in names if name.startswith("genai_")}
        assert own, f"{service} serves no genai_ metrics"
    with sim_stack.client() as client:
        assert client.get("/metrics").status_code == 404
    # RED per gRPC method, from the one interceptor every gRPC service runs.
    for service in ("auth", "history", "adapter"):
        assert "genai_grpc_server_handled_total" in _names(sim_stack, service), service
        assert "genai_grpc_server_handling_seconds_bucket" in _names(sim_stack, service), service
    assert {"genai_postgres_up", "genai_postgres_query_seconds_count"} <= _names(sim_stack, "history")
    assert {"genai_postgres_up", "genai_redis_command_seconds_count"} <= _names(sim_stack, "auth")
    assert "genai_adapter_upstream_up" in _names(sim_stack, "adapter")
    gateway = _names(sim_stack, "gateway")
    assert {
        "genai_http_requests_total",
        "genai_http_request_duration_seconds_bucket",
        "genai_gateway_cache_lookups_total",
        "genai_gateway_limited_total",
        "genai_gateway_auth_feed_heard",
        "genai_gateway_redis_failure_policy_active",
        "genai_history_spool_depth",
        "genai_tls_certificate_expiry_timestamp_seconds",
        "genai_redis_command_seconds_count",
    } <= gateway
    upstream = _names(sim_stack, "upstream")
    assert {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:prefix_cache_hits_total",
    } <= upstream


def test_routes_are_labelled_by_template_and_the_certificate_expiry_is_the_served_ones(
    sim_stack: RunningStack,
) -> None:
    user = sim_stack.new_user()
    missing = str(uuid.uuid4())
    with sim_stack.client() as client:
        assert client.get(f"/api/v1/history/{missing}", headers=user.headers).status_code == 404
    samples = sim_stack.metrics("gateway")
    routes = {dict(labels).get("route") for name, labels in samples if name == "genai_http_requests_total"}
    assert "/api/v1/history/{conversation_id}" in routes
    assert not any(missing in str(route) for route in routes)
    from cryptography import x509

    served = x509.load_pem_x509_certificate(sim_stack.cfg.tls.cert.read_bytes())
    expiry = samples[("genai_tls_certificate_expiry_timestamp_seconds", (("certificate", "public"),))]
    assert expiry == served.not_valid_after_utc.timestamp()


# --- cardinality ------------------------------------------------------------------------------------------

USERS = 100
REQUESTS_PER_USER = 10
CONCURRENCY = 50


def _new_users(stack: RunningStack, count: int) -> list[User]:
    admin = {"Authorization": f"Bearer {stack.login(stack.admin_username, stack.admin_password)}"}

    async def one(client: httpx.AsyncClient, direct: httpx.AsyncClient, gate: asyncio.Semaphore) -> User:
        username, password = f"card{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(16)
        async with gate:
            created = await client.post(
                "/api/v1/users", json={"username": username, "password": password}, headers=admin
            )
            created.raise_for_status()
            # Straight to the gateway: nginx's login flood guard (10 a second per address) is not under test.
            token = await direct.post("/token", json={"username": username, "password": password})
            token.raise_for_status()
        return User(username, password, token.json()["access_token"], created.json()["id"])

    async def all_users() -> list[User]:
        gate = asyncio.Semaphore(16)
        gateway = f"http://127.0.0.1:{stack.cfg.ports.gateway}"
        async with stack.async_client() as client, httpx.AsyncClient(base_url=gateway, timeout=60) as direct:
            return list(await asyncio.gather(*(one(client, direct, gate) for _ in range(count))))

    return asyncio.run(all_users())


def _traffic(stack: RunningStack, users: list[User], per_user: int) -> list[str]:
    """`per_user` requests of each user through nginx, of every kind: new and repeated questions (misses,
    hits), streamed answers, the OpenAI route, history reads, and a 404. Returns the request ids."""

    async def one(client: httpx.AsyncClient, gate: asyncio.Semaphore, user: User, n: int) -> str:
        kind = n % 5
        async with gate:
            if kind == 0:
                response = await client.post(
                    "/ask",
                    json={"prompt": f"{user.username} question {n}", "max_tokens": 2},
                    headers=user.headers,
                )
            elif kind == 1:
                # The same for everybody: answered from the cache after the first.
                response = await client.post(
                    "/ask",
                    json={"prompt": "what is the capital of France?", "max_tokens": 2},
                    headers=user.headers,
                )
            elif kind == 2:
                body = {"prompt": f"{user.username} stream {n}", "max_tokens": 2, "stream": True}
                response = await client.post("/ask", json=body, headers=user.headers)
            elif kind == 3:
                body = {"messages": [{"role": "user", "content": f"{user.id} {n}"}], "max_tokens": 2}
                response = await client.post("/v1/chat/completions", json=body, headers=user.headers)
            else:
                response = await client.get(f"/api/v1/history/{uuid.uuid4()}", headers=user.headers)
        assert response.status_code in (200, 404), response.text
        return response.headers["x-request-id"]

    async def run() -> list[str]:
        gate = asyncio.Semaphore(CONCURRENCY)
        async with stack.async_client() as client:
            return list(
                await asyncio.gather(*(one(client, gate, user, n) for user in users for n in range(per_user)))
            )

    return asyncio.run(run())


def _series(stack: RunningStack) -> dict[str, set[tuple[str, tuple[tuple[str, str], ...]]]]:
    return {service: set(stack.metrics(service)) for service in (*SERVICES, "upstream")}


def test_series_stay_bounded_after_1000_requests_by_100_users(sim_stack: RunningStack) -> None:
    # A first round by a few users brings out every route, status and method the traffic uses.
    warm_users = _new_users(sim_stack, 5)
    _traffic(sim_stack, warm_users, REQUESTS_PER_USER)
    before = _series(sim_stack)
    users = _new_users(sim_stack, USERS)
    request_ids = _traffic(sim_stack, users, REQUESTS_PER_USER)
    assert len(request_ids) == USERS * REQUESTS_PER_USER
    after = _series(sim_stack)
    counts = {service: (len(before[service]), len(after[service])) for service in after}
    total = sum(len(series) for series in after.values())
    print(f"\nseries per process (after warm-up, after 1,000 requests by 100 users): {counts}; total {total}")
    for service, series in after.items():
        new = series - before[service]
        if new:
            print(
                service, "new:", sorted({name for name, _ in new}), sorted({labels for _, labels in new})[:6]
            )
        # User creation and logins add the admin routes' series once; nothing grows with the users.
        assert len(new) <= 60, f"{service}: {len(new)} new series, e.g. {sorted(new)[:5]}"
    # No label carries a user, a user id, a request id or a prompt.
    identities = {u.username for u in users} | {u.id for u in users} | set(request_ids)
    pattern = re.compile("|".join(re.escape(x) for x in identities))
    for service, series in after.items():
        for name, labels in series:
            for _, value in labels:
                assert not pattern.search(value), (
                    f"{service}: {name} has a per-user or per-request label {value}"
                )
    assert total < 5000
