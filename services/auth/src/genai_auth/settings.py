"""Settings of the auth service and of its admin CLI, read from GENAI_AUTH_* variables."""

from __future__ import annotations

import json
from typing import Any, Literal

import argon2
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from genai_auth.directory import DirectoryConfig, GroupGrant
from genai_common.settings import InternalServiceSettings, check_secret

# OWASP's lowest recommended argon2id cost (19 MiB, 2 passes). Cheaper settings exist so that tests run
# fast; outside dev mode they are refused, so a test value pasted into production cannot weaken hashes.
MIN_ARGON2_MEMORY_COST_KIB = 19_456
MIN_ARGON2_TIME_COST = 2


class UserStoreSettings(InternalServiceSettings):
    """What both the service and the admin CLI need: the database and the cost of password hashing."""

    model_config = SettingsConfigDict(env_prefix="GENAI_AUTH_", extra="ignore")

    # repr=False: the URL may carry the database password.
    database_url: str = Field(repr=False)
    argon2_time_cost: int = Field(argon2.DEFAULT_TIME_COST, ge=1)
    argon2_memory_cost: int = Field(argon2.DEFAULT_MEMORY_COST, ge=8, description="KiB")
    argon2_parallelism: int = Field(argon2.DEFAULT_PARALLELISM, ge=1)
    # API keys expire after this unless their creator asks for another lifetime or, explicitly, never.
    keys_default_ttl_days: int = Field(90, ge=1, le=3660)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _argon2_strong_enough(self) -> UserStoreSettings:
        if self.argon2_memory_cost < 8 * self.argon2_parallelism:
            raise ValueError("GENAI_AUTH_ARGON2_MEMORY_COST must be at least 8 KiB per lane of parallelism")
        if self.env != "dev" and (
            self.argon2_memory_cost < MIN_ARGON2_MEMORY_COST_KIB
            or self.argon2_time_cost < MIN_ARGON2_TIME_COST
        ):
            raise ValueError(
                "argon2 cost below the recommended minimum "
                f"(GENAI_AUTH_ARGON2_MEMORY_COST >= {MIN_ARGON2_MEMORY_COST_KIB}, "
                f"GENAI_AUTH_ARGON2_TIME_COST >= {MIN_ARGON2_TIME_COST}) is only allowed with GENAI_ENV=dev"
            )
        return self


