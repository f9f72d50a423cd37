"""A real OpenLDAP slapd for the directory sign-in tests: Debian's package, a generated slapd.conf, LDAPS
with a certificate from a test CA (trustme), the memberOf overlay, and people and groups loaded through
the running server (the overlay keeps memberOf only for changes made through it, not for slapadd)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from genai_devstack import infra

SUFFIX = "dc=genai,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SERVICE_DN = f"cn=genai-svc,ou=services,{SUFFIX}"
ROOT_DN = f"cn=root,{SUFFIX}"

MODULE_DIRS = ("/usr/lib/ldap", "/usr/lib64/openldap", "/usr/lib/openldap")
SCHEMA_DIRS = ("/etc/ldap/schema", "/etc/openldap/schema")


def slapd_binary() -> str | None:
    return infra.find_binary("slapd")


def _first_dir(candidates: tuple[str, ...], marker: str) -> str:
    for candidate in candidates:
        if (Path(candidate) / marker).exists():
            return candidate
    raise RuntimeError(f"{marker} not found in {', '.join(candidates)}; install slapd")


@dataclass
class Slapd:
    """One slapd process with its data, certificates and passwords, all under `work_dir`."""

    work_dir: Path
    port: int = field(default_factory=infra.free_port)
    # Plain LDAP, for StartTLS.
    start_tls_port: int = field(default_factory=infra.free_port)
    root_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    service_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        # By address: libldap checks the certificate against the name it resolves a host name to.
        return f"ldaps://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.work_dir / "ca.pem"

    def _configure(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        # A common name too: libldap (GnuTLS) reads it when it checks the host name.
        cert = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.private_key_pem.write_to_path(str(self.work_dir / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.work_dir / "cert.pem"))
        data = self.work_dir / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        modules = _first_dir(MODULE_DIRS, "memberof.la")
        schema = _first_dir(SCHEMA_DIRS, "core.schema")
        conf = self.work_dir / "slapd.conf"
        conf.write_text(
            f"""
include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/inetorgperson.schema
pidfile {self.work_dir}/slapd.pid
modulepath {modules}
moduleload back_mdb
moduleload memberof
TLSCACertificateFile {self.ca_file}
TLSCertificateFile {self.work_dir}/cert.pem
TLSCertificateKeyFile {self.work_dir}/key.pem
database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {self.root_password}
directory {data}
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
access to attrs=userPassword by self write by anonymous auth by * none
access to * by dn.exact="{SERVICE_DN}" read by self read by * none
"""
        )
        return conf

    def start(self) -> None:
        binary = slapd_binary()
        assert binary, "slapd is not installed"
        conf = self._configure() if self.process is None else self.work_dir / "slapd.conf"
        log = open(self.work_dir / "slapd.log", "ab")  # noqa: SIM115 (kept open for the process's life)
        # -d keeps it in the foreground (the test owns the process); "stats" logs each operation.
        self.process = subprocess.Popen(
            [
                binary,
                "-f",
                str(conf),
                "-h",
                f"ldaps://127.0.0.1:{self.port}/ ldap://127.0.0.1:{self.start_tls_port}/",
                "-d",
                "stats",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        infra.wait_for_port("127.0.0.1", self.port, 20, "slapd")

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, and nothing answers (a hung directory)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGCONT)  # a stopped process would not see the SIGTERM
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    # --- content, through the running server (ldapmodify from ldap-utils) -------------------------------

    def modify(self, ldif: str) -> None:
        done = subprocess.run(
            ["ldapmodify", "-H", self.url, "-x", "-D", ROOT_DN, "-w", self.root_password],
            input=ldif.encode(),
            env={**os.environ, "LDAPTLS_CACERT": str(self.ca_file)},
            capture_output=True,
            timeout=30,
        )
        if done.returncode:
            raise RuntimeError(f"ldapmodify failed: {done.stderr.decode(errors='replace')}")

    def load(self, people: dict[str, str], groups: dict[str, list[str]]) -> None:
        """The tree, the service account, `people` (uid -> password) and `groups` (cn -> member uids)."""
        entries = [
            f"dn: {SUFFIX}\nchangetype: add\nobjectClass: dcObject\nobjectClass: organization\no: genai\ndc: genai",
            f"dn: {PEOPLE}\nchangetype: add\nobjectClass: organizationalUnit\nou: people",
            f"dn: {GROUPS}\nchangetype: add\nobjectClass: organizationalUnit\nou: groups",
            f"dn: ou=services,{SUFFIX}\nchangetype: add\nobjectClass: organizationalUnit\nou: services",
            f"dn: {SERVICE_DN}\nchangetype: add\nobjectClass: person\ncn: genai-svc\nsn: service\n"
            f"userPassword: {self.service_password}",
        ]
        for uid, password in people.items():
            entries.append(
                f"dn: uid={uid},{PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {uid}\n"
                f"cn: {uid}\nsn: {uid}\nuserPassword: {password}"
            )
        for cn, members in groups.items():
            # groupOfNames needs a member: the service account keeps a group valid when people leave it.
            lines = "\n".join([f"member: {SERVICE_DN}", *(f"member: uid={uid},{PEOPLE}" for uid in members)])
            entries.append(
                f"dn: cn={cn},{GROUPS}\nchangetype: add\nobjectClass: groupOfNames\ncn: {cn}\n{lines}"
            )
        self.modify("\n\n".join(entries) + "\n")

    def remove_member(self, group: str, uid: str) -> None:
        self.modify(
            f"dn: cn={group},{GROUPS}\nchangetype: modify\ndelete: member\nmember: uid={uid},{PEOPLE}\n"
        )

    def wait_stopped(self, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while infra.port_open("127.0.0.1", self.port) and time.monotonic() < deadline:
            time.sleep(0.1)


def group_dn(cn: str) -> str:
    return f"cn={cn},{GROUPS}"
