"""What directory (LDAP / Active Directory) sign-in is configured with and what its groups give: the
settings' shape, the group -> role and limits rule, and the user a directory answers with.

The client that asks the directory (ldap3) is `genai_auth.directory_client`, imported only when
GENAI_AUTH_LDAP_URL is set: ldap3 is about 120 modules and 3.5 MiB in every auth process otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from genai_auth.limits import UNLIMITED, check_limits

# Active Directory's LDAP_MATCHING_RULE_IN_CHAIN: group membership through any depth of nesting.
IN_CHAIN = "1.2.840.113556.1.4.1941"

ROLE_ORDER = {"user": 0, "admin": 1}


class DirectoryUnavailable(Exception):
    """The directory could not be asked (down, slow, TLS refused, service account refused). The message
    names what failed for the logs; callers get one plain sentence."""


def normalize_dn(dn: str) -> str:
    """A DN in one spelling, to compare group DNs from settings with the directory's: attribute names and
    values lower-cased (AD and OpenLDAP compare both case-insensitively for these), spaces around separators
    gone. A string that does not parse is only lower-cased."""
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except (LDAPInvalidDnError, ValueError):
        return dn.strip().lower()
    return ",".join(f"{attr.lower()}={value.lower()}" for attr, value, _ in parts)


@dataclass(frozen=True)
class GroupGrant:
    """What membership of one directory group gives: a role and limit overrides (see genai_auth.limits)."""

    role: str = "user"
    limits: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, group: str, value: Any) -> GroupGrant:
        if not isinstance(value, Mapping) or set(value) - {"role", "limits"}:
            raise ValueError(f"group {group!r}: give an object with 'role' and/or 'limits'")
        role = value.get("role", "user")
        if role not in ROLE_ORDER:
            raise ValueError(f"group {group!r}: role must be 'user' or 'admin'")
        return cls(role=role, limits=check_limits(value.get("limits", {})))


def _more_generous(a: int, b: int) -> int:
    if UNLIMITED in (a, b):
        return UNLIMITED
    return max(a, b)


@dataclass(frozen=True)
class Grant:
    """The role and limits a directory user gets, and the mapped groups that gave them."""

    role: str
    limits: dict[str, int]
    groups: tuple[str, ...]


def combine(
    grants: Mapping[str, GroupGrant], member_of: Sequence[str], default_role: str | None
) -> Grant | None:
    """The grant of a member of `member_of` (DNs as the directory spells them): admin if any mapped group
    says admin; for each limit, the most generous any mapped group gives (-1, unlimited, above all); a limit
    no group names is the role's default. No mapped group: `default_role` with no limits, or None (refused)."""
    by_dn = {normalize_dn(dn): grant for dn, grant in grants.items()}
    # Named as the directory spells them, once each.
    spelled = {normalize_dn(dn): dn for dn in reversed(member_of)}
    matched = [(dn, by_dn[key]) for key, dn in spelled.items() if key in by_dn]
    if not matched:
        return None if default_role is None else Grant(default_role, {}, ())
    role = max((grant.role for _, grant in matched), key=ROLE_ORDER.__getitem__)
    limits: dict[str, int] = {}
    for _, grant in matched:
        for key, value in grant.limits.items():
            limits[key] = _more_generous(limits[key], value) if key in limits else value
    return Grant(role, check_limits(limits), tuple(sorted(dn for dn, _ in matched)))


@dataclass(frozen=True)
class DirectoryConfig:
    """Where and how to ask the directory; built from AuthSettings (see settings.py for each field)."""

    url: str
    bind_dn: str
    bind_password: str = field(repr=False)
    user_base_dn: str
    login_attribute: str = "uid"
    user_filter: str = "(objectClass=person)"
    group_base_dn: str = ""
    nested_groups: bool = False
    upn_suffix: str = ""
    start_tls: bool = False
    ca_file: str = ""
    allow_plain: bool = False
    timeout_s: float = 3.0
    pool_size: int = 4

    @property
    def secure(self) -> bool:
        return urlsplit(self.url).scheme.lower() == "ldaps" or self.start_tls

    def check(self) -> None:
        scheme = urlsplit(self.url).scheme.lower()
        if scheme not in ("ldap", "ldaps"):
            raise ValueError("GENAI_AUTH_LDAP_URL must be ldaps://host[:port] or ldap://host[:port]")
        if scheme == "ldaps" and self.start_tls:
            raise ValueError("GENAI_AUTH_LDAP_START_TLS is for ldap:// URLs; ldaps:// is TLS already")
        if not self.secure and not self.allow_plain:
            raise ValueError(
                "GENAI_AUTH_LDAP_URL is plain ldap:// without StartTLS: passwords would cross the network in "
                "clear; use ldaps://, set GENAI_AUTH_LDAP_START_TLS=true, or (tests only) "
                "GENAI_AUTH_LDAP_ALLOW_PLAIN=true"
            )
        if not self.user_base_dn:
            raise ValueError("GENAI_AUTH_LDAP_USER_BASE_DN is required with GENAI_AUTH_LDAP_URL")
        if self.nested_groups and not self.group_base_dn:
            raise ValueError("GENAI_AUTH_LDAP_NESTED_GROUPS needs GENAI_AUTH_LDAP_GROUP_BASE_DN")

    def login_value(self, username: str) -> str:
        """The value of the login attribute that a typed username stands for. People type what they type
        elsewhere: "CORP\\alice" (down-level logon name) means alice; for userPrincipalName, a bare "alice"
        gets the configured suffix ("alice@corp.example")."""
        name = username.strip()
        if "\\" in name:
            name = name.split("\\", 1)[1]
        if self.login_attribute.lower() == "userprincipalname" and "@" not in name and self.upn_suffix:
            name = f"{name}@{self.upn_suffix.lstrip('@')}"
        return name

    def user_search_filter(self, username: str) -> str:
        from ldap3.utils.conv import escape_filter_chars

        value = escape_filter_chars(self.login_value(username))
        return f"(&{self.user_filter}({self.login_attribute}={value}))"

    def nested_group_filter(self, user_dn: str) -> str:
        from ldap3.utils.conv import escape_filter_chars

        return f"(member:{IN_CHAIN}:={escape_filter_chars(user_dn)})"


@dataclass(frozen=True)
class DirectoryUser:
    """A directory entry that signed in or was looked up: its DN, its login name and its group DNs."""

    dn: str
    login: str
    groups: tuple[str, ...]
    disabled: bool = False