class AuthSettings(UserStoreSettings):
    """Settings of the auth gRPC service."""

    listen: str = "127.0.0.1:50051"
    # repr=False: the URL may carry the Redis password.
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    jwt_secret: SecretStr
    jwt_issuer: str = "genai-auth"
    jwt_audience: str = "genai"
    access_ttl_s: int = Field(1800, gt=0)
    refresh_ttl_s: int = Field(604_800, gt=0)
    login_max_failures: int = Field(5, ge=1)
    login_max_failures_per_address: int = Field(50, ge=1)
    login_window_s: int = Field(300, ge=1)
    # The longest delay between failed logins of one account from one address (the delay doubles from 1 s).
    login_backoff_max_s: int = Field(900, ge=1)
    # After a Redis failure, Redis is left alone this long before one request tries it again.
    redis_cooldown_s: float = Field(2.0, gt=0)
    # How often revocations of expired tokens are deleted (PostgreSQL and Redis); they are refused anyway.
    revocation_cleanup_interval_s: float = Field(600, gt=0)
    # How often WatchCredentials streams hear that the credential feed is sound when nothing changes;
    # gateways stop trusting their caches after three unheard.
    credential_feed_heartbeat_s: float = Field(1.0, gt=0, le=5)
    migrate_on_start: bool = True
    # Creating an API key asks for the password again unless the caller signed in with it this recently
    # (0: always ask).
    keys_fresh_login_s: int = Field(300, ge=0)
    # While PostgreSQL is down or hung, a signed-in user's account (role, disabled flag, limits) as last
    # read is trusted this long after that read, so sessions go on (their signature, expiry and the
    # revocations in Redis are still checked); changes made meanwhile may be missed for this long.
    # 0: trust nothing, every request of the outage is refused with 503 (see genai_auth.remembered).
    outage_trust_s: float = Field(600.0, ge=0)
    # The longest wait for an account lookup before the remembered account answers (below the gateway's
    # 3 s deadline for auth calls).
    database_timeout_s: float = Field(1.0, gt=0)
    # How long a Telegram link code made in the web page can be redeemed.
    telegram_code_ttl_s: int = Field(600, ge=30, le=3600)

    # --- LDAP / Active Directory sign-in (off while ldap_url is empty); see docs/operations.md ---------
    # ldaps://host[:port], or ldap://host[:port] with ldap_start_tls (plain only with ldap_allow_plain).
    ldap_url: str = ""
    ldap_start_tls: bool = False
    # PEM file of the CA that signed the directory's certificate; empty: the system's trusted CAs.
    ldap_ca_file: str = ""
    # Plain LDAP (passwords in clear on the wire): for a test directory only.
    ldap_allow_plain: bool = False
    # The service account that searches users (read-only is enough); empty: an anonymous search.
    ldap_bind_dn: str = ""
    ldap_bind_password: SecretStr = Field(SecretStr(""), repr=False)
    ldap_user_base_dn: str = ""
    # Which entries are people; AD: (&(objectCategory=person)(objectClass=user)).
    ldap_user_filter: str = "(objectClass=person)"
    # What people type as their username: uid (OpenLDAP, FreeIPA), sAMAccountName or userPrincipalName (AD).
    ldap_login_attribute: str = "uid"
    # For userPrincipalName: added to a username typed without "@" (e.g. corp.example).
    ldap_upn_suffix: str = ""
    # AD: groups through any depth of nesting (matching rule 1.2.840.113556.1.4.1941), searched under this DN.
    ldap_nested_groups: bool = False
    ldap_group_base_dn: str = ""
    # Group DN -> {"role": "admin"|"user", "limits": {...}} (JSON). Several groups: admin if any says admin,
    # and for each limit the most generous.
    # Empty: no group is mapped.
    ldap_groups: str = ""
    # Members of no mapped group: "refuse" (403 with a clear message) or "user" (the user role, role limits).
    ldap_unmapped: Literal["refuse", "user"] = "refuse"
    # Each network step (connect, TLS, bind, search); a login that cannot finish in twice this is a 503.
    ldap_timeout_s: float = Field(3.0, gt=0, le=60)
    # Connections kept open to the directory (bound as the service account), and threads using them.
    ldap_pool_size: int = Field(4, ge=1, le=64)
    # A directory user's access token lives at most this long; each renewal asks the directory again, so
    # removal from a group or a disabled account ends access within it.
    ldap_session_check_s: int = Field(300, ge=10)

    @model_validator(mode="after")
    def _strong_jwt_secret(self) -> AuthSettings:
        check_secret("GENAI_AUTH_JWT_SECRET", self.jwt_secret, self.env)
        return self

    @model_validator(mode="after")
    def _directory_complete(self) -> AuthSettings:
        if self.ldap_url:
            if self.ldap_bind_dn and not self.ldap_bind_password.get_secret_value():
                raise ValueError("GENAI_AUTH_LDAP_BIND_DN needs GENAI_AUTH_LDAP_BIND_PASSWORD")
            self.directory_config().check()
            self.group_grants()
        return self

    def group_grants(self) -> dict[str, GroupGrant]:
        if not self.ldap_groups.strip():
            return {}
        try:
            groups: Any = json.loads(self.ldap_groups)
        except json.JSONDecodeError as exc:
            raise ValueError(f"GENAI_AUTH_LDAP_GROUPS is not valid JSON ({exc.msg})") from None
        if not isinstance(groups, dict):
            raise ValueError('GENAI_AUTH_LDAP_GROUPS must be a JSON object: {"<group DN>": {"role": ...}}')
        return {dn: GroupGrant.parse(dn, value) for dn, value in groups.items()}

    def directory_config(self) -> DirectoryConfig:
        return DirectoryConfig(
            url=self.ldap_url,
            bind_dn=self.ldap_bind_dn,
            bind_password=self.ldap_bind_password.get_secret_value(),
            user_base_dn=self.ldap_user_base_dn,
            login_attribute=self.ldap_login_attribute,
            user_filter=self.ldap_user_filter,
            group_base_dn=self.ldap_group_base_dn,
            nested_groups=self.ldap_nested_groups,
            upn_suffix=self.ldap_upn_suffix,
            start_tls=self.ldap_start_tls,
            ca_file=self.ldap_ca_file,
            allow_plain=self.ldap_allow_plain,
            timeout_s=self.ldap_timeout_s,
            pool_size=self.ldap_pool_size,
        )


class CliSettings(UserStoreSettings):
    """Settings of genai-auth-admin: no JWT secret or Redis, plus the optional first admin's credentials."""

    admin_user: str | None = Field(None, validation_alias="GENAI_ADMIN_USER")
    admin_password: SecretStr | None = Field(None, validation_alias="GENAI_ADMIN_PASSWORD")
