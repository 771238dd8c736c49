"""Admin routes over destinations (contract §11): list, add, show, change, remove, test, backfill.

A destination's secret is written here and never read back out: no answer, audit event or
log line holds it; answers say only whether one is set.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import msgspec
from aiohttp import web
from multidict import MultiDict
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from service.api import body as json_body
from service.api.audit_logs.query import PAGING_FIELDS, describe, query_from_params
from service.api.auth import request_principal
from service.api.errors import ApiError, bad_parameter
from service.api.openapi import operation
from service.api.state import POOL, record_admin_action, request_by, unrecorded
from service.ops.admin_actions import RECORD_FAILURES, unwritable
from service.ops.destinations import admin
from service.ops.destinations.ocsf import CLASSES
from service.ops.destinations.probe import TestResult, send_test
from service.ops.destinations.safety import UnsafeDestination, check_url
from service.store import destinations as store

Name = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="letters, digits, `_`, `.`, `-`; up to 64",
    ),
]
Kind = Literal["webhook", "syslog", "splunk-hec", "elasticsearch"]
Format = Literal["json", "ocsf", "cef"]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
FilterText = Annotated[
    str, msgspec.Meta(max_length=8192, description="§7 filters as a query string")
]
Secret = Annotated[
    str, msgspec.Meta(min_length=1, max_length=4096, description="write-only; never shown")
]
State = Literal["active", "paused", "failing"]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]
OPTION_TEXT = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class Options(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a kind or format may take besides URL and secret."""

    ca_pem: Annotated[str, msgspec.Meta(max_length=65536)] | None = None  # TLS: trust this CA
    host: OPTION_TEXT | None = None  # syslog HOSTNAME / HEC `host` (default: this host's name)
    source: OPTION_TEXT | None = None  # HEC `source` (default `auditq`)
    sourcetype: OPTION_TEXT | None = None  # HEC `sourcetype`
    index: OPTION_TEXT | None = None  # HEC `index`; Elasticsearch index when the URL has none
    ocsf_classes: dict[OPTION_TEXT, OPTION_TEXT] | None = None  # action prefix -> OCSF class


