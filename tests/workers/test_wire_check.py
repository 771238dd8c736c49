"""The one-statement path's check refuses exactly what AuditEvent refuses."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from service.events import AuditEvent, finalize
from workers.wire_check import checked_events, free_form_ok


def _complete(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(finalize(AuditEvent(action="doc.viewed"))[1])
    return event | fields


INVALID = [
    {"action": "NOT A VALID ACTION"},
    {"action": "a" * 129 + ".b"},
    {"severity": "doom"},
    {"outcome": "maybe"},
    {"actor": {"id": "u", "type": "god"}},
    {"actor": {"type": "user"}},
    {"actor": {"id": "u", "type": "user", "extra": 1}},
    {"entity": {"type": "t"}},
    {"tenant": "t" * 1025},
    {"request": {"ip": "10.0.0.0/8"}},
    {"request": {"status": 99}},
    {"request": {"duration_ms": -1}},
    {"changes": "a string"},
    {"changes": [{"old": 1}]},
    {"changes": [{"field": "f", "why": 1}]},
    {"metadata": "a string"},
    {"metadata": [1, 2]},
    {"metadata": 5},
    {"presentation": {"code": "c", "params": []}},
    {"presentation": {"code": "c", "params": None}},
    {"presentation": {"params": {}}},
    {"evil": True},
    {"ts": "yesterday"},
    {"ts": "2026-01-01T00:00:00"},  # no offset
    {"id": "not-a-uuid"},
]
VALID = [
    {},
    {"metadata": {"a": [1, {"b": None}]}, "changes": [{"field": "f", "old": [1], "new": "x"}]},
    {"metadata": None, "request": {"ip": "2001:db8::1", "status": 200}},
    {"presentation": {"code": "c", "params": {"n": 1}}, "actor": {"id": "u", "type": "service"}},
]


def _both(fields: dict[str, Any]) -> tuple[bool, bool]:
    event = _complete(**fields)
    try:
        msgspec.convert(event, AuditEvent)
        full = True
    except msgspec.ValidationError:
        full = False
    try:
        (checked,) = checked_events.decode(json.dumps([event]))
        cheap = free_form_ok(checked)
    except msgspec.ValidationError:
        cheap = False
    return full, cheap


@pytest.mark.parametrize("fields", INVALID, ids=[str(f)[:40] for f in INVALID])
def test_what_auditevent_refuses_the_check_refuses(fields: dict[str, Any]) -> None:
    assert _both(fields) == (False, False)


@pytest.mark.parametrize("fields", VALID, ids=[str(f)[:40] for f in VALID])
def test_what_auditevent_takes_the_check_takes(fields: dict[str, Any]) -> None:
    assert _both(fields) == (True, True)
