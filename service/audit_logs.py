"""Audit logs, the read side: filters, keyset pages, export, statistics and the live tail."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import csv
import hashlib
import hmac
import io
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from aiohttp import web
from multidict import MultiMapping

from service.errors import ConfigError
from service.events import Outcome, Severity
from service.http import ApiError, bad_parameter
from service.state import POOL, record_admin_action

logger = logging.getLogger(__name__)

MAX_LIMIT = 1000  # items per page
DEFAULT_LIMIT = 50
EXPORT_CHUNK_ROWS = 1000  # rows fetched from the server-side cursor at a time
STATS_DEFAULT_WINDOW = timedelta(days=30)
STATS_MAX_WINDOW = timedelta(days=3660)  # per_day lists every day: keep it a sane length
STATS_TOP = 10  # entries in top_actors and top_actions
STREAM_POLL_S = 0.5  # seconds between live-tail polls
STREAM_HEARTBEAT_S = 15.0  # seconds of silence before a comment keeps proxies from closing
STREAM_BATCH_ROWS = 500
STREAM_RETRY_MS = 2000  # the client's reconnect delay, sent to EventSource

Text = Annotated[str, msgspec.Meta(max_length=1024)]
Order = Literal["asc", "desc"]
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]


class AuditLogQuery(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Every filter of the audit-log routes; a list matches any of its values."""

    action: Text | list[Text] | None = None
    action_prefix: Text | None = None
    category: Text | None = None
    severity: Severity | list[Severity] | None = None
    outcome: Outcome | None = None
    actor_id: Text | list[Text] | None = None
    entity_type: Text | list[Text] | None = None
    entity_id: Text | None = None
    tenant: Text | list[Text] | None = None
    request_id: Text | None = None
    ip: Text | None = None  # an address or a network (CIDR): rows from inside it
    since: UtcTime | None = None  # inclusive
    until: UtcTime | None = None  # inclusive
    q: Text | None = None
    order: Order = "desc"
    limit: Limit = DEFAULT_LIMIT
    cursor: Annotated[str, msgspec.Meta(max_length=1024)] | None = None


QUERY_FIELDS: tuple[str, ...] = AuditLogQuery.__struct_fields__
LIST_FIELDS = frozenset({"action", "severity", "actor_id", "entity_type", "tenant"})
PAGING_FIELDS = frozenset({"order", "limit", "cursor"})


# Reading rows. `ip` is read as text: asyncpg's inet type would need its own encoding.
SELECT_ITEMS = """
SELECT id, ts, received_at, action, category, severity, outcome,
       actor_id, actor_type, actor_name, actor_email,
       entity_type, entity_id, entity_name, tenant,
       request_id, host(ip) AS ip, user_agent, method, path, status, duration_ms,
       changes, metadata, presentation, source
FROM audit_log
"""
SELECT_ONE = SELECT_ITEMS + "WHERE id = $1 LIMIT 1"
SELECT_CURSOR_SECRET = "SELECT secret FROM api_secret WHERE name = 'cursor'"

# WHERE fragments: `{}` becomes a `$n` placeholder; only these fixed strings and parameter
# numbers ever go into the SQL text, values always travel as parameters.
IS = "{column} = {{}}"
IS_ANY = "{column} = ANY({{}}::text[])"
ACTION_PREFIX = "starts_with(action, {})"
IP_WITHIN = "ip <<= {}::inet"
SINCE = "ts >= {}"
UNTIL = "ts <= {}"
FULL_TEXT = "search @@ plainto_tsquery('simple', {})"
# Keyset: the redundant bound on ts alone lets PostgreSQL prune partitions.
AFTER_DESC = "ts <= {0} AND (ts, id) < ({0}, {1})"
AFTER_ASC = "ts >= {0} AND (ts, id) > ({0}, {1})"
ORDER_BY = {"desc": "ORDER BY ts DESC, id DESC", "asc": "ORDER BY ts ASC, id ASC"}
# The live tail shows a row once its received_at is 2 s old: received_at is when the writing
# transaction began, so a write that commits after a later-begun one has been sent would
# otherwise fall behind the position and be skipped; any write shorter than 2 s is caught.
STREAM_AFTER = "(received_at, id) > ({0}, {1}) AND received_at < now() - interval '2 seconds'"
STREAM_ORDER_BY = "ORDER BY received_at, id"
SELECT_NOW = "SELECT now()"

