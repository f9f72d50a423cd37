from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest
from genai.auth.v1 import auth_pb2, auth_pb2_grpc

from genai_auth.passwords import Passwords
from genai_auth.schema import apply_migrations
from genai_auth.settings import AuthSettings
from genai_auth.users import LastAdmin, User, UserStore
from genai_common.db import create_pool

MakeUser = Callable[..., Awaitable[tuple[User, str]]]
Stub = auth_pb2_grpc.AuthServiceStub
Metadata = tuple[tuple[str, str], ...]


async def _error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    return failed.value


async def _bearer(stub: Stub, user: User, password: str, address: str) -> Metadata:
    pair = await stub.Login(
        auth_pb2.LoginRequest(username=user.username, password=password, client_address=address)
    )
    return (("authorization", f"Bearer {pair.access_token}"),)


def _new_name() -> str:
    return f"n-{uuid.uuid4().hex[:12]}"


ADMIN_CALLS: dict[str, Callable[[Stub, Metadata], Awaitable[object]]] = {
    "CreateUser": lambda s, m: s.CreateUser(
        auth_pb2.CreateUserRequest(username=_new_name(), password="long-enough-pw"), metadata=m
    ),
    "ListUsers": lambda s, m: s.ListUsers(auth_pb2.ListUsersRequest(), metadata=m),
    "SetUserDisabled": lambda s, m: s.SetUserDisabled(
        auth_pb2.SetUserDisabledRequest(username="nobody-here", disabled=True), metadata=m
    ),
    "SetUserLimits": lambda s, m: s.SetUserLimits(
        auth_pb2.SetUserLimitsRequest(username="nobody-here", limits_json="{}"), metadata=m
    ),
    "ResetPassword": lambda s, m: s.ResetPassword(
        auth_pb2.ResetPasswordRequest(username="nobody-here"), metadata=m
    ),
    "SetUserRole": lambda s, m: s.SetUserRole(
        auth_pb2.SetUserRoleRequest(username="nobody-here", role="admin"), metadata=m
    ),
}


