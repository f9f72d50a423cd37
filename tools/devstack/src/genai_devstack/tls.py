"""A local certificate authority and a server certificate for nginx (embedded default and tests).

Production uses a corporate CA or its own certificate; this is for one machine, where users pass the CA
file to their clients (curl --cacert, REQUESTS_CA_BUNDLE, SSL_CERT_FILE) instead of turning checks off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def ensure_certificates(
    directory: Path, hostnames: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
) -> TlsFiles:
    """Make the CA and the server certificate once; later calls reuse them."""
    files = TlsFiles(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")
    if files.ca.exists() and files.cert.exists() and files.key.exists():
        return files
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="GenAI local CA")
    server = ca.issue_cert(*hostnames)
    ca.cert_pem.write_to_path(str(files.ca))
    server.private_key_pem.write_to_path(str(files.key))
    os.chmod(files.key, 0o600)
    with open(files.cert, "wb") as chain:
        for blob in server.cert_chain_pems:
            chain.write(blob.bytes())
    return files