COLUMN_FILTERS = ("category", "outcome", "entity_id", "request_id")


class _Where:
    """A conjunction of fixed fragments and the parameters their placeholders number."""

    def __init__(self) -> None:
        self.fragments: list[str] = []
        self.args: list[Any] = []

    def add(self, fragment: str, *values: Any) -> None:
        numbers = [f"${len(self.args) + i}" for i in range(1, len(values) + 1)]
        self.fragments.append(fragment.format(*numbers))
        self.args.extend(values)

    def add_in(self, column: str, values: Sequence[str]) -> None:
        # One value as `=`: the plain form lets the planner walk a (column, ts) index in order.
        if len(values) == 1:
            self.add(IS.format(column=column), values[0])
        else:
            self.add(IS_ANY.format(column=column), list(values))

    def sql(self) -> str:
        return "WHERE " + (" AND ".join(self.fragments) or "true")


def _values(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def _where(query: AuditLogQuery) -> _Where:
    where = _Where()
    for name in ("action", "actor_id", "entity_type", "tenant", "severity"):
        values = _values(getattr(query, name))
        if values:
            where.add_in(name, values)
    for name in COLUMN_FILTERS:
        value = getattr(query, name)
        if value is not None:
            where.add(IS.format(column=name), value)
    if query.action_prefix is not None:
        where.add(ACTION_PREFIX, query.action_prefix)
    if query.ip is not None:
        where.add(IP_WITHIN, query.ip)
    if query.since is not None:
        where.add(SINCE, query.since)
    if query.until is not None:
        where.add(UNTIL, query.until)
    if query.q is not None:
        where.add(FULL_TEXT, query.q)
    return where


# Cursors.


class Position(msgspec.Struct, frozen=True):
    """Where a page (or the live tail) ends: the last row's time and id, and the walk's order."""

    ts: UtcTime
    id: uuid.UUID
    order: Literal["asc", "desc", "live"]


_position_decoder = msgspec.json.Decoder(Position)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    """Make and check opaque cursors: base64url JSON of a Position, and its HMAC."""

    SIGNATURE_BYTES = 16  # 128 bits: forging one is out of reach

    def __init__(self, secret: bytes) -> None:
        # A key of its own, derived from the stored secret, so no other use can collide.
        self._key = hmac.new(secret, b"auditq cursor v1", hashlib.sha256).digest()

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[: self.SIGNATURE_BYTES]

    def encode(self, position: Position) -> str:
        """Make the cursor for `position`."""
        payload = msgspec.json.encode(position)
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, token: str, *, order: str, name: str = "cursor") -> Position:
        """Check and read a cursor of this `order`; a 400 naming `name` if it is not one."""
        problem = bad_parameter(name, "is not a cursor this API made (use next_cursor as is)")
        body, _, signature = token.partition(".")
        try:
            payload, mac = _unb64(body), _unb64(signature)
        except (binascii.Error, ValueError):
            raise problem from None
        if not hmac.compare_digest(mac, self._sign(payload)):
            raise problem
        try:
            position = _position_decoder.decode(payload)
        except msgspec.DecodeError:
            raise problem from None
        if position.order != order:
            raise bad_parameter(name, f"was made for order={position.order}, not order={order}")
        return position


CURSORS = web.AppKey("audit_log_cursors", CursorCodec)
STREAMS_STOP = web.AppKey("audit_log_streams_stop", asyncio.Event)


async def audit_log_context(app: web.Application) -> AsyncIterator[None]:
    """Read the cursor secret every replica shares; arm the stop of live tails."""
    async with app[POOL].acquire() as conn:
        secret = await conn.fetchval(SELECT_CURSOR_SECRET)
    if secret is None:
        raise ConfigError("the database has no cursor secret: run `auditq migrate`")
    app[CURSORS] = CursorCodec(bytes(secret))
    app[STREAMS_STOP] = asyncio.Event()
    yield