@pytest.mark.parametrize("rpc", list(ADMIN_CALLS))
async def test_admin_rpcs_need_an_admin_token(
    rpc: str, make_user: MakeUser, stub: Stub, address: str
) -> None:
    call = ADMIN_CALLS[rpc]
    for metadata in [(), (("authorization", "Basic abc"),), (("authorization", "Bearer not-a-token"),)]:
        error = await _error(call(stub, metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, metadata

    user, password = await make_user()
    error = await _error(call(stub, await _bearer(stub, user, password, address)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "this operation requires the admin role"


async def test_disabled_admin_token_refused(
    make_user: MakeUser, stub: Stub, store: UserStore, address: str
) -> None:
    admin, password = await make_user("admin")
    metadata = await _bearer(stub, admin, password, address)
    await store.set_disabled(admin.username, True)
    error = await _error(stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=metadata))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_create_user(stub: Stub, admin_metadata: Metadata, store: UserStore, address: str) -> None:
    name = _new_name()
    created = await stub.CreateUser(
        auth_pb2.CreateUserRequest(username=name, password="long-enough-pw"), metadata=admin_metadata
    )
    assert (created.username, created.role, created.disabled) == (name, "user", False)
    assert uuid.UUID(created.id) and created.created_at > 0
    pair = await stub.Login(
        auth_pb2.LoginRequest(username=name, password="long-enough-pw", client_address=address)
    )
    assert pair.role == "user"

    admin = await stub.CreateUser(
        auth_pb2.CreateUserRequest(username=_new_name(), password="long-enough-pw", role="admin"),
        metadata=admin_metadata,
    )
    assert admin.role == "admin"


@pytest.mark.parametrize(
    ("username", "password", "role", "complaint"),
    [
        ("ab", "long-enough-pw", "", "username must be 3 to 64 characters"),
        ("x" * 65, "long-enough-pw", "", "username must be 3 to 64 characters"),
        ("has space", "long-enough-pw", "", "username must be"),
        ("trailing-newline\n", "long-enough-pw", "", "username must be"),
        ("émile", "long-enough-pw", "", "username must be"),
        ("", "long-enough-pw", "", "username must be"),
        ("valid.name", "short", "", "password must be 8 to 1024 characters"),
        ("valid.name", "p" * 1025, "", "password must be 8 to 1024 characters"),
        ("valid.name", "long-enough-pw", "root", "role must be 'user' or 'admin'"),
        ("valid.name", "long-enough-pw", "Admin", "role must be 'user' or 'admin'"),
    ],
)
async def test_create_user_validation(
    stub: Stub, admin_metadata: Metadata, username: str, password: str, role: str, complaint: str
) -> None:
    error = await _error(
        stub.CreateUser(
            auth_pb2.CreateUserRequest(username=username, password=password, role=role),
            metadata=admin_metadata,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in (error.details() or "")


async def test_create_user_limits_are_inclusive(stub: Stub, admin_metadata: Metadata) -> None:
    name = f"a{uuid.uuid4().hex}"[:64].ljust(64, "z")
    created = await stub.CreateUser(
        auth_pb2.CreateUserRequest(username=name, password="p" * 1024), metadata=admin_metadata
    )
    assert created.username == name
    short = f"{uuid.uuid4().hex[:3]}"
    created = await stub.CreateUser(
        auth_pb2.CreateUserRequest(username=short, password="p" * 8), metadata=admin_metadata
    )
    assert created.username == short


async def test_create_duplicate_user_any_case(stub: Stub, admin_metadata: Metadata) -> None:
    name = _new_name()
    await stub.CreateUser(
        auth_pb2.CreateUserRequest(username=name, password="long-enough-pw"), metadata=admin_metadata
    )
    error = await _error(
        stub.CreateUser(
            auth_pb2.CreateUserRequest(username=name.upper(), password="another-password"),
            metadata=admin_metadata,
        )
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_list_users_pages_through_everyone(
    stub: Stub, admin_metadata: Metadata, make_user: MakeUser
) -> None:
    mine = {(await make_user())[0].username for _ in range(5)}
    seen: list[str] = []
    token = ""
    for _ in range(1000):
        page = await stub.ListUsers(
            auth_pb2.ListUsersRequest(page_size=2, page_token=token), metadata=admin_metadata
        )
        assert len(page.users) <= 2
        seen.extend(u.username for u in page.users)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)), "a user appeared on two pages"
    assert mine <= set(seen)
    assert [s.lower() for s in seen] == sorted(s.lower() for s in seen)
    everyone = await stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=admin_metadata)
    assert len(everyone.users) == min(len(seen), 50)


async def test_list_users_page_size_capped(stub: Stub, admin_metadata: Metadata, make_user: MakeUser) -> None:
    page = await stub.ListUsers(auth_pb2.ListUsersRequest(page_size=1_000_000), metadata=admin_metadata)
    assert 0 < len(page.users) <= 200


@pytest.mark.parametrize(
    ("request_", "complaint"),
    [
        (auth_pb2.ListUsersRequest(page_size=-1), "page_size"),
        (auth_pb2.ListUsersRequest(page_token="%%%not-base64"), "page_token"),
        (auth_pb2.ListUsersRequest(page_token="_w"), "page_token"),  # decodes to a byte that is not UTF-8
    ],
)
async def test_list_users_bad_arguments(
    stub: Stub, admin_metadata: Metadata, request_: auth_pb2.ListUsersRequest, complaint: str
) -> None:
    error = await _error(stub.ListUsers(request_, metadata=admin_metadata))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in (error.details() or "")


async def test_set_user_disabled(
    stub: Stub, admin_metadata: Metadata, make_user: MakeUser, address: str
) -> None:
    user, password = await make_user()
    changed = await stub.SetUserDisabled(
        auth_pb2.SetUserDisabledRequest(username=user.username.upper(), disabled=True),
        metadata=admin_metadata,
    )
    assert (changed.username, changed.disabled) == (user.username, True)
    error = await _error(
        stub.Login(auth_pb2.LoginRequest(username=user.username, password=password, client_address=address))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    changed = await stub.SetUserDisabled(
        auth_pb2.SetUserDisabledRequest(username=user.username, disabled=False), metadata=admin_metadata
    )
    assert changed.disabled is False
    await stub.Login(auth_pb2.LoginRequest(username=user.username, password=password, client_address=address))


async def test_set_user_disabled_unknown_user(stub: Stub, admin_metadata: Metadata) -> None:
    error = await _error(
        stub.SetUserDisabled(
            auth_pb2.SetUserDisabledRequest(username=_new_name(), disabled=True), metadata=admin_metadata
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_admin_cannot_disable_self(stub: Stub, make_user: MakeUser, address: str) -> None:
    admin, password = await make_user("admin")
    metadata = await _bearer(stub, admin, password, address)
    error = await _error(
        stub.SetUserDisabled(
            auth_pb2.SetUserDisabledRequest(username=admin.username, disabled=True), metadata=metadata
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_change_password(stub: Stub, make_user: MakeUser, address: str) -> None:
    user, password = await make_user()
    pair = await stub.Login(
        auth_pb2.LoginRequest(username=user.username, password=password, client_address=address)
    )
    await stub.ChangePassword(
        auth_pb2.ChangePasswordRequest(
            access_token=pair.access_token, old_password=password, new_password="a-brand-new-password"
        )
    )
    error = await _error(
        stub.Login(auth_pb2.LoginRequest(username=user.username, password=password, client_address=address))
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    await stub.Login(
        auth_pb2.LoginRequest(username=user.username, password="a-brand-new-password", client_address=address)
    )


async def test_change_password_refusals(stub: Stub, make_user: MakeUser, address: str) -> None:
    user, password = await make_user()
    pair = await stub.Login(
        auth_pb2.LoginRequest(username=user.username, password=password, client_address=address)
    )

    def change(token: str, old: str, new: str) -> Awaitable[object]:
        return stub.ChangePassword(
            auth_pb2.ChangePasswordRequest(access_token=token, old_password=old, new_password=new)
        )

    error = await _error(change(pair.access_token, "not-the-old-one", "a-brand-new-password"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await _error(change(pair.access_token, password, "short"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "password must be 8 to 1024 characters" in (error.details() or "")
    error = await _error(change(pair.refresh_token, password, "a-brand-new-password"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    # None of the refusals changed anything.
    await stub.Login(auth_pb2.LoginRequest(username=user.username, password=password, client_address=address))


async def test_change_password_guesses_throttled(stub: Stub, make_user: MakeUser, address: str) -> None:
    user, password = await make_user()
    pair = await stub.Login(
        auth_pb2.LoginRequest(username=user.username, password=password, client_address=address)
    )
    codes = []
    for attempt in range(4):
        error = await _error(
            stub.ChangePassword(
                auth_pb2.ChangePasswordRequest(
                    access_token=pair.access_token,
                    old_password=f"guess-{attempt}",
                    new_password="a-brand-new-password",
                )
            )
        )
        codes.append(error.code())
    assert codes == [grpc.StatusCode.PERMISSION_DENIED] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED]


async def _login(stub: Stub, username: str, password: str, address: str) -> auth_pb2.TokenPair:
    return await stub.Login(
        auth_pb2.LoginRequest(username=username, password=password, client_address=address)
    )


async def test_reset_password_generated_ends_sessions(
    stub: Stub, admin_metadata: Metadata, make_user: MakeUser, address: str
) -> None:
    user, old_password = await make_user()
    pair = await _login(stub, user.username, old_password, address)
    # Token times have one-second resolution: the reset must fall in a later second than the login.
    await asyncio.sleep(1.1)

    reset = await stub.ResetPassword(
        auth_pb2.ResetPasswordRequest(username=user.username.upper()), metadata=admin_metadata
    )
    assert reset.user.username == user.username and reset.user.role == "user"
    assert len(reset.password) >= 20

    error = await _error(_login(stub, user.username, old_password, address))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    for call in (
        stub.Authenticate(auth_pb2.AuthenticateRequest(token=pair.access_token)),
        stub.Refresh(auth_pb2.RefreshRequest(refresh_token=pair.refresh_token)),
    ):
        assert (await _error(call)).code() == grpc.StatusCode.UNAUTHENTICATED

    # A login right after the reset works, within the same second too.
    fresh = await _login(stub, user.username, reset.password, address)
    principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=fresh.access_token))
    assert principal.username == user.username
    assert (await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=fresh.refresh_token))).access_token


async def test_reset_password_given_keeps_api_keys(
    stub: Stub, admin_metadata: Metadata, make_user: MakeUser, address: str
) -> None:
    user, old_password = await make_user()
    user_metadata = await _bearer(stub, user, old_password, address)
    created = await stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(name="script"), metadata=user_metadata)

    reset = await stub.ResetPassword(
        auth_pb2.ResetPasswordRequest(username=user.username, new_password="chosen-by-admin"),
        metadata=admin_metadata,
    )
    assert reset.password == ""  # only a generated password is returned
    assert (await _login(stub, user.username, "chosen-by-admin", address)).username == user.username
    principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=created.secret))
    assert principal.username == user.username


async def test_reset_password_refusals(stub: Stub, admin_metadata: Metadata, make_user: MakeUser) -> None:
    user, _ = await make_user()
    error = await _error(
        stub.ResetPassword(
            auth_pb2.ResetPasswordRequest(username=user.username, new_password="short"),
            metadata=admin_metadata,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "new password must be 8 to 1024 characters long"
    error = await _error(
        stub.ResetPassword(auth_pb2.ResetPasswordRequest(username="nobody-here"), metadata=admin_metadata)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_set_user_role(stub: Stub, admin_metadata: Metadata, make_user: MakeUser, address: str) -> None:
    user, password = await make_user()
    user_metadata = await _bearer(stub, user, password, address)
    assert (await _error(stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=user_metadata))).code() == (
        grpc.StatusCode.PERMISSION_DENIED
    )

    promoted = await stub.SetUserRole(
        auth_pb2.SetUserRoleRequest(username=user.username, role="admin"), metadata=admin_metadata
    )
    assert (promoted.username, promoted.role) == (user.username, "admin")
    # The same token: roles are read live, not from the token.
    await stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=user_metadata)

    demoted = await stub.SetUserRole(
        auth_pb2.SetUserRoleRequest(username=user.username, role="user"), metadata=admin_metadata
    )
    assert demoted.role == "user"
    assert (await _error(stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=user_metadata))).code() == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_set_user_role_refusals(
    stub: Stub, admin_metadata: Metadata, make_user: MakeUser, address: str
) -> None:
    user, _ = await make_user()
    for role in ("", "root", "Admin"):
        error = await _error(
            stub.SetUserRole(
                auth_pb2.SetUserRoleRequest(username=user.username, role=role), metadata=admin_metadata
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, role
    error = await _error(
        stub.SetUserRole(
            auth_pb2.SetUserRoleRequest(username="nobody-here", role="user"), metadata=admin_metadata
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND

    admin, password = await make_user("admin")
    metadata = await _bearer(stub, admin, password, address)
    error = await _error(
        stub.SetUserRole(
            auth_pb2.SetUserRoleRequest(username=admin.username.upper(), role="user"), metadata=metadata
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "you cannot remove your own admin role"
    # Promoting oneself is a no-op, not a refusal.
    assert (
        await stub.SetUserRole(
            auth_pb2.SetUserRoleRequest(username=admin.username, role="admin"), metadata=metadata
        )
    ).role == "admin"


async def test_last_enabled_admin_cannot_be_demoted(new_database_dsn: str, settings: AuthSettings) -> None:
    await apply_migrations(new_database_dsn)
    pool = await create_pool(new_database_dsn, min_size=1, max_size=2)
    try:
        store = UserStore(pool, Passwords.from_settings(settings))
        await store.create("first-admin", "long-enough-pw", "admin")
        await store.create("second-admin", "long-enough-pw", "admin")
        await store.set_disabled("second-admin", True)
        with pytest.raises(LastAdmin):
            await store.set_role("first-admin", "user")
        # A disabled admin may be demoted: the enabled one remains.
        demoted = await store.set_role("second-admin", "user")
        assert demoted is not None and demoted.role == "user"
        assert await store.set_role("nobody-here", "user") is None
    finally:
        await pool.close()


async def test_a_name_with_nul_names_nobody(stub: Stub, admin_metadata: Metadata) -> None:
    """PostgreSQL text holds no NUL: such a name is no one's, never a failed query (an internal error)."""
    name = "ali\x00ce"
    calls = [
        stub.SetUserDisabled(
            auth_pb2.SetUserDisabledRequest(username=name, disabled=True), metadata=admin_metadata
        ),
        stub.SetUserRole(auth_pb2.SetUserRoleRequest(username=name, role="user"), metadata=admin_metadata),
        stub.SetUserLimits(
            auth_pb2.SetUserLimitsRequest(username=name, limits_json="{}"), metadata=admin_metadata
        ),
        stub.ResetPassword(auth_pb2.ResetPasswordRequest(username=name), metadata=admin_metadata),
        stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(name="k", owner_username=name), metadata=admin_metadata
        ),
    ]
    for call in calls:
        assert (await _error(call)).code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Login(auth_pb2.LoginRequest(username=name, password="whatever-it-is"))
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
