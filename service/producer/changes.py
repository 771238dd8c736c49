"""Field-level diffs for audit events: what changed between two versions of a record."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from service.events import Change
from service.redaction import REDACTED, is_sensitive_key

__all__ = ["DEFAULT_IGNORE", "changes_between"]

# Bookkeeping timestamps: they change on every write and say nothing an event does not.
# Matched like sensitive keys, ignoring case and punctuation, so `updated_at` also skips
# `updatedAt` and `UpdatedAt`.
DEFAULT_IGNORE: frozenset[str] = frozenset(
    {
        "created_at",
        "created_on",
        "updated_at",
        "updated_on",
        "modified_at",
        "modified_on",
        "last_modified",
        "last_modified_at",
        "last_updated_at",
    }
)
MAX_DEPTH = 32  # levels compared field by field; anything deeper is compared as one value
PATH_SEPARATOR = "."

_MISSING: Any = object()


def changes_between(
    before: object,
    after: object,
    *,
    ignore: Iterable[str] = DEFAULT_IGNORE,
    redact_extra_keys: Iterable[str] = (),
) -> list[Change]:
    """List the fields whose values differ between `before` and `after`, nested by path.

    Each side is a mapping, a dataclass, a msgspec Struct, an object with `model_dump()`
    (Pydantic), or None (nothing: every field of the other side is new or gone). Nested
    records are compared field by field (`address.city`); lists and other values as a whole.
    A field only one side has counts as None on the other. Values under sensitive keys (the
    redaction rules of service.redaction) are replaced by "[REDACTED]". `ignore` names fields
    to skip: a plain name at any depth, a dotted path only there.
    """
    names, paths = _ignore_rules(ignore if isinstance(ignore, frozenset) else _as_set(ignore))
    diff = _Diff(names, paths, frozenset(redact_extra_keys))
    diff.compare(_fields(before), _fields(after), "", 0)
    return diff.out


def _as_set(ignore: Iterable[str]) -> frozenset[str]:
    # A lone name, not one name per character.
    return frozenset((ignore,) if isinstance(ignore, str) else ignore)


@functools.lru_cache(maxsize=256)
def _ignore_rules(ignore: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    names = frozenset(_normalize(name) for name in ignore if PATH_SEPARATOR not in name)
    paths = frozenset(name for name in ignore if PATH_SEPARATOR in name)
    return names, paths


@dataclasses.dataclass(slots=True)
class _Diff:
    """One comparison: the fields it skips, the keys it masks, the changes it found."""

    names: frozenset[str]  # ignored at any depth (normalized)
    paths: frozenset[str]  # ignored at that dotted path only
    extra: frozenset[str]  # sensitive keys on top of the redaction rules
    out: list[Change] = dataclasses.field(default_factory=list)

    def compare(
        self, before: Mapping[Any, Any], after: Mapping[Any, Any], prefix: str, depth: int
    ) -> None:
        keys = list(after)
        keys += [key for key in before if key not in after]
        for key in keys:
            name = key if type(key) is str else str(key)
            if _normalize(name) in self.names or (self.paths and prefix + name in self.paths):
                continue
            old = before.get(key, None)
            new = after.get(key, None)
            if is_sensitive_key(name, self.extra):
                if not _same(old, new):
                    self.out.append(Change(field=prefix + name, old=_masked(old), new=_masked(new)))
            elif type(old) in _SCALARS and type(new) in _SCALARS:
                # Most fields: two plain values, compared without the record checks below.
                if not _same(old, new):
                    self.out.append(Change(field=prefix + name, old=old, new=new))
            else:
                self.compare_values(old, new, prefix + name, depth)

    def compare_values(self, old: object, new: object, path: str, depth: int) -> None:
        old_fields, new_fields = _structured(old), _structured(new)
        nested = (old_fields is not None or old is None) and (new_fields is not None or new is None)
        if nested and depth < MAX_DEPTH and (old_fields is not None or new_fields is not None):
            self.compare(old_fields or {}, new_fields or {}, path + PATH_SEPARATOR, depth + 1)
        elif not _same(old, new):
            self.out.append(Change(field=path, old=_plain(old), new=_plain(new)))


def _fields(value: object) -> Mapping[Any, Any]:
    if value is None:
        return {}
    fields = _structured(value)
    if fields is None:
        raise TypeError(
            "changes_between compares mappings, dataclasses, msgspec Structs or objects with "
            f"model_dump(), not {type(value).__name__}"
        )
    return fields


def _structured(value: object) -> Mapping[Any, Any] | None:
    """Return a record's fields (one level), or None when the value is not a record."""
    if type(value) in _SCALARS:
        return None  # most values: answered without the slower checks below
    if isinstance(value, Mapping):
        return value
    if isinstance(value, msgspec.Struct):
        return {name: getattr(value, name) for name in value.__struct_fields__}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    return None


def _same(old: object, new: object) -> bool:
    # True == 1 in Python, but a flag that became a count has changed.
    return old == new and isinstance(old, bool) == isinstance(new, bool)


def _masked(value: object) -> object:
    return None if value is None else REDACTED


def _plain(value: object) -> object:
    """A record stored as one value (too deep, or beside a non-record) in plain data."""
    if _structured(value) is None:
        return value
    return msgspec.to_builtins(value, builtin_types=(), enc_hook=_as_plain)


def _as_plain(value: object) -> object:
    fields = _structured(value)
    if fields is None:
        raise TypeError(f"cannot store a {type(value).__name__} in a change")
    return dict(fields)


_SCALARS = frozenset({str, int, float, bool, type(None), bytes, list, tuple})


@functools.lru_cache(maxsize=8192)
def _normalize(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())
