"""Monitoring as code (deploy/monitoring/): checked by Prometheus' own tools, then run for real.

- `promtool check config` / `check rules` on the shipped files;
- `promtool test rules`: every alert shown firing with synthetic series, and not firing (too short, or
  healthy series);
- the Grafana dashboard's structure, as Grafana's file provisioning loads it;
- a real Prometheus (Debian's package) with the shipped configuration pointed at the test stack: after
  known traffic every panel's expression returns data, and the counters match what was sent.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from genai_devstack import infra
from tests.harness import RunningStack

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
ALERTS = MONITORING / "prometheus" / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "genai.json"
PROVISIONING = MONITORING / "grafana" / "provisioning"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.skip(
            f"{name} is not installed (Debian: apt-get install prometheus; scripts/install-system-deps.sh)"
        )
    return found


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("promtool"), *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=60
    )


# --- promtool ----------------------------------------------------------------------------------------------


def test_promtool_accepts_the_configuration_and_the_rules() -> None:
    config = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _promtool("check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert re.search(r"SUCCESS: \d+ rules found", rules.stdout)


def test_promtool_check_rejects_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m]\n")
    assert _promtool("check", "rules", str(broken)).returncode != 0


def _alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def _expected_annotations(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, str]:
    """The rule's annotations as Prometheus renders them for an alert with these labels (they use
    `{{ $labels.x }}` only, never values)."""
    rendered = {}
    for key, text in rule["annotations"].items():
        rendered[key] = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)
        assert "{{" not in rendered[key], f"{rule['alert']}: only $labels templates can be checked here"
    return rendered


A = 'instance="a:9100"'
# alert -> (series firing it, minutes until it fires, labels it fires with, series that never fire it).
# Each case is evaluated just before `for` runs out (not firing yet) and after (firing); the healthy series
# are evaluated at the later time too.
CASES: dict[str, tuple[list[tuple[str, str]], int, dict[str, str], list[tuple[str, str]]]] = {
    "GenAIModelDown": (
        [(f'genai_adapter_upstream_up{{job="inference-adapter",{A}}}', "1 0x15")],
        4,
        {"job": "inference-adapter", "instance": "a:9100"},
        [
            (f'genai_adapter_upstream_up{{job="inference-adapter",{A}}}', "1x15"),
            (f'up{{job="vllm",{A}}}', "1x15"),
        ],
    ),
    "GenAIServiceDown": (
        [(f'up{{job="history",{A}}}', "0x15")],
        3,
        {"job": "history", "instance": "a:9100"},
        [(f'up{{job="history",{A}}}', "1x15"), (f'up{{job="node",{A}}}', "0x15")],
    ),
    "GenAIHighErrorRatio": (
        [
            ('genai_http_requests_total{route="/ask",method="POST",status="200"}', "0+90x20"),
            ('genai_http_requests_total{route="/ask",method="POST",status="503"}', "0+10x20"),
        ],
        7,
        {},
        [
            ('genai_http_requests_total{route="/ask",method="POST",status="200"}', "0+99x20"),
            ('genai_http_requests_total{route="/ask",method="POST",status="503"}', "0+1x20"),
        ],
    ),
    "GenAISlowFirstToken": (
        [
            ('genai_adapter_time_to_first_token_seconds_bucket{le="1.0"}', "0+1x30"),
            ('genai_adapter_time_to_first_token_seconds_bucket{le="10.0"}', "0+100x30"),
            ('genai_adapter_time_to_first_token_seconds_bucket{le="+Inf"}', "0+100x30"),
        ],
        12,
        {},
        [
            ('genai_adapter_time_to_first_token_seconds_bucket{le="1.0"}', "0+100x30"),
            ('genai_adapter_time_to_first_token_seconds_bucket{le="10.0"}', "0+100x30"),
            ('genai_adapter_time_to_first_token_seconds_bucket{le="+Inf"}', "0+100x30"),
        ],
    ),
    "GenAIQueueSaturated": (
        [
            (f"genai_adapter_queue_waiting{{{A}}}", "800x20"),
            (f"genai_adapter_queue_limit{{{A}}}", "1000x20"),
            (f'genai_adapter_queue_rejected_total{{reason="queue_full",{A}}}', "0x20"),
        ],
        6,
        {},
        [
            (f"genai_adapter_queue_waiting{{{A}}}", "10x20"),
            (f"genai_adapter_queue_limit{{{A}}}", "1000x20"),
            (f'genai_adapter_queue_rejected_total{{reason="queue_full",{A}}}', "0x20"),
            (f'genai_adapter_queue_rejected_total{{reason="cancelled",{A}}}', "0+5x20"),
        ],
    ),
    "GenAIRedisDown": (
        [(f'genai_redis_up{{job="gateway",{A}}}', "1 0x10")],
        3,
        {"job": "gateway", "instance": "a:9100"},
        [(f'genai_redis_up{{job="gateway",{A}}}', "1x10")],
    ),
    "GenAIRedisFull": (
        # Writes refused from minute 4 on.
        [
            (
                f'genai_redis_errors_total{{command="RPUSH",error="OutOfMemoryError",job="gateway",{A}}}',
                "0x3 1+1x10",
            )
        ],
        5,
        {"job": "gateway", "instance": "a:9100"},
        [
            (
                f'genai_redis_errors_total{{command="RPUSH",error="OutOfMemoryError",job="gateway",{A}}}',
                "0x10",
            ),
            (f'genai_redis_errors_total{{command="GET",error="TimeoutError",job="gateway",{A}}}', "0+1x10"),
        ],
    ),
    "GenAIPostgresDown": (
        [(f'genai_postgres_up{{job="history",{A}}}', "1 0x10")],
        3,
        {"job": "history", "instance": "a:9100"},
        [(f'genai_postgres_up{{job="history",{A}}}', "1x10")],
    ),
    "GenAIHistorySpoolGrowing": (
        [(f'genai_history_spool_depth{{job="gateway",{A}}}', "0+5x40")],
        12,
        {},
        # Drained as fast as it fills: never growing.
        [(f'genai_history_spool_depth{{job="gateway",{A}}}', "3x40")],
    ),
    "GenAICertificateExpiresSoon": (
        # Expires 10 days after the start of the test (time() is 0 there).
        [
            (
                f'genai_tls_certificate_expiry_timestamp_seconds{{certificate="public",job="gateway",{A}}}',
                "864000x20",
            )
        ],
        11,
        {"certificate": "public", "job": "gateway", "instance": "a:9100"},
        [
            (
                f'genai_tls_certificate_expiry_timestamp_seconds{{certificate="public",job="gateway",{A}}}',
                "8640000x20",
            )
        ],
    ),
    "GenAIPostgresDiskLow": (
        [
            (f'node_filesystem_avail_bytes{{mountpoint="/pgdata",job="node",{A}}}', "5x20"),
            (f'node_filesystem_size_bytes{{mountpoint="/pgdata",job="node",{A}}}', "100x20"),
        ],
        11,
        {"mountpoint": "/pgdata", "job": "node", "instance": "a:9100"},
        [
            (f'node_filesystem_avail_bytes{{mountpoint="/pgdata",job="node",{A}}}', "50x20"),
            (f'node_filesystem_size_bytes{{mountpoint="/pgdata",job="node",{A}}}', "100x20"),
            (f'node_filesystem_avail_bytes{{mountpoint="/",job="node",{A}}}', "1x20"),
            (f'node_filesystem_size_bytes{{mountpoint="/",job="node",{A}}}', "100x20"),
        ],
    ),
    "GenAIPostgresDiskFillsIn24h": (
        # 1 GB free, losing 10 MB a minute: gone in under 2 hours.
        [(f'node_filesystem_avail_bytes{{mountpoint="/pgdata",job="node",{A}}}', "1000000000-10000000x60")],
        31,
        {"mountpoint": "/pgdata", "job": "node", "instance": "a:9100"},
        [(f'node_filesystem_avail_bytes{{mountpoint="/pgdata",job="node",{A}}}', "1000000000-1x60")],
    ),
    "GenAICredentialFeedLost": (
        [(f'genai_gateway_auth_feed_heard{{job="gateway",{A}}}', "1 0x10")],
        7,
        {"instance": "a:9100"},
        [(f'genai_gateway_auth_feed_heard{{job="gateway",{A}}}', "1x10")],
    ),
}


def test_every_alert_has_a_case_and_runbook_text() -> None:
    rules = _alert_rules()
    assert set(CASES) == set(rules)
    for name, rule in rules.items():
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), name
        assert len(annotations["runbook"]) > 30, name
        assert rule["labels"]["severity"] in ("critical", "warning"), name


def test_alerts_fire_and_do_not_fire(tmp_path: Path) -> None:
    rules = _alert_rules()
    tests = []
    for name, (firing, at_min, labels, healthy) in CASES.items():
        rule = rules[name]
        expected = {**labels, "severity": rule["labels"]["severity"]}
        firing_alert = {"exp_labels": expected, "exp_annotations": _expected_annotations(rule, expected)}
        tests.append(
            {
                "name": f"{name} fires",
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in firing],
                "alert_rule_test": [
                    # Before its `for` has run out: pending, not firing.
                    {"eval_time": f"{at_min - 2}m", "alertname": name, "exp_alerts": []},
                    {"eval_time": f"{at_min}m", "alertname": name, "exp_alerts": [firing_alert]},
                ],
            }
        )
        tests.append(
            {
                "name": f"{name} stays silent",
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in healthy],
                "alert_rule_test": [{"eval_time": f"{at_min}m", "alertname": name, "exp_alerts": []}],
            }
        )
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests})
    )
    result = _promtool("test", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- the dashboard -------------------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panel_queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"]) for panel in _dashboard()["panels"] for target in panel["targets"]
    ]


def test_dashboard_is_in_grafanas_provisioning_format() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "genai.yml").read_text())
    assert provider["apiVersion"] == 1
    (files,) = provider["providers"]
    assert files["type"] == "file" and files["options"]["path"] == "/var/lib/grafana/dashboards"
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["url"] == "http://prometheus:9090"
    # The compose file mounts what the provisioning files name.
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./monitoring/grafana/dashboards:/var/lib/grafana/dashboards:ro,z" in mounts
    assert "./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro,z" in mounts

    dashboard = _dashboard()
    # A dashboard file for provisioning is the dashboard model itself: no "dashboard" wrapper, no id.
    assert "dashboard" not in dashboard and dashboard.get("id") is None
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids)
    for panel in panels:
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"]["uid"] == prometheus["uid"], panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        refs = [target["refId"] for target in panel["targets"]]
        assert panel["targets"] and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == prometheus["uid"]
            assert target["expr"].strip()
    # What the issue asks the dashboard to show.
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in ("traffic", "latency", "first token", "tokens per second", "queue", "kv cache", "cache hit",
                  "refusals", "errors by service", "dependency health"):  # fmt: skip
        assert topic in titles, topic


def test_every_panel_is_described_in_the_operations_guide() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    for panel in _dashboard()["panels"]:
        assert f"**{panel['title']}**" in guide, panel["title"]
    for alert in _alert_rules():
        assert f"`{alert}`" in guide, alert


def test_every_panel_expression_parses() -> None:
    # promtool has no expression check of its own: a rule file of the panels' expressions is one.
    rules = [
        {"record": f"panel:{n}", "expr": _for_prometheus(expr)}
        for n, (_, expr) in enumerate(_panel_queries())
    ]
    with_rules = Path(_tmp_file(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]})))
    try:
        result = _promtool("check", "rules", str(with_rules))
    finally:
        with_rules.unlink()
    assert result.returncode == 0, result.stdout + result.stderr


def _tmp_file(text: str) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        handle.write(text)
        return handle.name


# Grafana's interval variable, as Grafana would set it for a 1 s scrape interval in the test.
RATE_INTERVAL = "20s"


def _for_prometheus(expr: str) -> str:
    return expr.replace("$__rate_interval", RATE_INTERVAL)


# --- a real Prometheus on the test stack ---------------------------------------------------------------------

# The jobs of prometheus.yml, and which process of the test stack each one scrapes.
JOB_PROCESSES = {
    "gateway": "gateway",
    "auth": "auth",
    "history": "history",
    "inference-adapter": "adapter",
    "vllm": "upstream",
}


def _config_for(stack: RunningStack, rules_dir: Path) -> dict[str, Any]:
    """The shipped configuration, its service discovery replaced by the test stack's addresses."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["global"]["scrape_timeout"] = "1s"
    config["rule_files"] = [str(rules_dir / Path(name).name) for name in config["rule_files"]]
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name == "prometheus":
            jobs.append(job)
            continue
        if name not in JOB_PROCESSES:
            continue  # node-exporter: not part of the test stack
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{stack.metrics_port(JOB_PROCESSES[name])}"]}]
        jobs.append(job)
    assert {job["job_name"] for job in jobs} == {*JOB_PROCESSES, "prometheus"}
    config["scrape_configs"] = jobs
    return config


