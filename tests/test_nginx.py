"""What nginx promises: TLS only, redirects from HTTP, security headers, no buffering, the web page."""

from __future__ import annotations

import re
import ssl
import warnings
from importlib import resources

import httpx
import pytest

from tests.harness import RunningStack


def test_http_redirects_to_https(live: RunningStack) -> None:
    response = httpx.get(f"http://127.0.0.1:{live.cfg.ports.http}/ask?x=1", follow_redirects=False)
    assert response.status_code == 301
    assert response.headers["location"] == f"https://127.0.0.1:{live.cfg.ports.https}/ask?x=1"


def test_security_headers_on_every_answer(live: RunningStack) -> None:
    with live.client() as client:
        for response in (client.get("/"), client.post("/ask", json={})):
            assert response.headers["strict-transport-security"].startswith("max-age=")
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert response.headers["x-frame-options"] == "DENY"


def test_tls_below_1_2_is_refused(live: RunningStack) -> None:
    context = live.tls_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    # Without this the client's own OpenSSL refuses TLS 1.1, and the test would prove nothing about nginx.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((httpx.ConnectError, ssl.SSLError)):
        httpx.get(f"{live.base_url}/health", verify=context)
    # The same client with TLS 1.2 gets through: the refusal above is about the version.
    context = live.tls_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert httpx.get(f"{live.base_url}/health", verify=context).status_code == 200


def test_http2_is_offered(live: RunningStack) -> None:
    context = live.tls_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    import socket

    with socket.create_connection(("localhost", live.cfg.ports.https)) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_metrics_are_not_public(live: RunningStack) -> None:
    with live.client() as client:
        assert client.get("/metrics").status_code == 404


# Ways to turn a string into live HTML or code: none may appear in any script the pages load.
_HTML_SINKS = (
    "innerHTML",
    "outerHTML",
    "insertAdjacentHTML",
    "document.write",
    "createContextualFragment",
    "DOMParser",
    "srcdoc",
    "eval(",
    "new Function",
)


def test_web_pages_show_model_output_as_text_only(live: RunningStack) -> None:
    static = resources.files("genai_gateway") / "static"
    scripts = sorted(entry.name for entry in static.iterdir() if entry.name.endswith(".js"))
    pages = sorted(entry.name for entry in static.iterdir() if entry.name.endswith(".html"))
    assert {"app.js", "admin.js", "markdown.js"} <= set(scripts)
    with live.client() as client:
        root = client.get("/")
        served_pages = {name: client.get(f"/static/{name}") for name in pages}
        served_scripts = {name: client.get(f"/static/{name}") for name in scripts}
    assert root.status_code == 200 and 'id="ask-form"' in root.text
    for name, page in served_pages.items():
        assert page.status_code == 200, name
        # The CSP allows scripts and styles from files only: nothing inline that it would block.
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page.text) == [], name
        assert " style=" not in page.text and "<style" not in page.text, name
        assert not re.search(r"\son[a-z]+\s*=", page.text), name
    for name, script in served_scripts.items():
        assert script.status_code == 200, name
        assert "javascript" in script.headers["content-type"], name
        for sink in _HTML_SINKS:
            assert sink not in script.text, f"{name} uses {sink}"
    # Model output goes through the Markdown renderer, which makes elements and text nodes only.
    assert "createTextNode" in served_scripts["markdown.js"].text
    assert 'from "./markdown.js"' in served_scripts["app.js"].text


def test_shipped_config_allows_only_tls_1_2_and_1_3(live: RunningStack) -> None:
    # The handshake test above also passes where the system's OpenSSL refuses old versions by itself;
    # this one fails if the config ever lists them.
    rendered = (live.cfg.work_dir / "nginx" / "genai.conf").read_text()
    protocols = [
        line.split()[1:] for line in rendered.splitlines() if line.strip().startswith("ssl_protocols")
    ]
    assert protocols == [["TLSv1.2", "TLSv1.3;"]]
