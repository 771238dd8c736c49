"""Typed input at the edge: a query string or JSON data read as a msgspec Struct, and the one
translation of msgspec's complaint into a 400 that names the field.

The Struct is the declaration: its fields' types and `msgspec.Meta` bounds validate the input
and make the OpenAPI document (service/api/openapi.py), a field whose type admits a list is
repeatable in a query string, and a `TextForm` in a field's annotation (service/api/formats.py)
says how a value the JSON types cannot describe is read from text and documented.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import msgspec
from multidict import MultiMapping

from service.api.errors import ApiError, bad_parameter
from service.api.formats import TextForm

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

_AT_FIELD = re.compile(r" - at `\$\.?([^`]*)`$")  # `$.since`, `$.events[3].action`
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")


def invalid_input(exc: msgspec.ValidationError) -> ApiError:
    """The 400 for msgspec's complaint: it names the top-level field (`body` for the whole),
    and where inside it when deeper (`severity[0]`)."""
    message = str(exc)
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        return bad_parameter(unknown.group(1), "is not a known field")
    at = _AT_FIELD.search(message)
    if at is None or not at.group(1):
        return bad_parameter("body", f"is invalid: {message[: at.start()] if at else message}")
    path = at.group(1)
    name = re.split(r"[.\[]", path, maxsplit=1)[0]
    where = f" (at `{path}`)" if path != name else ""
    return bad_parameter(name, f"is invalid: {message[: at.start()]}{where}")


def _members(hint: Any) -> tuple[Any, ...]:
    """The members of a union (or the one type)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _form_of(hint: Any) -> TextForm | None:
    for member in _members(hint):
        if typing.get_origin(member) is typing.Annotated:
            forms = [m for m in member.__metadata__ if isinstance(m, TextForm)]
            if forms:
                return forms[0]
    return None


@functools.cache
def text_forms(kind: type) -> dict[str, TextForm]:
    """The fields of `kind` read through a TextForm."""
    hints = typing.get_type_hints(kind, include_extras=True)
    return {name: form for name, hint in hints.items() if (form := _form_of(hint)) is not None}


@functools.cache
def repeatable(kind: type) -> frozenset[str]:
    """The fields of `kind` that may repeat in a query string: their type admits a list."""
    info = msgspec.inspect.type_info(kind)
    if not isinstance(info, msgspec.inspect.StructType):
        raise TypeError(f"{kind!r} is not a Struct")
    return frozenset(
        field.name
        for field in info.fields
        if any(
            isinstance(t, msgspec.inspect.ListType)
            for t in getattr(field.type, "types", (field.type,))
        )
    )


def convert(data: Any, kind: type[T], *, strict: bool = True) -> T:
    """`data` as `kind`, or a 400 naming the bad field; `strict=False` reads numbers from text.

    A whole number written as a float (54.0) is an integer, as JSON Schema says."""
    try:
        data = _whole(data)
        if isinstance(data, dict) and isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            for name, form in text_forms(kind).items():
                if isinstance(data.get(name), str):
                    data[name] = form.parse(name, data[name])
        return msgspec.convert(data, kind, strict=strict)
    except msgspec.ValidationError as exc:
        raise invalid_input(exc) from None
    except RecursionError:  # hostile nesting: bad input, not a server error
        raise bad_parameter("body", "nests too deeply") from None


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    return value


def read_query(
    kind: type[S],
    params: MultiMapping[str],
    fixed: Mapping[str, Any] | None = None,
    *,
    skip: Iterable[str] = (),
) -> S:
    """The fields of `kind` from a query string: repeatable ones as lists, others once; an
    empty value (a blank form field) is no value; `fixed` (path parts) wins over the query."""
    data: dict[str, Any] = {}
    skipped, lists = frozenset(skip), repeatable(kind)
    for name in kind.__struct_fields__:
        values = [v for v in params.getall(name, []) if v != ""]
        if not values or name in skipped:
            continue
        if name in lists:
            data[name] = values
        elif len(values) > 1:
            raise bad_parameter(name, "is given more than once")
        else:
            data[name] = values[0]
    data.update(fixed or {})
    query = convert(data, kind, strict=False)
    for name in data:  # lax reading takes the text "null" for no value: a value was given
        if getattr(query, name) is None:
            raise bad_parameter(name, f"is invalid: {str(data[name])[:64]!r}")
    return query
