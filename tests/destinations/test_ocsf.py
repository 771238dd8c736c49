"""OCSF output validates against OCSF 1.3.0 (a JSON Schema compiled from the OCSF schema's
own v1.3.0 source: tests/destinations/ocsf/make_schema.py); the action -> class table and its
overrides; CEF escaping; RFC 5424 framing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from service.ops.destinations import cef, ocsf, syslog
from service.ops.destinations.formats import Item, plain, render

SCHEMA = json.loads((Path(__file__).parent / "ocsf" / "ocsf-1.3.0.json").read_text())
NOW = datetime(2026, 12, 6, 12, 0, 0, 123000, tzinfo=UTC)


def item(action: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "01a24c87-21fe-7636-9a03-f023ff38bd35",
        "ts": NOW,
        "action": action,
        "category": action.split(".")[0],
        "severity": "info",
        "outcome": "success",
        "actor": None,
        "entity": None,
        "tenant": None,
        "request": None,
        "changes": None,
        "metadata": None,
        "presentation": {"code": f"audit.{action}", "params": {}},
        "source": None,
        "received_at": NOW,
        "received_via": "redis:audit-logs",
    }
    return base | fields


FULL = {
    "severity": "critical",
    "outcome": "failure",
    "actor": {"id": "u-1", "type": "user", "name": "Ada", "email": "ada@example.com"},
    "entity": {"type": "user", "id": "u-2", "name": "Bob"},
    "tenant": "acme",
    "request": {
        "id": "req-9",
        "ip": "203.0.113.7",
        "user_agent": "curl/8",
        "method": "POST",
        "path": "/x",
        "status": 403,
        "duration_ms": 1.5,
    },
    "changes": [{"field": "role", "old": "a", "new": "b"}],
    "metadata": {"k": [1, {"deep": True}]},
    "source": "billing",
}
ACTIONS = {
    "auth.login": (3002, 1),
    "auth.logout": (3002, 2),
    "session.preauth": (3002, 6),
    "auth.mfa_challenged": (3002, 99),
    "user.created": (3001, 1),
    "user.password_changed": (3001, 3),
    "user.deleted": (3001, 6),
    "token.revoked": (3001, 6),
    "group.member_added": (3006, 3),
    "team.deleted": (3006, 5),
    "doc.updated": (6003, 3),
    "config.updated": (6003, 3),
    "invoice.exported": (6003, 2),
    "destination.test": (6003, 99),
}


def validate(event: dict[str, Any]) -> None:
    schema = {"$defs": SCHEMA["$defs"], **SCHEMA["classes"][str(event["class_uid"])]}
    jsonschema.Draft202012Validator(schema).validate(event)


def test_the_schema_is_the_version_we_emit() -> None:
    assert SCHEMA["ocsf_version"] == ocsf.OCSF_VERSION == "1.3.0"


@pytest.mark.parametrize("fields", [{}, FULL], ids=["bare", "full"])
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_mapped_class_validates_against_ocsf_1_3_0(
    action: str, fields: dict[str, Any]
) -> None:
    stored = item(action, **fields)
    event = plain(render(Item.of(stored), "ocsf", {}))  # as it goes on the wire
    validate(event)
    assert (event["class_uid"], event["activity_id"]) == ACTIONS[action]
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
    assert event["unmapped"] == plain(stored)  # the whole item, nothing lost to the mapping
    assert event["metadata"]["uid"] == stored["id"] and event["time"] == 1796558400123


def test_a_validation_that_can_fail_does() -> None:
    event = plain(render(Item.of(item("auth.login")), "ocsf", {}))
    del event["user"]
    with pytest.raises(jsonschema.ValidationError, match="'user' is a required property"):
        validate(event)
    event = plain(render(Item.of(item("auth.login")), "ocsf", {}))
    event["activity_id"] = 7  # not an Authentication activity in 1.3.0
    with pytest.raises(jsonschema.ValidationError):
        validate(event)


def test_the_table_is_overridable_per_destination() -> None:
    overrides = {"doc.": "account_change", "auth.login": "api_activity"}
    assert ocsf.class_of("doc.updated", overrides) == "account_change"
    assert ocsf.class_of("auth.login", overrides) == "api_activity"
    assert ocsf.class_of("auth.logout", overrides) == "authentication"
    assert ocsf.class_of("auth.logout", {"auth.": "no_such_class"}) == "authentication"
    event = plain(render(Item.of(item("doc.updated", **FULL)), "ocsf", {"ocsf_classes": overrides}))
    validate(event)
    assert event["class_uid"] == 3001


def _unescape(value: str) -> str:
    out, chars = [], iter(value)
    for char in chars:
        if char == "\\":
            nxt = next(chars)
            out.append({"n": "\n", "r": "\r"}.get(nxt, nxt))
        else:
            out.append(char)
    return "".join(out)


def test_cef_escapes_its_separators_and_carries_the_item() -> None:
    stored = plain(item("a.b", metadata={"k": "x=y\\z\nw"}, actor={"id": "p|q", "type": "user"}))
    line = cef.to_cef(stored)
    parts = line.split("|", 7)
    assert parts[:7] == ["CEF:0", "auditq", "auditq", "1", "a.b", "a.b", "1"]
    extension = parts[7]
    assert "\n" not in line and "suid=p|q" in extension  # `|` is not escaped in extensions
    cs6 = extension.split("cs6=", 1)[1]
    assert json.loads(_unescape(cs6)) == stored
    assert "x\\=y" in cs6  # `=` escaped


def test_octet_counted_frames_count_bytes_not_characters() -> None:
    msg = syslog.message(Item.of(item("a.b")), "é\nline", hostname="host name", app_name="auditq")
    framed = syslog.frame(msg)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) == len(msg) and rest == msg
    assert msg.startswith(b"<110>1 2026-12-06T12:00:00.123000Z host_name auditq - a.b ")
    assert b'[auditq@32473 id="01a24c87-21fe-7636-9a03-f023ff38bd35" action="a.b"]' in msg