@contextlib.contextmanager
def _prometheus(stack: RunningStack, work: Path) -> Iterator[str]:
    """A Prometheus process of this test's own; stopped however the test ends."""
    binary = _tool("prometheus")
    port = infra.free_port()
    shutil.copy(ALERTS, work / ALERTS.name)
    config = _config_for(stack, work)
    # The self-scrape target is Prometheus' own port here.
    for job in config["scrape_configs"]:
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    config_file = work / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = open(stack.log_dir / "prometheus.log", "ab")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {proc.returncode}; see {stack.log_dir / 'prometheus.log'}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus not ready within 30 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def _value(url: str, expr: str) -> float:
    result = _query(url, expr)
    return float(result[0]["value"][1]) if result else 0.0


def _wait_for(url: str, expr: str, predicate: Any, timeout_s: float = 20) -> float:
    deadline = time.monotonic() + timeout_s
    value = _value(url, expr)
    while not predicate(value) and time.monotonic() < deadline:
        time.sleep(0.25)
        value = _value(url, expr)
    return value


# What the test sends, and the counters that must show exactly that.
MISSES = 3
HITS = 2
REFUSALS = 1


def _send_traffic(stack: RunningStack) -> None:
    user = stack.new_user()
    marker = uuid.uuid4().hex
    with stack.client() as client:
        # Misses: new questions; hits: the first of them again.
        for n in range(MISSES):
            answer = client.post("/ask", json={"prompt": f"{marker} question {n}"}, headers=user.headers)
            assert answer.status_code == 200 and answer.json()["source"] == "model", answer.text
        for _ in range(HITS):
            again = client.post("/ask", json={"prompt": f"{marker} question 0"}, headers=user.headers)
            assert again.status_code == 200 and again.json()["source"] == "cache", again.text
        # A streamed answer, read to its end (a miss as well).
        body = {"prompt": f"{marker} streamed", "stream": True}
        with client.stream("POST", "/ask", json=body, headers=user.headers) as streamed:
            assert streamed.status_code == 200
            assert any(
                "[DONE]" in line or '"type": "done"' in line or '"done"' in line
                for line in streamed.iter_lines()
            )
        # A cancelled one: the client leaves after the first piece (a miss too).
        body = {
            "messages": [{"role": "user", "content": f"{marker} cancelled"}],
            "stream": True,
            "max_tokens": 200,
        }
        with client.stream("POST", "/v1/chat/completions", json=body, headers=user.headers) as cancelled:
            assert cancelled.status_code == 200
            for line in cancelled.iter_lines():
                if line.startswith("data: {"):
                    break
    # A refusal: one request a minute for this user, then a second within the minute.
    limited = stack.new_user()
    stack.set_limits(limited, requests_per_minute=1)
    with stack.client() as client:
        first = client.post("/ask", json={"prompt": f"{marker} limited"}, headers=limited.headers)
        refused = client.post("/ask", json={"prompt": f"{marker} limited again"}, headers=limited.headers)
    assert first.status_code == 200 and refused.status_code == 429


