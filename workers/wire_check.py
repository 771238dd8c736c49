"""Checking a job's events against the wire format, as cheaply as a complete check can be.

The one-statement path (workers/job.py) lets PostgreSQL build the rows from the job's text,
so the worker only has to prove every event valid, not to hold it. It decodes the text with
a mirror of AuditEvent made from AuditEvent itself (the same fields, patterns, enums, lengths,
refusal of unknown fields and the same __post_init__ checks, so the rules cannot drift),
where the free-form parts (`metadata`, `presentation.params`, a change's `old` and `new`)
are left as raw JSON instead of being built into dicts, and whose objects the garbage
collector does not track: the building and tracking are most of a full decode's cost.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

import msgspec

from service.events import AuditEvent


def _mirror(tp: Any, memo: dict[Any, Any]) -> Any:
    """`tp` with its free-form parts as msgspec.Raw, its Structs mirrored likewise."""
    if tp in memo:
        return memo[tp]
    if tp is Any:
        return msgspec.Raw
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        fields: list[Any] = []
        for f in msgspec.structs.fields(tp):
            kind = _mirror(f.type, memo)
            if f.default is not msgspec.NODEFAULT:
                fields.append((f.name, kind, f.default))
            elif f.default_factory is not msgspec.NODEFAULT:
                fields.append((f.name, kind, msgspec.field(default_factory=f.default_factory)))
            else:
                fields.append((f.name, kind))
        checks = {"__post_init__": tp.__post_init__} if hasattr(tp, "__post_init__") else {}
        config = tp.__struct_config__
        mirrored = msgspec.defstruct(
            tp.__name__,
            fields,
            namespace=checks,
            kw_only=True,
            forbid_unknown_fields=config.forbid_unknown_fields,
            gc=False,  # no cycles in decoded JSON: nothing for the collector to find
        )
        memo[tp] = mirrored
        return mirrored
    if origin is Annotated:
        inner, *meta = typing.get_args(tp)
        return Annotated[(_mirror(inner, memo), *meta)]
    if origin is list:
        return list[_mirror(typing.get_args(tp)[0], memo)]  # type: ignore[misc]
    if origin is dict:
        return msgspec.Raw  # an object: checked after the decode (free_form_ok)
    if origin in (typing.Union, types.UnionType):
        options = tuple(_mirror(a, memo) for a in typing.get_args(tp))
        return msgspec.Raw if msgspec.Raw in options else typing.Union[options]  # noqa: UP007
    return tp


CheckedEvent: Any = _mirror(AuditEvent, {})
checked_events = msgspec.json.Decoder(list[CheckedEvent])


def _object_or_null(raw: Any) -> bool:
    if raw is None:
        return True
    head = memoryview(raw)[:1].tobytes()
    return head in (b"{", b"n")


def free_form_ok(event: Any) -> bool:
    """Whether an event's raw parts are what AuditEvent takes: objects (or null) for
    `metadata` and `presentation.params` (a change's `old` and `new` may be anything)."""
    if not isinstance(event.metadata, msgspec.Raw | None) or not _object_or_null(event.metadata):
        return False
    presentation = event.presentation
    if presentation is None:
        return True
    params = presentation.params
    return not isinstance(params, msgspec.Raw) or memoryview(params)[:1].tobytes() == b"{"
