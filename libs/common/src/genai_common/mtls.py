"""Mutual TLS between the internal services: who a caller is, and whether it may call what it calls.

Every internal service (gateway, auth, history, adapter) holds a certificate of its own, issued by a
private CA, whose common name is its identity. Servers ask every caller for a certificate from that CA
and refuse plaintext, and `CallerPolicy` lets a caller reach only the methods its identity is allowed
(e.g. only the gateway may call history). Clients check the server's certificate against the identity
they expect to reach (the name they dial does not matter), so a container that took over another's
address cannot pose as it.

    python -m genai_common.mtls issue DIR [--days 365] [--renew-within 30] [--per-service]

makes the CA (`ca.pem`, `ca.key`) and one certificate and key per identity in DIR, once; run again, it
reissues the certificates that expire within `--renew-within` days and keeps the rest (docs/operations.md,
"Internal certificates"). `--per-service` also lays out DIR/<identity>/{ca.pem,cert.pem,key.pem}, the only
files that identity's container mounts.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The identities of the stack: one certificate each, its common name and DNS name.
IDENTITIES = ("gateway", "auth", "history", "adapter")
# Health checks may come from any identity of the CA (each container's probe uses its own certificate).
HEALTH_SERVICE = "grpc.health.v1.Health"
ANY_IDENTITY = frozenset({"*"})


@dataclass(frozen=True)
class MtlsFiles:
    """The CA that vouches for peers, and this service's own certificate chain and private key (PEM)."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


def files_in(directory: Path, identity: str) -> MtlsFiles:
    """Where `issue` puts an identity's files: DIR/ca.pem, DIR/<identity>.pem, DIR/<identity>.key."""
    return MtlsFiles(directory / "ca.pem", directory / f"{identity}.pem", directory / f"{identity}.key")


def settings_env(identity: str, files: MtlsFiles) -> dict[str, str]:
    """The environment that hands `files` to the service of `identity` (what `files_from_settings` reads)."""
    prefix = f"GENAI_{identity.upper()}_MTLS"
    return {
        f"{prefix}_CA_FILE": str(files.ca),
        f"{prefix}_CERT_FILE": str(files.cert),
        f"{prefix}_KEY_FILE": str(files.key),
    }


def files_from_settings(settings: Any) -> MtlsFiles | None:
    """The mTLS files a service's settings name (`GENAI_<SERVICE>_MTLS_CA_FILE`, `_CERT_FILE`, `_KEY_FILE`).

    Outside dev mode all three are required: an internal server never listens in plaintext. In dev mode,
    none at all means plaintext (a service run by hand); some but not all is an error everywhere.
    """
    prefix = str(settings.model_config.get("env_prefix") or "GENAI_")
    paths = {
        "CA": getattr(settings, "mtls_ca_file", ""),
        "CERT": getattr(settings, "mtls_cert_file", ""),
        "KEY": getattr(settings, "mtls_key_file", ""),
    }
    if not any(paths.values()):
        if getattr(settings, "env", "prod") == "dev":
            return None
        raise SystemExit(
            f"invalid settings: {prefix}MTLS_CA_FILE, {prefix}MTLS_CERT_FILE and {prefix}MTLS_KEY_FILE must "
            "be set: internal calls are mutual TLS (python -m genai_common.mtls issue makes the files)"
        )
    missing = [f"{prefix}MTLS_{kind}_FILE" for kind, path in paths.items() if not path]
    if missing:
        raise SystemExit(f"invalid settings: {', '.join(missing)} must be set with the other MTLS files")
    unreadable = [path for path in paths.values() if not os.access(path, os.R_OK)]
    if unreadable:
        raise SystemExit(f"invalid settings: cannot read {', '.join(unreadable)}")
    return MtlsFiles(ca=Path(paths["CA"]), cert=Path(paths["CERT"]), key=Path(paths["KEY"]))


def server_credentials(files: MtlsFiles) -> grpc.ServerCredentials:
    """TLS that requires a client certificate signed by the CA."""
    ca, cert, key = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(files: MtlsFiles) -> grpc.ChannelCredentials:
    """TLS that presents this service's certificate and trusts only servers signed by the CA."""
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def caller_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The common name of the caller's verified certificate; None on a plaintext connection."""
    names = (context.auth_context() or {}).get("x509_common_name") or []
    for name in names:
        return name.decode() if isinstance(name, bytes) else str(name)
    return None


