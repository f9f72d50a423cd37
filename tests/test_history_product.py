"""The history product through nginx: rename, search, exports, and admin reads that are audited."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from pypdf import PdfReader

from tests.harness import RunningStack, User


def _ask(live: RunningStack, user: User, prompt: str) -> dict[str, object]:
    with live.client() as client:
        response = client.post("/ask", json={"prompt": prompt, "max_tokens": 8}, headers=user.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _admin(live: RunningStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.login(live.admin_username, live.admin_password)}"}


def _pdf_text(body: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(body)).pages)


def test_rename_shows_in_the_list_and_is_checked(live: RunningStack, user: User) -> None:
    conversation_id = _ask(live, user, f"Rename me {uuid.uuid4().hex[:6]}")["conversation_id"]
    with live.client() as client:
        renamed = client.patch(
            f"/api/v1/history/{conversation_id}", json={"title": "  Отпуск   2025 "}, headers=user.headers
        )
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["title"] == "Отпуск 2025"
        assert "owner_id" not in renamed.json()
        listed = client.get("/api/v1/history", headers=user.headers).json()["conversations"]
        assert [(c["id"], c["title"]) for c in listed] == [(conversation_id, "Отпуск 2025")]

        too_long = client.patch(
            f"/api/v1/history/{conversation_id}", json={"title": "x" * 201}, headers=user.headers
        )
        blank = client.patch(
            f"/api/v1/history/{conversation_id}", json={"title": "   "}, headers=user.headers
        )
    assert too_long.status_code == 422
    assert blank.status_code == 400
    assert "1 to 200" in blank.json()["error"]["message"]


def test_search_finds_own_messages_and_not_anyone_elses(live: RunningStack, user: User) -> None:
    tag = f"zq{uuid.uuid4().hex[:8]}"
    mine = _ask(live, user, f"Что такое {tag} и как это работает?")
    other = live.new_user()
    _ask(live, other, f"Tell me about {tag}")
    with live.client() as client:
        found = client.get("/api/v1/history/search", params={"q": tag}, headers=user.headers)
        upper = client.get("/api/v1/history/search", params={"q": "ЧТО ТАКОЕ"}, headers=user.headers)
        nothing = client.get("/api/v1/history/search", params={"q": "absent-word-xyz"}, headers=user.headers)
        empty = client.get("/api/v1/history/search", params={"q": ""}, headers=user.headers)
        anonymous = client.get("/api/v1/history/search", params={"q": tag})
    assert found.status_code == 200, found.text
    [hit] = found.json()["hits"]
    assert hit["conversation_id"] == mine["conversation_id"]
    assert hit["conversation_title"].startswith("Что такое")
    assert f"«{tag}»" in hit["snippet"]
    assert found.json()["next_cursor"] is None
    assert [h["conversation_id"] for h in upper.json()["hits"]] == [mine["conversation_id"]]
    assert nothing.json()["hits"] == []
    assert empty.status_code == 422
    assert anonymous.status_code == 401


def test_exports_of_one_conversation_as_json_csv_and_pdf(live: RunningStack, user: User) -> None:
    prompt = f"Привет! Расскажи про зиму {uuid.uuid4().hex[:6]}"
    answer = _ask(live, user, prompt)
    conversation_id = answer["conversation_id"]
    _ask(live, user, "Another conversation that the single export leaves out")
    url = f"/api/v1/history/{conversation_id}/export"
    with live.client() as client:
        as_json = client.get(url, params={"format": "json"}, headers=user.headers)
        as_csv = client.get(url, params={"format": "csv"}, headers=user.headers)
        as_pdf = client.get(url, params={"format": "pdf"}, headers=user.headers)
        unknown = client.get(url, params={"format": "docx"}, headers=user.headers)

    assert as_json.status_code == 200, as_json.text
    assert as_json.headers["content-type"].startswith("application/json")
    disposition = as_json.headers["content-disposition"]
    assert disposition == f'attachment; filename="conversation-{conversation_id}.json"'
    [conversation] = as_json.json()["conversations"]
    assert conversation["id"] == conversation_id
    [message] = conversation["messages"]
    assert message["prompt"] == prompt
    assert message["response"] == answer["response"]
    assert message["created_at"].endswith("Z")

    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.headers["content-disposition"].endswith('.csv"')
    assert as_csv.content.startswith(b"\xef\xbb\xbf")
    [row] = list(csv.DictReader(io.StringIO(as_csv.content.decode("utf-8-sig"), newline="")))
    assert row["conversation_id"] == conversation_id
    assert row["prompt"] == prompt
    assert row["source"] == answer["source"]
    assert row["model"] == answer["model"]
    datetime.fromisoformat(row["created_at"].replace("Z", "+00:00"))

    assert as_pdf.status_code == 200, as_pdf.text
    assert as_pdf.headers["content-type"] == "application/pdf"
    assert as_pdf.content.startswith(b"%PDF")
    assert prompt in _pdf_text(as_pdf.content)

    assert unknown.status_code == 422


def test_export_of_all_my_conversations(live: RunningStack, user: User) -> None:
    first = _ask(live, user, f"Первая беседа {uuid.uuid4().hex[:6]}")
    second = _ask(live, user, f"Second conversation {uuid.uuid4().hex[:6]}")
    stranger = _ask(live, live.new_user(), "Someone else's words")
    with live.client() as client:
        as_json = client.get("/api/v1/history/export", params={"format": "json"}, headers=user.headers)
        as_csv = client.get("/api/v1/history/export", params={"format": "csv"}, headers=user.headers)
    assert as_json.status_code == 200, as_json.text
    ids = [c["id"] for c in as_json.json()["conversations"]]
    assert ids == [second["conversation_id"], first["conversation_id"]]
    assert stranger["conversation_id"] not in ids
    rows = list(csv.DictReader(io.StringIO(as_csv.content.decode("utf-8-sig"), newline="")))
    assert [r["conversation_id"] for r in rows] == ids
    assert 'filename="conversations-' in as_csv.headers["content-disposition"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/history/{id}", None),
        ("PATCH", "/api/v1/history/{id}", {"title": "mine now"}),
        ("DELETE", "/api/v1/history/{id}", None),
        ("GET", "/api/v1/history/{id}/export?format=json", None),
        ("GET", "/api/v1/history/{id}/export?format=csv", None),
        ("GET", "/api/v1/history/{id}/export?format=pdf", None),
    ],
)
def test_another_users_conversation_is_not_found(
    live: RunningStack, user: User, method: str, path: str, body: dict[str, str] | None
) -> None:
    conversation_id = _ask(live, user, f"Mine alone {uuid.uuid4().hex[:6]}")["conversation_id"]
    intruder = live.new_user()
    with live.client() as client:
        response = client.request(
            method, path.format(id=conversation_id), json=body, headers=intruder.headers
        )
        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == "not_found_error"
        assert client.get("/api/v1/history/export", headers=intruder.headers).json()["conversations"] == []
        mine = client.get(f"/api/v1/history/{conversation_id}", headers=user.headers)
    assert mine.status_code == 200
    assert mine.json()["title"].startswith("Mine alone")


ADMIN_ENDPOINTS = [
    "/api/v1/admin/conversations",
    "/api/v1/admin/conversations?owner={owner}",
    "/api/v1/admin/conversations/{id}",
    "/api/v1/admin/conversations/{id}/export?format=json",
    "/api/v1/admin/conversations/{id}/export?format=pdf",
    "/api/v1/admin/conversations/export?owner={owner}&format=csv",
    "/api/v1/admin/audit",
    "/api/v1/admin/usage?from=2024-01-01&to=2024-01-31",
]


@pytest.fixture(scope="module")
def someones_conversation(live: RunningStack) -> tuple[str, str]:
    owner = live.new_user()
    return owner.id, str(_ask(live, owner, "A dialog the admin endpoints point at")["conversation_id"])


@pytest.mark.parametrize("path", ADMIN_ENDPOINTS)
def test_plain_user_gets_403_from_every_admin_endpoint(
    live: RunningStack, user: User, someones_conversation: tuple[str, str], path: str
) -> None:
    owner_id, conversation_id = someones_conversation
    url = path.format(owner=owner_id, id=conversation_id)
    with live.client() as client:
        before = client.get("/api/v1/admin/audit", params={"limit": 1}, headers=_admin(live)).json()["events"]
        refused = client.get(url, headers=user.headers)
        anonymous = client.get(url)
        after = client.get("/api/v1/admin/audit", params={"limit": 1}, headers=_admin(live)).json()["events"]
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["type"] == "permission_error"
    assert anonymous.status_code == 401
    # Refused calls never reached history: nothing was read, so nothing was recorded.
    assert after == before


def test_admin_reads_a_users_dialog_and_the_audit_log_shows_who_whose_what_when(
    live: RunningStack, user: User
) -> None:
    prompt = f"Личный вопрос {uuid.uuid4().hex[:6]}"
    conversation_id = _ask(live, user, prompt)["conversation_id"]
    admin = _admin(live)
    started = time.time()
    with live.client() as client:
        listed = client.get("/api/v1/admin/conversations", params={"owner": user.id}, headers=admin)
        read = client.get(f"/api/v1/admin/conversations/{conversation_id}", headers=admin)
        exported = client.get(
            f"/api/v1/admin/conversations/{conversation_id}/export", params={"format": "pdf"}, headers=admin
        )
        exported_user = client.get(
            "/api/v1/admin/conversations/export", params={"owner": user.id, "format": "json"}, headers=admin
        )
        audit = client.get("/api/v1/admin/audit", params={"limit": 10}, headers=admin)

    assert listed.status_code == 200, listed.text
    assert [(c["id"], c["owner_id"]) for c in listed.json()["conversations"]] == [(conversation_id, user.id)]
    assert read.status_code == 200, read.text
    assert read.json()["owner_id"] == user.id
    assert [m["prompt"] for m in read.json()["messages"]] == [prompt]
    assert exported.status_code == 200 and prompt in _pdf_text(exported.content)
    assert exported_user.status_code == 200
    assert [c["id"] for c in exported_user.json()["conversations"]] == [conversation_id]

    assert audit.status_code == 200, audit.text
    events = audit.json()["events"]
    newest_first = [e for e in events if e["target_owner_id"] == user.id][:4]
    assert [e["action"] for e in newest_first] == [
        "export_user",
        "export_conversation",
        "read_conversation",
        "list_conversations",
    ]
    read_event = newest_first[2]
    assert read_event["actor_username"] == live.admin_username  # who
    assert read_event["target_owner_id"] == user.id  # whose
    assert read_event["target_conversation_id"] == conversation_id  # what
    assert started - 5 <= read_event["at_ms"] / 1000 <= time.time() + 5  # when
    assert datetime.fromisoformat(read_event["at"].replace("Z", "+00:00")).tzinfo == UTC
    assert read_event["request_id"] == read.headers["x-request-id"]
    assert read_event["details"] == {"messages": 1}
    assert newest_first[3]["target_conversation_id"] is None
    assert all(e["actor_id"] == newest_first[0]["actor_id"] for e in newest_first)


def test_audit_log_pages_and_has_no_way_to_change_it(live: RunningStack, user: User) -> None:
    conversation_id = _ask(live, user, "Audited twice")["conversation_id"]
    admin = _admin(live)
    with live.client() as client:
        for _ in range(3):
            assert (
                client.get(f"/api/v1/admin/conversations/{conversation_id}", headers=admin).status_code == 200
            )
        first = client.get("/api/v1/admin/audit", params={"limit": 2}, headers=admin).json()
        second = client.get(
            "/api/v1/admin/audit", params={"limit": 2, "cursor": first["next_cursor"]}, headers=admin
        ).json()
        changes = [
            client.request(method, "/api/v1/admin/audit", headers=admin).status_code
            for method in ("POST", "PUT", "PATCH", "DELETE")
        ]
        event_id = first["events"][0]["id"]
        item_changes = [
            client.request(method, f"/api/v1/admin/audit/{event_id}", headers=admin).status_code
            for method in ("PUT", "PATCH", "DELETE")
        ]
    ids = [e["id"] for e in first["events"] + second["events"]]
    assert len(ids) == 4 and ids == sorted(ids, reverse=True)
    assert first["events"][0]["target_conversation_id"] == conversation_id
    assert changes == [405] * 4
    assert all(status in (404, 405) for status in item_changes)


def test_usage_per_user_and_day(live: RunningStack, user: User) -> None:
    prompt = f"Usage probe {uuid.uuid4().hex[:6]}"
    answers = [_ask(live, user, prompt) for _ in range(2)]
    today = datetime.now(UTC).date().isoformat()
    with live.client() as client:
        report = client.get(
            "/api/v1/admin/usage", params={"from": today, "to": today, "owner": user.id}, headers=_admin(live)
        )
        everyone = client.get(
            "/api/v1/admin/usage", params={"from": today, "to": today}, headers=_admin(live)
        )
        too_long = client.get(
            "/api/v1/admin/usage", params={"from": "2020-01-01", "to": "2021-12-31"}, headers=_admin(live)
        )
        bad_owner = client.get(
            "/api/v1/admin/usage", params={"from": today, "to": today, "owner": "bob"}, headers=_admin(live)
        )
    assert report.status_code == 200, report.text
    [row] = report.json()["rows"]
    cached = sum(1 for a in answers if a["source"] == "cache")
    assert row["day"] == today and row["owner_id"] == user.id
    assert row["requests"] == 2
    assert row["cache_hits"] == cached
    model_answers = [a for a in answers if a["source"] == "model"]
    assert row["completion_tokens"] == sum(a["usage"]["completion_tokens"] for a in model_answers)
    assert row["prompt_tokens"] == sum(a["usage"]["prompt_tokens"] for a in model_answers)
    assert user.id in {r["owner_id"] for r in everyone.json()["rows"]}
    assert too_long.status_code == 400 and "366" in too_long.json()["error"]["message"]
    assert bad_owner.status_code == 422


def test_export_files_are_plain_data_even_for_hostile_text(live: RunningStack, user: User) -> None:
    prompt = f'=HYPERLINK("http://evil.example") <script>alert(1)</script> {uuid.uuid4().hex[:6]}'
    conversation_id = _ask(live, user, prompt)["conversation_id"]
    with live.client() as client:
        as_csv = client.get(f"/api/v1/history/{conversation_id}/export?format=csv", headers=user.headers)
        as_json = client.get(f"/api/v1/history/{conversation_id}/export?format=json", headers=user.headers)
    [row] = list(csv.DictReader(io.StringIO(as_csv.content.decode("utf-8-sig"), newline="")))
    assert row["prompt"] == "'" + prompt
    assert as_csv.headers["x-content-type-options"] == "nosniff"
    assert json.loads(as_json.content)["conversations"][0]["messages"][0]["prompt"] == prompt
