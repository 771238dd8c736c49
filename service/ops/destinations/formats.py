"""What a stored row becomes for a destination: item JSON, OCSF or CEF."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from service.ops.destinations.cef import to_cef
from service.ops.destinations.ocsf import to_ocsf

_encoder = msgspec.json.Encoder()


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """A stored row on its way out: its item JSON as read, and what the transports need of it."""

    id: str
    ts: datetime
    action: str
    severity: str
    json: msgspec.Raw  # the item as the API shows it
    data: Mapping[str, Any]  # the same as read (its JSON values may be msgspec.Raw)
    # Its renderings so far, by format (and OCSF class rules): every destination of a worker
    # that sends the same batch in the same format shares one.
    rendered: dict[Any, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, item: Mapping[str, Any]) -> Item:
        """The Item of an item in the API's shape (ids and times as objects or as text)."""
        ts = item["ts"]
        return cls(
            id=str(item["id"]),
            ts=datetime.fromisoformat(ts) if isinstance(ts, str) else ts,
            action=item["action"],
            severity=item.get("severity", "info"),
            json=msgspec.Raw(_encoder.encode(item)),
            data=item,
        )


def plain(value: Any) -> Any:
    """Any value as plain JSON data (ids and times as strings), as it goes on the wire."""
    return msgspec.json.decode(_encoder.encode(value))


def render(item: Item, fmt: str, options: Mapping[str, Any]) -> Any:
    """One item in the destination's format: the item JSON as read (json), an OCSF object, or
    a CEF line; made once per item and format, however many destinations send it."""
    if fmt == "json":
        return item.json
    classes = options.get("ocsf_classes") if fmt == "ocsf" else None
    key = (fmt, _encoder.encode(classes) if classes else None)
    done = item.rendered.get(key)
    if done is None:
        if fmt == "ocsf":
            done = to_ocsf(item.data, classes, unmapped=item.json)
        else:
            done = to_cef(item.data, whole=item.json)
        item.rendered[key] = done
    return done


def text(rendered: Any) -> str:
    """A rendered item as text (a syslog message body)."""
    if isinstance(rendered, str):
        return rendered
    if isinstance(rendered, msgspec.Raw):
        return bytes(rendered).decode()
    return _encoder.encode(rendered).decode()
