"""What a stored row becomes for a destination: item JSON, OCSF or CEF."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from service.ops.destinations.cef import to_cef
from service.ops.destinations.ocsf import to_ocsf


def plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item as plain JSON data (ids and times as strings), exactly as the API shows it."""
    data: dict[str, Any] = msgspec.to_builtins(dict(item))
    return data


def render(item: Mapping[str, Any], fmt: str, options: Mapping[str, Any]) -> Any:
    """One item in the destination's format: a JSON object (json, ocsf) or a line (cef)."""
    data = plain(item)
    if fmt == "ocsf":
        return to_ocsf(data, options.get("ocsf_classes"))
    if fmt == "cef":
        return to_cef(data)
    return data


def text(rendered: Any) -> str:
    """A rendered item as text (a syslog message body)."""
    return rendered if isinstance(rendered, str) else msgspec.json.encode(rendered).decode()