async def stop_streams(app: web.Application) -> None:
    """End every live tail, so a shutdown does not wait for their clients to leave."""
    app[STREAMS_STOP].set()


# Input: query strings and JSON bodies into one AuditLogQuery.

_AT_FIELD = re.compile(r"at `\$\.([A-Za-z_]+)")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")


def _bad_input(exc: msgspec.ValidationError) -> ApiError:
    message = str(exc)
    found = _AT_FIELD.search(message) or _UNKNOWN_FIELD.search(message)
    name = found.group(1) if found else "body"
    problem = message.split(" - at `", 1)[0]
    if _UNKNOWN_FIELD.search(message):
        return bad_parameter(name, "is not a known filter")
    return bad_parameter(name, f"is invalid: {problem}")


def parse_time(name: str, value: str) -> datetime:
    """Read an RFC 3339 time (or a date); without an offset it is UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # overflow: an offset pushes it past year 1 or 9999
        raise bad_parameter(
            name, f"must be an RFC 3339 time like 2024-05-01T12:00:00Z, not {value[:64]!r}"
        ) from None


def _normalize(data: dict[str, Any]) -> dict[str, Any]:
    for name in ("since", "until"):
        if isinstance(data.get(name), str):
            data[name] = parse_time(name, data[name])
    ip = data.get("ip")
    if isinstance(ip, str):
        try:
            data["ip"] = str(ipaddress.ip_network(ip.strip(), strict=False))
        except ValueError:
            raise bad_parameter("ip", "must be an IPv4/IPv6 address or network") from None
    return data


def convert_query(data: dict[str, Any], *, strict: bool) -> AuditLogQuery:
    """Validate filters given as plain data; a 400 naming the bad one."""
    try:
        return msgspec.convert(_normalize(data), AuditLogQuery, strict=strict)
    except msgspec.ValidationError as exc:
        raise _bad_input(exc) from None


def query_from_params(
    params: MultiMapping[str],
    fixed: Mapping[str, Any] | None = None,
    *,
    skip: Iterable[str] = (),
) -> AuditLogQuery:
    """Read the filters of a query string: list filters repeat, others appear once."""
    data: dict[str, Any] = {}
    skipped = set(skip)
    for name in QUERY_FIELDS:
        # An empty value (a blank form field) means no filter.
        values = [v for v in params.getall(name, []) if v != ""]
        if not values or name in skipped:
            continue
        if name in LIST_FIELDS:
            data[name] = values
        elif len(values) > 1:
            raise bad_parameter(name, "is given more than once")
        else:
            data[name] = values[0]
    data.update(fixed or {})
    return convert_query(data, strict=False)


async def query_from_body(request: web.Request) -> AuditLogQuery:
    """Read the filters of a JSON body (415 if not JSON, 413 if too large)."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the filters as application/json")
    body = await request.read()
    try:
        data = msgspec.json.decode(body) if body.strip() else {}
    except msgspec.DecodeError as exc:
        raise bad_parameter("body", f"is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec's answer to hostile nesting
        raise bad_parameter("body", "is not valid JSON: it nests too deeply") from None
    except UnicodeDecodeError:  # msgspec's answer to a string that is not UTF-8
        raise bad_parameter("body", "is not valid JSON: it is not UTF-8") from None
    if not isinstance(data, dict):
        raise bad_parameter("body", "must be a JSON object of filters")
    return convert_query(data, strict=True)


def describe(query: AuditLogQuery) -> dict[str, Any]:
    """The filters that are set, as plain data (for the audit trail)."""
    described: dict[str, Any] = msgspec.to_builtins(query)
    described.pop("cursor", None)
    return described


# Output: rows into items of the wire format, plus received_at.


def _present(**fields: Any) -> dict[str, Any] | None:
    kept = {name: value for name, value in fields.items() if value is not None}
    return kept or None


def item(row: asyncpg.Record) -> dict[str, Any]:
    """One stored event in the wire format's shape, plus `received_at`."""
    actor = None
    if row["actor_id"] is not None:
        actor = _present(
            id=row["actor_id"],
            type=row["actor_type"],
            name=row["actor_name"],
            email=row["actor_email"],
        )
    entity = None
    if row["entity_type"] is not None or row["entity_id"] is not None:
        entity = _present(type=row["entity_type"], id=row["entity_id"], name=row["entity_name"])
    return {
        "id": row["id"],
        "ts": row["ts"],
        "action": row["action"],
        "category": row["category"],
        "severity": row["severity"],
        "outcome": row["outcome"],
        "actor": actor,
        "entity": entity,
        "tenant": row["tenant"],
        "request": _present(
            id=row["request_id"],
            ip=row["ip"],
            user_agent=row["user_agent"],
            method=row["method"],
            path=row["path"],
            status=row["status"],
            duration_ms=row["duration_ms"],
        ),
        "changes": row["changes"],
        "metadata": row["metadata"],
        "presentation": row["presentation"],
        "source": row["source"],
        "received_at": row["received_at"],
    }


_encoder = msgspec.json.Encoder()


def _json(value: object, *, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json")


# Pages.


def page_query(query: AuditLogQuery, after: Position | None) -> tuple[str, list[Any]]:
    """The SQL and parameters of one page: keyset on (ts, id), one row more than asked."""
    where = _where(query)
    if after is not None:
        where.add(AFTER_DESC if query.order == "desc" else AFTER_ASC, after.ts, after.id)
    # The extra row tells whether a next page exists, without a count or an OFFSET.
    sql = f"{SELECT_ITEMS}{where.sql()} {ORDER_BY[query.order]} LIMIT ${len(where.args) + 1}"
    return sql, [*where.args, query.limit + 1]


async def _page(request: web.Request, query: AuditLogQuery) -> web.Response:
    codec = request.app[CURSORS]
    after = codec.decode(query.cursor, order=query.order) if query.cursor else None
    sql, args = page_query(query, after)
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(sql, *args)
    next_cursor = None
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        last = rows[-1]
        next_cursor = codec.encode(Position(last["ts"], last["id"], query.order))
    return _json({"items": [item(row) for row in rows], "next_cursor": next_cursor})


async def list_audit_logs(request: web.Request) -> web.Response:
    """Filtered audit logs, newest first unless order=asc, one keyset page at a time."""
    return await _page(request, query_from_params(request.query))


async def search_audit_logs(request: web.Request) -> web.Response:
    """The same as the list, with the filters in a JSON body (lists allowed)."""
    return await _page(request, await query_from_body(request))


async def entity_history(request: web.Request) -> web.Response:
    """One entity's history, oldest first."""
    fixed = {
        "entity_type": [request.match_info["entity_type"]],
        "entity_id": request.match_info["entity_id"],
        "order": "asc",
    }
    return await _page(request, query_from_params(request.query, fixed))


async def actor_history(request: web.Request) -> web.Response:
    """One actor's actions, newest first."""
    fixed = {"actor_id": [request.match_info["actor_id"]], "order": "desc"}
    return await _page(request, query_from_params(request.query, fixed))


async def get_audit_log(request: web.Request) -> web.Response:
    """One audit log by id, or 404."""
    raw = request.match_info["id"]
    try:
        event_id = uuid.UUID(raw)
    except ValueError:
        raise bad_parameter("id", "must be a UUID") from None
    async with request.app[POOL].acquire() as conn:
        row = await conn.fetchrow(SELECT_ONE, event_id)
    if row is None:
        raise ApiError(404, "not_found", f"no audit log has id {event_id}")
    return _json(item(row))


# Export.

EXPORT_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
CSV_HEADER = (
    "id",
    "ts",
    "received_at",
    "action",
    "category",
    "severity",
    "outcome",
    "actor_id",
    "actor_type",
    "actor_name",
    "actor_email",
    "entity_type",
    "entity_id",
    "entity_name",
    "tenant",
    "request_id",
    "ip",
    "user_agent",
    "method",
    "path",
    "status",
    "duration_ms",
    "changes",
    "metadata",
    "presentation",
    "source",
)
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# CSV is written by PostgreSQL (COPY … CSV: quoting in C, no row decoded in Python), from
# cells the SELECT already made text: times in the form csv_cell gives, nested values as their
# JSON text, and a would-be formula with its "'". Through Python's csv module an export ran at
# ~20,000 rows/s; this way it is bound by the scan.
_UTC = "{0} AT TIME ZONE 'UTC'"
_RFC3339 = (
    "to_char(" + _UTC + ", 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN "
    "extract(microseconds FROM {0})::int % 1000000 = 0 THEN '' "
    "ELSE to_char(" + _UTC + ", '.US') END || 'Z'"
)
_CSV_TEXT = {
    "id": "id::text",
    "ts": _RFC3339.format("ts"),
    "received_at": _RFC3339.format("received_at"),
    "ip": "host(ip)",
    "status": "status::text",
    # Python's str() of a float: a whole number keeps its ".0".
    "duration_ms": "CASE WHEN duration_ms = trunc(duration_ms) AND abs(duration_ms) < 1e15 "
    "THEN trunc(duration_ms)::bigint::text || '.0' ELSE duration_ms::text END",
    "changes": "changes::text",
    "metadata": "metadata::text",
    "presentation": "presentation::text",
}
_CANNOT_BE_FORMULA = frozenset({"id", "ts", "received_at", "ip", "changes", "metadata"})
_FORMULA_SQL = "left({0}, 1) IN ('=', '+', '-', '@', E'\\t', E'\\r')"


def _csv_select_cell(column: str) -> str:
    text = _CSV_TEXT.get(column, column)
    if column in _CANNOT_BE_FORMULA:
        return text
    return f"CASE WHEN {_FORMULA_SQL.format(text)} THEN '''' || {text} ELSE {text} END"


# Output names of their own: ORDER BY ts must sort by the column, not by its text.
SELECT_CSV = (
    "SELECT "
    + ",\n    ".join(f"{_csv_select_cell(c)} AS csv_{c}" for c in CSV_HEADER)
    + "\nFROM audit_log\n"
)


class _CrLf:
    """Turn COPY's row ends (LF) into RFC 4180's (CRLF); a LF inside a quoted value stays.

    In COPY's CSV every quoted value holds an even number of quotes, so an odd count since
    the stream began means the LF is inside a value."""

    def __init__(self) -> None:
        self.quoted = False

    def __call__(self, data: bytes) -> bytes:
        pieces = data.split(b"\n")
        out: list[bytes] = []
        for piece in pieces[:-1]:
            if piece.count(b'"') & 1:
                self.quoted = not self.quoted
            out += (piece, b"\n" if self.quoted else b"\r\n")
        if pieces[-1].count(b'"') & 1:
            self.quoted = not self.quoted
        out.append(pieces[-1])
        return b"".join(out)


def csv_cell(value: Any) -> str:
    """One CSV cell: nested values as JSON text, a would-be formula prefixed with `'`."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        text = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    elif isinstance(value, dict | list):
        text = _encoder.encode(value).decode()
    else:
        text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _csv_lines(rows: Iterable[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)  # RFC 4180 line ends
    return buffer.getvalue().encode()


def _export_chunk(rows: Sequence[asyncpg.Record], export_format: str) -> bytes:
    if export_format == "csv":
        return _csv_lines([csv_cell(row[column]) for column in CSV_HEADER] for row in rows)
    return b"".join(_encoder.encode(item(row)) + b"\n" for row in rows)


def export_query(query: AuditLogQuery, export_format: str = "jsonl") -> tuple[str, list[Any]]:
    """The SQL and parameters of an export: every matching row, in the query's order.

    For CSV, the query whose rows COPY … (FORMAT csv) writes."""
    where = _where(query)
    select = SELECT_CSV if export_format == "csv" else SELECT_ITEMS
    return f"{select}{where.sql()} {ORDER_BY[query.order]}", where.args


async def export_audit_logs(request: web.Request) -> web.StreamResponse:
    """Stream every matching row as CSV or JSON lines, in constant memory."""
    export_format = request.query.get("format", "csv")
    if export_format not in EXPORT_TYPES:
        raise bad_parameter("format", "must be csv or jsonl")
    # Every matching row: a page's limit and cursor do not apply.
    query = query_from_params(request.query, skip=("limit", "cursor"))
    sql, args = export_query(query, export_format)
    await record_admin_action(
        request,
        "audit.exported",
        metadata={"format": export_format, "filters": describe(query)},
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = web.StreamResponse(
        headers={
            "Content-Disposition": f'attachment; filename="audit-logs-{stamp}.{export_format}"'
        }
    )
    response.content_type = EXPORT_TYPES[export_format]
    response.charset = "utf-8"
    if export_format == "csv":
        return await _export_csv(request, response, sql, args)
    # One snapshot and a server-side cursor: rows come in chunks, never all at once.
    async with (
        request.app[POOL].acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        cursor = await conn.cursor(sql, *args)
        rows = await cursor.fetch(EXPORT_CHUNK_ROWS)  # before prepare: a failure here is a 503
        await response.prepare(request)
        try:
            if export_format == "csv":
                await response.write(_csv_lines([CSV_HEADER]))
            while rows:
                await response.write(_export_chunk(rows, export_format))
                rows = await cursor.fetch(EXPORT_CHUNK_ROWS)
        except ConnectionResetError:
            return response  # the client left
        except Exception:
            # Headers are sent: end without the final chunk, so the client sees a broken
            # transfer rather than a complete-looking, truncated file.
            logger.exception("export failed after %s started", request.path)
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    return response


async def _export_csv(
    request: web.Request, response: web.StreamResponse, sql: str, args: list[Any]
) -> web.StreamResponse:
    """Stream a COPY's CSV (one statement: one snapshot) as it comes, in constant memory."""
    crlf = _CrLf()

    async def send(data: bytes) -> None:
        if not response.prepared:  # only once the query runs: a failure before is a 503
            await response.prepare(request)
            await response.write(_csv_lines([CSV_HEADER]))
        await response.write(crlf(data))

    async with request.app[POOL].acquire() as conn:
        try:
            await conn.copy_from_query(sql, *args, output=send, format="csv")
        except ConnectionResetError:
            return response  # the client left
        except Exception:
            if not response.prepared:
                raise
            logger.exception("export failed after %s started", request.path)
            if request.transport is not None:
                request.transport.close()
            return response
    if not response.prepared:  # no row matched
        await response.prepare(request)
        await response.write(_csv_lines([CSV_HEADER]))
    await response.write_eof()
    return response


# Statistics.

SEVERITIES: tuple[str, ...] = ("info", "notice", "warning", "critical")
OUTCOMES: tuple[str, ...] = ("success", "failure")
STATS_WHERE = "WHERE ts >= $1 AND ts <= $2 AND ($3::text IS NULL OR tenant = $3)"
STATS_PER_DAY = f"""
SELECT (ts AT TIME ZONE 'UTC')::date AS day, count(*) AS count
FROM audit_log {STATS_WHERE} GROUP BY day
"""
STATS_TOP_ACTORS = f"""
SELECT actor_id, count(*) AS count
FROM audit_log {STATS_WHERE} AND actor_id IS NOT NULL
GROUP BY actor_id ORDER BY count DESC, actor_id LIMIT $4
"""
STATS_TOP_ACTIONS = f"""
SELECT action, count(*) AS count
FROM audit_log {STATS_WHERE} GROUP BY action ORDER BY count DESC, action LIMIT $4
"""
STATS_BY_SEVERITY = (
    f"SELECT severity AS key, count(*) AS count FROM audit_log {STATS_WHERE} GROUP BY 1"
)
STATS_BY_OUTCOME = (
    f"SELECT outcome AS key, count(*) AS count FROM audit_log {STATS_WHERE} GROUP BY 1"
)


def _stats_window(params: MultiMapping[str]) -> tuple[datetime, datetime]:
    until_raw, since_raw = params.get("until", ""), params.get("since", "")
    until = parse_time("until", until_raw) if until_raw else datetime.now(UTC)
    if since_raw:
        since = parse_time("since", since_raw)
    elif until - datetime.min.replace(tzinfo=UTC) < STATS_DEFAULT_WINDOW:
        raise bad_parameter("until", "is too early for a default window: give since too")
    else:
        since = until - STATS_DEFAULT_WINDOW
    if since > until:
        raise bad_parameter("since", "must not be after until")
    if until - since > STATS_MAX_WINDOW:
        raise bad_parameter("since", f"must be at most {STATS_MAX_WINDOW.days} days before until")
    return since, until


async def audit_log_statistics(request: web.Request) -> web.Response:
    """Counts per day, top actors and actions, by severity and outcome (default: 30 days)."""
    since, until = _stats_window(request.query)
    tenant = request.query.get("tenant") or None
    if tenant is not None and len(tenant) > 1024:
        raise bad_parameter("tenant", "must be at most 1024 characters")
    window = (since, until, tenant)
    async with (
        request.app[POOL].acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        per_day = await conn.fetch(STATS_PER_DAY, *window)
        actors = await conn.fetch(STATS_TOP_ACTORS, *window, STATS_TOP)
        actions = await conn.fetch(STATS_TOP_ACTIONS, *window, STATS_TOP)
        severities = await conn.fetch(STATS_BY_SEVERITY, *window)
        outcomes = await conn.fetch(STATS_BY_OUTCOME, *window)
    counts: dict[date, int] = {row["day"]: row["count"] for row in per_day}
    first, days = since.date(), (until.date() - since.date()).days + 1
    return _json(
        {
            # Every day of the window, zeros included: a chart needs no gap-filling.
            "per_day": [
                {"day": day.isoformat(), "count": counts.get(day, 0)}
                for day in (first + timedelta(days=n) for n in range(days))
            ],
            "top_actors": [{"actor_id": r["actor_id"], "count": r["count"]} for r in actors],
            "top_actions": [{"action": r["action"], "count": r["count"]} for r in actions],
            "by_severity": dict.fromkeys(SEVERITIES, 0)
            | {r["key"]: r["count"] for r in severities},
            "by_outcome": dict.fromkeys(OUTCOMES, 0) | {r["key"]: r["count"] for r in outcomes},
        }
    )


# The live tail.

_NOTHING_YET = uuid.UUID(int=0)
_POSTGRES_DOWN = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def stream_query(query: AuditLogQuery, after: Position) -> tuple[str, list[Any]]:
    """The SQL and parameters of one live-tail poll: rows stored after `after`."""
    where = _where(query)
    where.add(STREAM_AFTER, after.ts, after.id)
    sql = f"{SELECT_ITEMS}{where.sql()} {STREAM_ORDER_BY} LIMIT ${len(where.args) + 1}"
    return sql, [*where.args, STREAM_BATCH_ROWS]


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def stream_audit_logs(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: each newly stored row matching the filters; resumes at Last-Event-ID."""
    query = query_from_params(request.query, skip=PAGING_FIELDS)
    codec, pool, stop = request.app[CURSORS], request.app[POOL], request.app[STREAMS_STOP]
    resume = request.headers.get("Last-Event-ID", "").strip()
    if resume:
        position = codec.decode(resume, order="live", name="Last-Event-ID")
    else:
        async with pool.acquire() as conn:
            position = Position(await conn.fetchval(SELECT_NOW), _NOTHING_YET, "live")
    response = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    quiet_since = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        await response.write(f"retry: {STREAM_RETRY_MS}\n\n".encode())
        while not stop.is_set() and not _client_gone(request):
            sql, args = stream_query(query, position)
            try:
                async with pool.acquire() as conn:
                    rows = await conn.fetch(sql, *args)
            except _POSTGRES_DOWN as exc:
                # Keep the stream: it resumes where it was once PostgreSQL answers again.
                logger.warning("live tail: PostgreSQL not answering (%s)", type(exc).__name__)
                rows = []
            if rows:
                events = []
                for row in rows:
                    position = Position(row["received_at"], row["id"], "live")
                    data = _encoder.encode(item(row)).decode()
                    events.append(f"id: {codec.encode(position)}\ndata: {data}\n\n")
                await response.write("".join(events).encode())
                quiet_since = time.monotonic()
                if len(rows) == STREAM_BATCH_ROWS:
                    continue  # more are waiting: no pause
            elif time.monotonic() - quiet_since >= STREAM_HEARTBEAT_S:
                await response.write(b": keep-alive\n\n")
                quiet_since = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STREAM_POLL_S)
    return response
