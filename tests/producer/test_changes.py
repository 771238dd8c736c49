"""The diff helper: nested paths, masked secrets, skipped bookkeeping, equal records."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from service.events import AuditEvent, Change
from service.producer.changes import DEFAULT_IGNORE, changes_between

pytestmark = pytest.mark.unit  # needs no server: `pytest -m unit`


def fields(changes: list[Change]) -> dict[str, tuple[Any, Any]]:
    return {c.field: (c.old, c.new) for c in changes}


def test_equal_records_have_no_changes() -> None:
    record = {"name": "Laptop", "tags": ["a", "b"], "address": {"city": "Oslo"}}
    assert changes_between(record, dict(record)) == []
    assert changes_between(None, None) == []


def test_changed_added_and_removed_fields() -> None:
    before = {"name": "Laptop", "serial": "S-1", "owner": "ann"}
    after = {"name": "Laptop Pro", "owner": "ann", "location": "HQ"}
    assert fields(changes_between(before, after)) == {
        "name": ("Laptop", "Laptop Pro"),
        "location": (None, "HQ"),
        "serial": ("S-1", None),
    }


def test_nested_values_are_compared_by_path() -> None:
    before = {"address": {"city": "Oslo", "zip": "0150", "geo": {"lat": 59.9}}}
    after = {"address": {"city": "Bergen", "zip": "0150", "geo": {"lat": 60.4}}}
    assert fields(changes_between(before, after)) == {
        "address.city": ("Oslo", "Bergen"),
        "address.geo.lat": (59.9, 60.4),
    }


def test_a_nested_record_that_appears_lists_its_fields() -> None:
    assert fields(changes_between({"address": None}, {"address": {"city": "Oslo"}})) == {
        "address.city": (None, "Oslo")
    }


def test_lists_are_compared_whole() -> None:
    assert fields(changes_between({"tags": ["a"]}, {"tags": ["a", "b"]})) == {
        "tags": (["a"], ["a", "b"])
    }


def test_a_value_that_becomes_a_record_is_one_change() -> None:
    assert fields(changes_between({"owner": "ann"}, {"owner": {"id": "ann"}})) == {
        "owner": ("ann", {"id": "ann"})
    }


def test_sensitive_fields_are_masked_at_any_depth() -> None:
    before = {"password": "old-pw", "profile": {"api_key": "k1", "name": "a"}, "token": "t"}
    after = {"password": "new-pw", "profile": {"api_key": "k2", "name": "b"}, "token": "t"}
    assert fields(changes_between(before, after)) == {
        "password": ("[REDACTED]", "[REDACTED]"),
        "profile.api_key": ("[REDACTED]", "[REDACTED]"),
        "profile.name": ("a", "b"),
    }


def test_a_secret_that_is_set_shows_it_was_unset_but_not_its_value() -> None:
    assert fields(changes_between({"client_secret": None}, {"client_secret": "s"})) == {
        "client_secret": (None, "[REDACTED]")
    }


def test_a_sensitive_record_is_masked_whole() -> None:
    changes = changes_between({"credentials": {"user": "a"}}, {"credentials": {"user": "b"}})
    assert fields(changes) == {"credentials": ("[REDACTED]", "[REDACTED]")}


def test_extra_sensitive_keys_are_masked() -> None:
    changes = changes_between({"ssn": "1"}, {"ssn": "2"}, redact_extra_keys={"ssn"})
    assert fields(changes) == {"ssn": ("[REDACTED]", "[REDACTED]")}


def test_bookkeeping_timestamps_are_skipped_in_any_spelling() -> None:
    before = {"name": "a", "created_at": 1, "updatedAt": 1, "meta": {"UpdatedAt": 1}}
    after = {"name": "a", "created_at": 2, "updatedAt": 2, "meta": {"UpdatedAt": 2}}
    assert changes_between(before, after) == []
    assert "updated_at" in DEFAULT_IGNORE


def test_ignore_is_configurable_by_name_and_by_path() -> None:
    before = {"name": "a", "rev": 1, "address": {"city": "x", "rev": 1}}
    after = {"name": "b", "rev": 2, "address": {"city": "y", "rev": 2}, "updated_at": 5}
    assert fields(changes_between(before, after, ignore={"rev"})) == {
        "name": ("a", "b"),
        "address.city": ("x", "y"),
        "updated_at": (None, 5),  # the defaults are replaced, not extended
    }
    assert fields(changes_between(before, after, ignore=DEFAULT_IGNORE | {"address.rev"})) == {
        "name": ("a", "b"),
        "rev": (1, 2),
        "address.city": ("x", "y"),
    }


def test_a_flag_that_becomes_a_number_has_changed() -> None:
    assert fields(changes_between({"n": True}, {"n": 1})) == {"n": (True, 1)}
    assert changes_between({"n": 1}, {"n": 1.0}) == []


@dataclasses.dataclass
class Address:
    city: str


@dataclasses.dataclass
class Person:
    name: str
    address: Address
    updated_at: datetime


class Asset(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    owner: str | None = None
    secret: str | None = None


class Model:
    """Pydantic-like: its fields come from model_dump()."""

    def __init__(self, **values: Any) -> None:
        self._values = values

    def model_dump(self) -> dict[str, Any]:
        return dict(self._values)


def test_dataclasses_structs_and_model_dump_objects() -> None:
    then, now = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    assert fields(
        changes_between(Person("a", Address("Oslo"), then), Person("a", Address("Rome"), now))
    ) == {"address.city": ("Oslo", "Rome")}
    assert fields(changes_between(Asset(name="a"), Asset(name="a", owner="b", secret="x"))) == {
        "owner": (None, "b"),
        "secret": (None, "[REDACTED]"),
    }
    before, after = Model(v=1, nested=Model(x=1)), Model(v=1, nested=Model(x=2))
    assert fields(changes_between(before, after)) == {"nested.x": (1, 2)}


def test_the_result_is_what_an_event_takes() -> None:
    changes = changes_between({"name": "a"}, {"name": "b"})
    event = AuditEvent(action="asset.updated", changes=changes)
    assert msgspec.json.decode(msgspec.json.encode(event))["changes"] == [
        {"field": "name", "old": "a", "new": "b"}
    ]


def test_something_that_is_not_a_record_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="not int"):
        changes_between(1, {"a": 1})
