"""Every fault of an invalid event, in plain words: the field, and what was expected.

msgspec stops at an event's first fault and names a pattern by its regex source; a producer
reading an HTTP rejection wants all of them, said as a person would. Each field is checked
alone (msgspec does the checking, against AuditEvent itself, so the rules cannot drift) in a
probe event whose other fields are valid, and the message is reworded.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from service.events import ACTION_PATTERN, AuditEvent

_PROBE_ACTION = "probe.event"
# Valid stand-ins for the required fields of the nested objects, so a probe finds one fault.
_BASES: dict[str, dict[str, Any]] = {
    "actor": {"id": "x", "type": "user"},
    "entity": {"type": "x", "id": "x"},
    "request": {},
    "presentation": {"code": "x"},
}
_REQUIRED: dict[str, tuple[str, ...]] = {"actor": ("id", "type"), "entity": ("type", "id")}
_CHANGE_BASE: dict[str, Any] = {"field": "x"}
_PATTERNS = {
    ACTION_PATTERN: (
        "a lower-case dotted name of 2 to 8 parts, each a letter then letters, digits or "
        "underscores, such as auth.login"
    ),
}
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "object": "an object",
    "array": "a list",
    "bool": "true or false",
}


def event_faults(item: Any) -> list[str]:
    """Every fault of `item` as an event (empty when msgspec finds none)."""
    if not isinstance(item, dict):
        return [f"an event must be a JSON object, not {_kind(item)}"]
    faults: list[str] = []
    if "action" not in item:
        faults.append("`action` is required: " + _PATTERNS[ACTION_PATTERN])
    for key, value in item.items():
        if key in _BASES and isinstance(value, dict):
            faults += _object_faults(key, value)
        elif key == "changes" and isinstance(value, list):
            for index, change in enumerate(value):
                faults += _change_faults(index, change)
        else:
            faults += _probe({"action": _PROBE_ACTION, key: value})
    return faults


def _object_faults(name: str, value: dict[str, Any]) -> list[str]:
    faults = [
        f"`{name}.{field}` is required" for field in _REQUIRED.get(name, ()) if field not in value
    ]
    for key, sub in value.items():
        faults += _probe({"action": _PROBE_ACTION, name: {**_BASES[name], key: sub}})
    return faults


def _change_faults(index: int, change: Any) -> list[str]:
    if not isinstance(change, dict):
        return [f"`changes[{index}]` must be an object {{field, old, new}}, not {_kind(change)}"]
    faults = [] if "field" in change else [f"`changes[{index}].field` is required"]
    for key, sub in change.items():
        probe = {"action": _PROBE_ACTION, "changes": [{**_CHANGE_BASE, key: sub}]}
        faults += [f.replace("`changes[0]", f"`changes[{index}]") for f in _probe(probe)]
    return faults


def _probe(probe: dict[str, Any]) -> list[str]:
    try:
        msgspec.convert(probe, AuditEvent)
    except msgspec.ValidationError as exc:
        return [plain(str(exc))]
    except (ValueError, TypeError) as exc:  # a check of the Struct itself (request.ip)
        return [str(exc)]
    return []


def plain(message: str) -> str:
    """msgspec's validation message in plain words, with the field first."""
    match = _AT.search(message)
    path = _field(match.group("path")) if match else ""
    text = message[: match.start()] if match else message
    if text.startswith("`"):  # a check of the Struct itself names its field already
        return text
    # Only `action` has a pattern; its source is no help to anyone.
    text = re.sub(r"matching regex '.*'", f"that is {_PATTERNS[ACTION_PATTERN]}", text)
    text = re.sub("(?i)invalid RFC3339 encoded datetime", _WORDS["datetime"], text)
    text = re.sub("(?i)invalid UUID", _WORDS["uuid"], text)
    text = re.sub(r"of length <= (\d+)", r"of at most \1 characters", text)
    if text.startswith("Object contains unknown field"):
        name = text.split("`")[1]
        full = f"{path}.{name}" if path else name
        return f"`{full}` is not a field of an audit event"
    if text.startswith("Object missing required field"):
        name = text.split("`")[1]
        full = f"{path}.{name}" if path else name
        return f"`{full}` is required"
    text = re.sub(r"`(\w+)(?: \| null)?`", lambda m: _TYPES.get(m.group(1), m.group(1)), text)
    text = text.replace("Expected ", "must be ").replace(">= ", "at least ")
    text = text.replace("<= ", "at most ")
    if text.startswith("Invalid enum value"):
        given = text.removeprefix("Invalid enum value").strip()
        text = f"must be one of {_CHOICES.get(path, 'the allowed values')}, not {given}"
    return f"`{path}` {text[0].lower()}{text[1:]}" if path else text


_CHOICES = {
    "severity": "info, notice, warning, critical",
    "outcome": "success, failure",
    "actor.type": "user, service, system, api_token",
}
_WORDS = {
    "datetime": "must be an RFC 3339 date and time with its offset, such as 2026-01-31T12:00:00Z",
    "uuid": "must be a UUID, such as 0192e4a0-7c1e-7000-8000-000000000000",
}


def _field(path: str) -> str:
    """`$.actor.type` / `$.changes[0].field` as `actor.type` / `changes[0].field`."""
    return path.lstrip(".")


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
