"""HTTP requests are counted by route template, logged with their request id, and errors name the id."""

from __future__ import annotations

import datetime
import json
import logging

import trustme
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from genai_common.logs import JsonFormatter
from genai_common.metrics import CertificateExpiry
from genai_gateway.errors import ApiError, install_handlers
from genai_gateway.middleware import MetricsMiddleware, RequestIdMiddleware


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    install_handlers(app)

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        if item_id == "missing":
            raise ApiError(404, "no such item")
        return {"id": item_id}

    return app


def _count(route: str, method: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "genai_http_requests_total", {"route": route, "method": method, "status": status}
    )
    return value or 0.0


def test_requests_are_counted_by_route_template_not_path() -> None:
    before_ok = _count("/items/{item_id}", "GET", "200")
    before_missing = _count("/items/{item_id}", "GET", "404")
    before_unmatched = _count("unmatched", "GET", "404")
    with TestClient(_app()) as client:
        for n in range(3):
            assert client.get(f"/items/{n}").status_code == 200
        assert client.get("/items/missing").status_code == 404
        assert client.get("/nowhere/at/all").status_code == 404
        assert client.request("BREW", "/items/1").status_code == 405
    assert _count("/items/{item_id}", "GET", "200") == before_ok + 3
    assert _count("/items/{item_id}", "GET", "404") == before_missing + 1
    assert _count("unmatched", "GET", "404") == before_unmatched + 1
    assert _count("/items/{item_id}", "other", "405") >= 1
    assert REGISTRY.get_sample_value("genai_http_requests_in_flight") == 0


def test_error_bodies_and_log_lines_carry_the_request_id() -> None:
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            # Formatted when logged, as the services' stdout handler does: the request id is in context.
            lines.append(self.format(record))

    handler = Capture()
    handler.setFormatter(JsonFormatter("gateway"))
    access = logging.getLogger("genai_gateway.middleware")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        with TestClient(_app()) as client:
            response = client.get("/items/missing", headers={"X-Request-ID": "abc-123"})
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["request_id"] == "abc-123"
    entry = json.loads(lines[-1])
    assert (entry["request_id"], entry["route"], entry["status"]) == ("abc-123", "/items/{item_id}", 404)


def test_certificate_expiry_is_read_from_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = trustme.CA()
    not_after = datetime.datetime(2031, 5, 1, 12, 0, tzinfo=datetime.UTC)
    cert = ca.issue_cert("genai.example.test", not_after=not_after)
    path = tmp_path / "server.crt"
    cert.cert_chain_pems[0].write_to_path(str(path))
    samples = {
        s.labels["certificate"]: s.value
        for family in CertificateExpiry({"public": str(path), "gone": str(tmp_path / "none.crt")}).collect()
        for s in family.samples
    }
    assert samples == {"public": not_after.timestamp(), "gone": 0.0}