class CallerPolicy:
    """Which identities may call which methods: keys are gRPC service names ("genai.history.v1.
    HistoryService") or full method paths ("/genai.history.v1.HistoryService/AdminExportConversations"),
    values the identities allowed (`ANY_IDENTITY`: any certificate of the CA). A method path's entry
    overrides its service's; a method that matches neither is refused to everyone."""

    def __init__(self, allowed: Mapping[str, Iterable[str]]) -> None:
        self._allowed = {key: frozenset(identities) for key, identities in allowed.items()}
        self._allowed.setdefault(HEALTH_SERVICE, ANY_IDENTITY)

    def allows(self, method_path: str, identity: str) -> bool:
        allowed = self._allowed.get(method_path)
        if allowed is None:
            allowed = self._allowed.get(method_path.lstrip("/").split("/", 1)[0], frozenset())
        return "*" in allowed or identity in allowed


# Issuing: a private CA and a certificate per identity, with the `cryptography` the services carry.

CA_DAYS = 3650
CERT_DAYS = 365


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.chmod(temporary, mode)
    temporary.replace(path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def ensure_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in `directory` (ca.pem, ca.key), made on first use."""
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    directory.mkdir(parents=True, exist_ok=True)
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "GenAI internal CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _pem_key(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def issue(
    directory: Path, identity: str, *, days: int = CERT_DAYS, hostnames: Iterable[str] = ()
) -> MtlsFiles:
    """A certificate for `identity` (its common name and DNS name, plus `hostnames`), valid both as a
    server's and as a client's, written to DIR/<identity>.pem and .key (replacing what was there)."""
    ca_cert, ca_key = ensure_ca(directory)
    key = _key()
    names: list[x509.GeneralName] = [x509.DNSName(identity)]
    names += [x509.DNSName(host) for host in hostnames if host != identity]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(min(_now() + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = files_in(directory, identity)
    _write(files.key, _pem_key(key), 0o600)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _expires_within(path: Path, days: int) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return True
    return cert.not_valid_after_utc - _now() < datetime.timedelta(days=days)


def ensure_all(
    directory: Path,
    identities: Iterable[str] = IDENTITIES,
    *,
    days: int = CERT_DAYS,
    renew_within_days: int = 30,
) -> dict[str, MtlsFiles]:
    """Every identity's certificate in `directory`, issued when missing or expiring within the window."""
    out = {}
    for identity in identities:
        files = files_in(directory, identity)
        if not files.key.exists() or _expires_within(files.cert, renew_within_days):
            files = issue(directory, identity, days=days)
        out[identity] = files
    return out


def lay_out_per_service(directory: Path, issued: Mapping[str, MtlsFiles], owner: int | None) -> None:
    """DIR/<identity>/{ca.pem,cert.pem,key.pem}: what one container mounts (its own key only)."""
    for identity, files in issued.items():
        target = directory / identity
        target.mkdir(mode=0o700, exist_ok=True)
        for source, name, mode in (
            (files.ca, "ca.pem", 0o644),
            (files.cert, "cert.pem", 0o644),
            (files.key, "key.pem", 0o600),
        ):
            _write(target / name, source.read_bytes(), mode)
            if owner is not None:
                os.chown(target / name, owner, owner)
        if owner is not None:
            os.chown(target, owner, owner)
        os.chmod(target, 0o700)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genai_common.mtls", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    issue_cmd = commands.add_parser("issue", help="make the CA and the services' certificates (idempotent)")
    issue_cmd.add_argument("directory", type=Path)
    issue_cmd.add_argument("--days", type=int, default=CERT_DAYS, help="validity of a new certificate")
    issue_cmd.add_argument(
        "--renew-within", type=int, default=30, help="reissue certificates expiring within this many days"
    )
    issue_cmd.add_argument(
        "--per-service", action="store_true", help="also DIR/<identity>/{ca.pem,cert.pem,key.pem}"
    )
    issue_cmd.add_argument("--owner", type=int, help="uid (and gid) to own the per-service files")
    args = parser.parse_args(argv)
    if args.days <= args.renew_within:
        parser.error("--days must be longer than --renew-within")
    args.directory.mkdir(parents=True, exist_ok=True)
    os.chmod(args.directory, 0o700)
    issued = ensure_all(args.directory, days=args.days, renew_within_days=args.renew_within)
    if args.per_service:
        lay_out_per_service(args.directory, issued, args.owner)
    for identity, files in issued.items():
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        sys.stdout.write(f"{identity}: valid until {cert.not_valid_after_utc:%Y-%m-%d}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