def test_a_real_prometheus_scrapes_the_stack_and_every_panel_has_data(
    sim_stack: RunningStack, tmp_path: Path
) -> None:
    counters = {
        "misses": 'sum(genai_gateway_cache_lookups_total{job="gateway",result="miss"})',
        "hits": 'sum(genai_gateway_cache_lookups_total{job="gateway",result="hit"})',
        "refusals": 'sum(genai_gateway_limited_total{job="gateway",limit="requests_per_minute"})',
        "streams": 'sum(genai_adapter_generation_seconds_count{method="GenerateStream"})',
        "cancelled": 'sum(genai_adapter_cancelled_total{stage="generating"})',
        "ttft": "sum(genai_adapter_time_to_first_token_seconds_count)",
    }
    with _prometheus(sim_stack, tmp_path) as url:
        # Every target up, and the counters as they are before the traffic.
        _wait_for(url, "count(up == 1)", lambda v: v == len(JOB_PROCESSES) + 1)
        targets = {r["metric"]["job"]: r["value"][1] for r in _query(url, "up")}
        assert targets == dict.fromkeys([*JOB_PROCESSES, "prometheus"], "1"), targets
        before = {name: _wait_for(url, expr, lambda v: v >= 0) for name, expr in counters.items()}
        # Each counter's series exists before the traffic (label values are made up front).
        for name, expr in counters.items():
            assert _query(url, expr), name

        _send_traffic(sim_stack)

        # Misses: MISSES questions, the streamed one and the cancelled one, and the limited user's first.
        expected = {
            "misses": before["misses"] + MISSES + 3,
            "hits": before["hits"] + HITS,
            "refusals": before["refusals"] + REFUSALS,
            # The streamed /ask and the cancelled one each open a GenerateStream; only the first finishes.
            "streams": before["streams"] + 1,
            "cancelled": before["cancelled"] + 1,
            "ttft": before["ttft"] + 2,
        }
        after = {
            name: _wait_for(url, counters[name], lambda v, n=name: v >= expected[n]) for name in counters
        }
        # Another scrape or two later: nothing more than what was sent.
        time.sleep(2)
        after = {name: _value(url, expr) for name, expr in counters.items()}
        assert after == expected

        # Every panel's expression returns data from the scraped stack (rates need two scrapes in the window).
        empty = [(title, expr) for title, expr in _panel_queries() if not _query(url, _for_prometheus(expr))]
        assert not empty, f"panels without data: {empty}"
        # The alert rules are loaded and evaluate without error against the stack's real series.
        rules = [
            rule
            for group in httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
            for rule in group["rules"]
        ]
        assert {rule["name"] for rule in rules} == set(_alert_rules())
        assert {rule["name"]: rule["health"] for rule in rules} == dict.fromkeys(_alert_rules(), "ok")
        assert all(rule["state"] == "inactive" for rule in rules), [
            r["name"] for r in rules if r["state"] != "inactive"
        ]
