"""OCSF 1.3.0: an item as an OCSF event, its class chosen from its action by a table.

The table (docs/destinations.md, "OCSF") maps an action to a class: the first rule whose
prefix starts the action wins; a destination's `ocsf_classes` option puts its own rules
first. Every item is carried whole under `unmapped`, so nothing is lost to the mapping.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

OCSF_VERSION = "1.3.0"

# class name -> (class_uid, category_uid); categories: 3 Identity & Access, 6 Application.
CLASSES: dict[str, tuple[int, int]] = {
    "authentication": (3002, 3),
    "account_change": (3001, 3),
    "group_management": (3006, 3),
    "api_activity": (6003, 6),
}
# Action prefix -> class name, first match wins; anything else is API Activity.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("auth.", "authentication"),
    ("session.", "authentication"),
    ("login", "authentication"),
    ("user.", "account_change"),
    ("account.", "account_change"),
    ("token.", "account_change"),
    ("group.", "group_management"),
    ("team.", "group_management"),
)
FALLBACK_CLASS = "api_activity"

# Activity ids per class, chosen from the action's last segment (99: Other).
_ACTIVITIES: dict[str, dict[str, int]] = {
    "authentication": {
        "login": 1,
        "logon": 1,
        "signin": 1,
        "logout": 2,
        "logoff": 2,
        "signout": 2,
        "ticket": 3,
        "service_ticket": 4,
        "ticket_renewed": 5,
        "preauth": 6,
    },
    "account_change": {
        "created": 1,
        "create": 1,
        "enabled": 2,
        "enable": 2,
        "password_changed": 3,
        "password_reset": 4,
        "disabled": 5,
        "disable": 5,
        "deleted": 6,
        "delete": 6,
        "revoked": 6,
        "attached_policy": 7,
        "detached_policy": 8,
        "locked": 9,
        "lock": 9,
        "mfa_enabled": 10,
        "mfa_disabled": 11,
        "unlocked": 12,
        "unlock": 12,
    },
    "group_management": {
        "assigned_privileges": 1,
        "revoked_privileges": 2,
        "member_added": 3,
        "added": 3,
        "member_removed": 4,
        "removed": 4,
        "deleted": 5,
        "delete": 5,
        "created": 6,
        "create": 6,
    },
    "api_activity": {
        "created": 1,
        "create": 1,
        "read": 2,
        "viewed": 2,
        "exported": 2,
        "updated": 3,
        "update": 3,
        "changed": 3,
        "deleted": 4,
        "delete": 4,
        "removed": 4,
    },
}
_SEVERITY_ID = {"info": 1, "notice": 2, "warning": 3, "critical": 5}
_STATUS_ID = {"success": 1, "failure": 2}
_USER_TYPE_ID = {"user": 1, "system": 3, "service": 99, "api_token": 99}


def class_of(action: str, overrides: Mapping[str, str] | None = None) -> str:
    """The OCSF class name of an action: the overrides' first matching prefix, else the table."""
    for prefix, name in (overrides or {}).items():
        if action.startswith(prefix) and name in CLASSES:
            return name
    return _default_class(action)


@functools.lru_cache(maxsize=4096)
def _default_class(action: str) -> str:
    """The table's class of an action (remembered: a store has a few hundred actions)."""
    for prefix, name in DEFAULT_RULES:
        if action.startswith(prefix):
            return name
    return FALLBACK_CLASS


def _millis(value: str | datetime) -> int:
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return int(when.timestamp() * 1000)


def _user(actor: Mapping[str, Any]) -> dict[str, Any]:
    user: dict[str, Any] = {"uid": str(actor.get("id"))}
    if actor.get("name"):
        user["name"] = actor["name"]
    if actor.get("email"):
        user["email_addr"] = actor["email"]
    kind = actor.get("type")
    if kind:
        user["type_id"] = _USER_TYPE_ID.get(kind, 99)
        user["type"] = {"user": "User", "system": "System"}.get(kind, kind)
    return user


def _endpoint(request: Mapping[str, Any] | None) -> dict[str, Any]:
    endpoint: dict[str, Any] = {}
    if request and request.get("ip"):
        endpoint["ip"] = request["ip"]
    if not endpoint:
        endpoint["name"] = "unknown"  # OCSF requires the object; say we do not know it
    return endpoint


def to_ocsf(
    item: Mapping[str, Any], overrides: Mapping[str, str] | None = None, *, unmapped: Any = None
) -> dict[str, Any]:
    """The OCSF event of a stored item (as read, or as item JSON decodes it); `unmapped`: the
    item's JSON when the caller has it already (else the item itself goes there)."""
    action: str = item["action"]
    name = class_of(action, overrides)
    class_uid, category_uid = CLASSES[name]
    verb = action.rsplit(".", 1)[-1]
    activity_id = _ACTIVITIES[name].get(verb, 99)
    actor = item.get("actor") or {"id": "unknown", "type": "system"}
    request = item.get("request")
    event: dict[str, Any] = {
        "class_uid": class_uid,
        "category_uid": category_uid,
        "activity_id": activity_id,
        "type_uid": class_uid * 100 + activity_id,
        "severity_id": _SEVERITY_ID.get(item.get("severity", "info"), 0),
        "status_id": _STATUS_ID.get(item.get("outcome", "success"), 0),
        "time": _millis(item["ts"]),
        "message": action,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": str(item["id"]),
            "product": {"name": "auditq", "vendor_name": "auditq"},
            "logged_time": _millis(item["received_at"]),
            **({"tenant_uid": item["tenant"]} if item.get("tenant") else {}),
        },
        "unmapped": dict(item) if unmapped is None else unmapped,
    }
    if activity_id == 99:
        event["activity_name"] = verb
    user = _user(actor)
    if name == "authentication":
        event["user"] = user
        event["dst_endpoint"] = {"name": item.get("source") or "auditq"}
        event["src_endpoint"] = _endpoint(request)
    elif name == "account_change":
        entity = item.get("entity") or {}
        target = {"uid": str(entity.get("id") or actor.get("id"))}
        if entity.get("name"):
            target["name"] = entity["name"]
        event["user"] = target
        event["actor"] = {"user": user}
    elif name == "group_management":
        entity = item.get("entity") or {}
        event["group"] = {"uid": str(entity.get("id") or "unknown"), "name": entity.get("name")}
        if event["group"]["name"] is None:
            del event["group"]["name"]
        event["actor"] = {"user": user}
    else:
        event["actor"] = {"user": user}
        event["api"] = {"operation": action}
        if request and request.get("id"):
            event["api"]["request"] = {"uid": request["id"]}
        event["src_endpoint"] = _endpoint(request)
        entity = item.get("entity")
        if entity:
            event["resources"] = [
                {
                    k: v
                    for k, v in (
                        ("uid", entity.get("id")),
                        ("type", entity.get("type")),
                        ("name", entity.get("name")),
                    )
                    if v is not None
                }
            ]
    if request and request.get("user_agent") and "src_endpoint" in event:
        event["http_request"] = {"user_agent": request["user_agent"]}
    return event
