"""What tests read back: /sim/stats, /sim/reset, the cancelled counter and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import re

import httpx

from genai_vllmsim.launcher import SimulatorProcess

MESSAGES = [{"role": "user", "content": "count me"}]


def metric(text: str, name: str, labels: str = 'model_name="sim-model"') -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{{{labels}}} not in metrics"
    return float(match.group(1))


def test_stats_record_requests_and_reset(sim: SimulatorProcess) -> None:
    for i in range(25):
        httpx.post(sim.url + "/completions", json={"prompt": f"p{i}", "max_tokens": 1})
    stats = sim.stats()
    assert (stats["started"], stats["finished"], stats["cancelled"]) == (25, 25, 0)
    assert (stats["running"], stats["waiting"]) == (0, 0)
    # Only the last 20 bodies, oldest first, exactly as sent.
    assert [r["prompt"] for r in stats["last_requests"]] == [f"p{i}" for i in range(5, 25)]
    assert stats["last_requests"][-1] == {"prompt": "p24", "max_tokens": 1}

    sim.reset()
    stats = sim.stats()
    assert (stats["started"], stats["finished"], stats["last_requests"]) == (0, 0, [])


def test_metrics_use_vllm_names(sim: SimulatorProcess) -> None:
    httpx.post(sim.url + "/chat/completions", json={"messages": MESSAGES})
    httpx.post(sim.url + "/chat/completions", json={"messages": MESSAGES, "max_tokens": 3})
    resp = httpx.get(sim.base_url + "/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert metric(text, "vllm:num_requests_running") == 0
    assert metric(text, "vllm:num_requests_waiting") == 0
    assert metric(text, "vllm:request_success_total", 'finished_reason="stop",model_name="sim-model"') == 1
    assert metric(text, "vllm:request_success_total", 'finished_reason="length",model_name="sim-model"') == 1
    assert metric(text, "vllm:prompt_tokens_total") == 4
    assert metric(text, "vllm:generation_tokens_total") == 8 + 3
    assert metric(text, "vllm:time_to_first_token_seconds_count") == 2
    assert metric(text, "vllm:time_to_first_token_seconds_bucket", 'le="+Inf",model_name="sim-model"') == 2
    assert metric(text, "genai_sim_requests_started_total") == 2
    assert metric(text, "genai_sim_requests_cancelled_total") == 0
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text


async def _poll_cancelled(client: httpx.AsyncClient, expected: int) -> dict[str, int]:
    for _ in range(500):
        stats = (await client.get("/sim/stats")).json()
        if stats["cancelled"] >= expected:
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError(f"cancelled never reached {expected}: {stats}")


async def test_client_closing_mid_stream_cancels_generation(sim: SimulatorProcess) -> None:
    headers = {"x-sim-itl-ms": "50", "x-sim-output-tokens": "200"}
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=30) as client:
        chunks = 0
        request = {"messages": MESSAGES, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=request, headers=headers) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    chunks += 1
                if chunks == 3:
                    break
        # Leaving the block closes the connection: the simulator must notice and stop generating.
        stats = await _poll_cancelled(client, 1)
        assert (stats["cancelled"], stats["finished"], stats["running"]) == (1, 0, 0)
        assert stats["generation_tokens"] < 200
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "genai_sim_requests_cancelled_total") == 1


async def test_client_giving_up_on_whole_answer_cancels_generation(sim: SimulatorProcess) -> None:
    headers = {"x-sim-ttft-ms": "5000"}
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=30) as client:
        with_timeout = httpx.AsyncClient(base_url=sim.base_url, timeout=0.3)
        try:
            request = {"messages": MESSAGES}
            try:
                await with_timeout.post("/v1/chat/completions", json=request, headers=headers)
                raise AssertionError("the request should have timed out")
            except httpx.ReadTimeout:
                pass
        finally:
            await with_timeout.aclose()
        stats = await _poll_cancelled(client, 1)
        assert (stats["cancelled"], stats["finished"], stats["running"]) == (1, 0, 0)


def test_metrics_of_the_dashboard_use_vllm_names(sim: SimulatorProcess) -> None:
    headers = {"x-sim-itl-ms": "5", "x-request-id": "rid-123"}
    # 40 words: two whole blocks of 16 tokens, and a partial one that is never cached.
    messages = [{"role": "user", "content": " ".join(f"w{i}" for i in range(40))}]
    streamed = httpx.post(
        sim.url + "/chat/completions", json={"messages": messages, "stream": True}, headers=headers
    )
    whole = httpx.post(sim.url + "/chat/completions", json={"messages": messages}, headers=headers)
    # The caller's request id comes back, as vLLM's does.
    assert streamed.headers["x-request-id"] == whole.headers["x-request-id"] == "rid-123"
    text = httpx.get(sim.base_url + "/metrics").text
    # 8 tokens each: 7 gaps per answer, streamed or not.
    assert metric(text, "vllm:inter_token_latency_seconds_count") == 14
    assert metric(text, "vllm:time_per_output_token_seconds_count") == 14
    # The second identical prompt finds the first one's two whole blocks in the (simulated) prefix cache.
    assert metric(text, "vllm:prefix_cache_queries_total") == 80
    assert metric(text, "vllm:prefix_cache_hits_total") == 32
    assert metric(text, "vllm:kv_cache_usage_perc") == 0
    assert "# TYPE vllm:kv_cache_usage_perc gauge" in text