class NewDestination(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A destination to add; it starts with rows stored from now on, or from `since`."""

    name: Name
    type: Kind
    url: Url
    format: Format = "json"
    filter: FilterText = ""
    secret: Secret | None = None
    since: UtcTime | None = None
    allow_private: bool = False
    options: Options | None = None


class DestinationChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields to change; `secret: null` removes the secret; `paused` pauses or resumes."""

    url: Url | None = None
    format: Format | None = None
    filter: FilterText | None = None
    secret: Secret | msgspec.UnsetType | None = msgspec.UNSET
    paused: bool | None = None
    allow_private: bool | None = None
    options: Options | None = None


class Backfill(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Send again every row stored since this time."""

    since: UtcTime


class DestinationInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A destination and its health (never its secret)."""

    name: str
    type: str
    url: str
    format: str
    filter: str
    state: State
    lag_events: int
    lag_s: float
    last_delivered_at: datetime | None
    last_error: str | None
    delivered_total: int
    failed_attempts_total: int
    has_secret: bool
    allow_private: bool
    options: dict[str, Any]
    created_at: datetime
    created_by: str


class DestinationList(msgspec.Struct, frozen=True, kw_only=True):
    """Every destination, by name."""

    items: list[DestinationInfo]


class Removed(msgspec.Struct, frozen=True, kw_only=True):
    """The destination that was removed."""

    name: str
    removed: bool = True


class BackfillStarted(msgspec.Struct, frozen=True, kw_only=True):
    """The backfill is under way: the destination's lag counts what it will send again."""

    name: str
    since: datetime
    lag_events: int


def parse_filter(text: str) -> dict[str, Any]:
    """The §7 filters of a query string as stored; a 400 naming the bad one."""
    params = MultiDict(parse_qsl(text.lstrip("?"), keep_blank_values=True, max_num_fields=200))
    paging = sorted(PAGING_FIELDS & set(params))
    if paging:
        raise bad_parameter("filter", f"takes the §7 filters only, not {', '.join(paging)}")
    try:
        query = query_from_params(params)
    except ApiError as exc:
        raise bad_parameter("filter", f"is invalid: {exc}") from None
    filters = describe(query)
    for name in PAGING_FIELDS:
        filters.pop(name, None)
    return filters


def checked_options(
    kind: str, fmt: str, url: str, allow_private: bool, options: Options | None
) -> dict[str, Any]:
    """The options to store, after checking URL, format and OCSF overrides; a 400 if bad."""
    if fmt == "cef" and kind != "syslog":
        raise bad_parameter("format", "cef is for syslog destinations; use json or ocsf")
    try:
        check_url(kind, url, allow_private=allow_private)
    except UnsafeDestination as exc:
        raise bad_parameter("url", f"is refused: {exc}") from None
    stored: dict[str, Any] = msgspec.to_builtins(options) if options is not None else {}
    stored = {key: value for key, value in stored.items() if value is not None}
    for prefix, name in (stored.get("ocsf_classes") or {}).items():
        if name not in CLASSES:
            known = ", ".join(sorted(CLASSES))
            raise bad_parameter("options", f"maps {prefix!r} to {name!r}, not one of {known}")
    if allow_private:
        stored["allow_private"] = True
    return stored


def checked(wanted: NewDestination, *, created_by: str) -> store.NewDestination:
    """A destination to add as it is stored, once its filter, URL and options are checked
    (a 400 naming what is wrong)."""
    options = checked_options(
        wanted.type, wanted.format, wanted.url, wanted.allow_private, wanted.options
    )
    return store.NewDestination(
        name=wanted.name,
        kind=wanted.type,
        url=wanted.url,
        format=wanted.format,
        filter=wanted.filter,
        filter_json=parse_filter(wanted.filter),
        options=options,
        secret=wanted.secret,
        since=wanted.since,
        created_by=created_by,
    )


async def info(conn: Any, destination: store.Destination) -> DestinationInfo:
    """A destination's answer: its settings and health."""
    lag_events, lag_s = await store.lag(conn, destination.position)
    has_secret = await store.read_secret(conn, destination.id) is not None
    options = {k: v for k, v in destination.options.items() if k != "allow_private"}
    return DestinationInfo(
        name=destination.name,
        type=destination.kind,
        url=destination.url,
        format=destination.format,
        filter=destination.filter,
        state=destination.state,  # type: ignore[arg-type]
        lag_events=lag_events,
        lag_s=round(lag_s, 3),
        last_delivered_at=destination.last_delivered_at,
        last_error=destination.last_error,
        delivered_total=destination.delivered_total,
        failed_attempts_total=destination.failed_attempts_total,
        has_secret=has_secret,
        allow_private=bool(destination.options.get("allow_private")),
        options=options,
        created_at=destination.created_at,
        created_by=destination.created_by,
    )


def _not_found(name: str) -> ApiError:
    return ApiError(404, "not_found", f"no destination is named {name[:128]!r}")


async def _find(request: web.Request, conn: Any) -> store.Destination:
    name = request.match_info["name"]
    destination = await store.get_destination(conn, name)
    if destination is None:
        raise _not_found(name)
    return destination


@operation(summary="Every destination with its health", responses={200: DestinationList})
async def list_destinations(request: web.Request) -> web.Response:
    """List destinations and their health."""
    async with request.app[POOL].acquire() as conn:
        items = [await info(conn, d) for d in await store.list_destinations(conn)]
    return json_body.json_response(DestinationList(items=items))


@operation(
    summary="Add a destination (audited as destination.created)",
    body=NewDestination,
    body_required=True,
    responses={201: DestinationInfo},
    errors=(409, 415),
)
async def add_destination(request: web.Request) -> web.Response:
    """Add a destination; its secret is stored apart and never shown back."""
    wanted = await json_body.read_json(request, NewDestination)
    new = checked(wanted, created_by=request_principal(request).name)
    async with request.app[POOL].acquire() as conn:
        try:  # stored with its destination.created event, or not at all
            added = await admin.add(conn, request_by(request), **new)
        except RECORD_FAILURES as exc:
            raise unrecorded(unwritable("destination.created", exc)) from None
        if not added:
            raise ApiError(409, "destination_exists", f"a destination is named {wanted.name!r}")
        destination = await store.get_destination(conn, wanted.name)
        assert destination is not None
        return json_body.json_response(await info(conn, destination), status=201)


@operation(summary="One destination with its health", responses={200: DestinationInfo})
async def get_destination(request: web.Request) -> web.Response:
    """Show one destination."""
    async with request.app[POOL].acquire() as conn:
        destination = await _find(request, conn)
        return json_body.json_response(await info(conn, destination))


@operation(
    summary="Change, pause or resume a destination (audited)",
    body=DestinationChange,
    body_required=True,
    responses={200: DestinationInfo},
    errors=(415,),
)
async def change_destination(request: web.Request) -> web.Response:
    """Change a destination's URL, format, filter, secret or options, or pause/resume it."""
    change = await json_body.read_json(request, DestinationChange)
    async with request.app[POOL].acquire() as conn:
        current = await _find(request, conn)
        url = change.url if change.url is not None else current.url
        fmt = change.format if change.format is not None else current.format
        text = change.filter if change.filter is not None else current.filter
        filters = parse_filter(text) if change.filter is not None else current.filter_json
        allow = (
            change.allow_private
            if change.allow_private is not None
            else bool(current.options.get("allow_private"))
        )
        kept = {k: v for k, v in current.options.items() if k != "allow_private"}
        options = checked_options(
            current.kind,
            fmt,
            url,
            allow,
            change.options if change.options is not None else msgspec.convert(kept, Options),
        )
        paused = change.paused if change.paused is not None else current.paused
        if change.paused is not None and _only_paused(change):
            action = "destination.paused" if change.paused else "destination.resumed"
        else:
            action = "destination.updated"
        changed = sorted(
            name
            for name, value in msgspec.structs.asdict(change).items()
            if value is not None and value is not msgspec.UNSET
        )
        if change.secret is None:
            changed.append("secret")  # removed
        updated = store.Destination(
            **{
                **current.__dict__,
                "url": url,
                "format": fmt,
                "filter": text,
                "filter_json": filters,
                "options": options,
                "paused": paused,
            }
        )
        try:  # stored with its event, or not at all
            done = await store.update_destination(
                conn,
                updated,
                secret=change.secret if isinstance(change.secret, str) else None,
                clear_secret=change.secret is None,
                changed=sorted(set(changed)),
                by=request_by(request),
            )
        except RECORD_FAILURES as exc:
            raise unrecorded(unwritable(action, exc)) from None
        if not done:
            raise _not_found(current.name)
        found = await store.get_destination(conn, current.name)
        assert found is not None
        return json_body.json_response(await info(conn, found))


def _only_paused(change: DestinationChange) -> bool:
    others = {
        name: value
        for name, value in msgspec.structs.asdict(change).items()
        if name != "paused" and value is not None and value is not msgspec.UNSET
    }
    return not others and change.secret is not None


@operation(summary="Remove a destination (audited)", responses={200: Removed})
async def remove_destination(request: web.Request) -> web.Response:
    """Remove a destination, its secret and its position."""
    async with request.app[POOL].acquire() as conn:
        current = await _find(request, conn)
        try:  # removed with its destination.removed event, or not at all
            done = await store.remove_destination(conn, current.name, by=request_by(request))
        except RECORD_FAILURES as exc:
            raise unrecorded(unwritable("destination.removed", exc)) from None
        if not done:
            raise _not_found(current.name)
    return json_body.json_response(Removed(name=current.name))


@operation(
    summary="Send one synthetic event; answers with the receiver's reply",
    responses={200: TestResult},
)
async def test_destination(request: web.Request) -> web.Response:
    """Send a synthetic `destination.test` event (not stored) and tell what the receiver said."""
    principal = request_principal(request)
    async with request.app[POOL].acquire() as conn:
        current = await _find(request, conn)
        secret = await store.read_secret(conn, current.id)
    await record_admin_action(
        request,
        "destination.tested",
        entity=admin.entity(current.name),
        metadata={"name": current.name},
    )
    result = await send_test(current, secret, actor=principal.name)
    return json_body.json_response(result)


@operation(
    summary="Send again every row stored since a time (audited)",
    body=Backfill,
    body_required=True,
    responses={202: BackfillStarted},
    errors=(415,),
)
async def backfill_destination(request: web.Request) -> web.Response:
    """Move the destination's position back to the first row stored at or after `since`."""
    wanted = await json_body.read_json(request, Backfill)
    async with request.app[POOL].acquire() as conn:
        current = await _find(request, conn)
        try:  # moved with its destination.backfilled event, or not at all
            lag_events = await admin.backfill(conn, request_by(request), current, wanted.since)
        except RECORD_FAILURES as exc:
            raise unrecorded(unwritable("destination.backfilled", exc)) from None
        if lag_events is None:
            raise _not_found(current.name)
    return json_body.json_response(
        BackfillStarted(name=current.name, since=wanted.since, lag_events=lag_events), status=202
    )


_ONE = "/api/v1/admin/destinations/{name}"
ROUTES = [
    web.get("/api/v1/admin/destinations", list_destinations),
    web.post("/api/v1/admin/destinations", add_destination),
    web.get(_ONE, get_destination),
    web.patch(_ONE, change_destination),
    web.delete(_ONE, remove_destination),
    web.post(_ONE + "/test", test_destination),
    web.post(_ONE + "/backfill", backfill_destination),
]


async def metric_families(app: web.Application) -> list[Any]:
    """Each destination's health as Prometheus families (none while PostgreSQL is away)."""
    try:
        async with app[POOL].acquire(timeout=2.0) as conn:
            items = [await info(conn, d) for d in await store.list_destinations(conn)]
    except Exception:  # the scrape still answers with the queue's metrics
        return []
    label = ["destination"]
    state = GaugeMetricFamily(
        "auditq_destination_state", "1 for the destination's state", labels=["destination", "state"]
    )
    lag_events = GaugeMetricFamily(
        "auditq_destination_lag_events", "Rows stored but not yet delivered", labels=label
    )
    lag_s = GaugeMetricFamily(
        "auditq_destination_lag_seconds", "Wait of the oldest row not yet delivered", labels=label
    )
    last = GaugeMetricFamily(
        "auditq_destination_last_delivered_timestamp_seconds",
        "When the receiver last acknowledged a batch",
        labels=label,
    )
    delivered = CounterMetricFamily(
        "auditq_destination_delivered", "Events the receiver acknowledged", labels=label
    )
    failed = CounterMetricFamily(
        "auditq_destination_failed_attempts", "Delivery attempts that failed", labels=label
    )
    for item in items:
        for name in ("active", "paused", "failing"):
            state.add_metric([item.name, name], 1.0 if item.state == name else 0.0)
        lag_events.add_metric([item.name], item.lag_events)
        lag_s.add_metric([item.name], item.lag_s)
        if item.last_delivered_at is not None:
            last.add_metric([item.name], item.last_delivered_at.timestamp())
        delivered.add_metric([item.name], item.delivered_total)
        failed.add_metric([item.name], item.failed_attempts_total)
    return [state, lag_events, lag_s, last, delivered, failed]
