"""Prometheus metrics shared by every service, and the port they are served on.

Every service serves its metrics on a port of its own (`metrics_port`), reached by Prometheus on the
internal network and never through nginx. Names start with `genai_`; labels take a small, fixed set of
values (a method, a route template, a status, a kind of failure), never a user, prompt or request id, so
the number of series stays the same however many people use the service.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Latency buckets for calls inside the service (RPCs, HTTP routes, Redis, PostgreSQL): 1 ms to 2 min.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
# Fast dependency calls (Redis, PostgreSQL): 0.1 ms to 5 s.
DEPENDENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
)


def serve_metrics(port: int, host: str = "0.0.0.0") -> Any:
    """Serve /metrics on `port` in a background thread; 0 serves nothing. Returns the HTTP server or None.

    A thread rather than the event loop: a scrape is answered even while the loop is busy, which is when
    the numbers matter most.
    """
    if not port:
        return None
    server, _thread = start_http_server(port, addr=host)
    logger.info("metrics on %s:%s/metrics", host, port)
    return server


class CertificateExpiry(Collector):
    """`genai_tls_certificate_expiry_timestamp_seconds{certificate}`: when each certificate file's first
    certificate stops being valid (Unix time), read at every scrape.

    nginx, which serves the public certificate, has no metrics of its own without an exporter or a module;
    the file it loads is mounted read-only into a service that has (the gateway), which reads it here. Read
    at scrape time, a renewed certificate shows at once, and no restart is needed. A file that cannot be
    read or parsed reports 0, which the expiry alert treats as expired: a broken path is found, not hidden.
    """

    NAME = "genai_tls_certificate_expiry_timestamp_seconds"

    def __init__(self, files: dict[str, str]) -> None:
        # Label value (a fixed name such as "public") -> path.
        self.files = files

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            self.NAME,
            "When the certificate stops being valid (notAfter), Unix time; 0 when the file cannot be read",
            labels=["certificate"],
        )
        for name, path in self.files.items():
            family.add_metric([name], _not_after(path))
        yield family


_reported: CertificateExpiry | None = None


def report_certificate(name: str, path: str) -> None:
    """Report `path`'s expiry date as genai_tls_certificate_expiry_timestamp_seconds{certificate=name}.

    One collector per process, registered on first use: a process that serves twice (tests) or reports
    several certificates (the gateway: "public" and "internal") never registers the metric twice.
    """
    global _reported
    if _reported is None:
        _reported = CertificateExpiry({})
        REGISTRY.register(_reported)
    _reported.files[name] = path


def _not_after(path: str) -> float:
    try:
        certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        logger.warning("cannot read the certificate %s: %s", path, type(exc).__name__)
        return 0.0
    return certificate.not_valid_after_utc.timestamp()
