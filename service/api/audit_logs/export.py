"""Export of audit logs: every matching row as CSV or JSON lines, streamed in constant memory."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from aiohttp import web

from service.api.audit_logs.query import AuditLogQuery, describe, query_from_params
from service.api.inputs import read_query
from service.api.limits import OPEN_REQUESTS, WRITE_TIMEOUT_S
from service.api.openapi import Fields, operation
from service.api.state import POOL, record_admin_action
from service.store.items import item
from service.store.pages import CSV_HEADER, export_query

logger = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()

EXPORT_CHUNK_ROWS = 1000  # rows fetched from the server-side cursor at a time
EXPORT_TIMEOUT_S = 6 * 3600.0  # seconds a whole CSV export may take (a slow reader is cut sooner)

EXPORT_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
NOT_EXPORTED = frozenset({"limit", "cursor", "count"})  # every matching row: a page's do not apply


class ExportFormat(msgspec.Struct, frozen=True, kw_only=True):
    """The format of an export."""

    format: Literal["csv", "jsonl"] = "csv"


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


def _csv_lines(rows: Iterable[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)  # RFC 4180 line ends
    return buffer.getvalue().encode()


@operation(
    query=(ExportFormat, Fields(AuditLogQuery, NOT_EXPORTED)),
    responses={200: {"type": "string"}},
    media_types=tuple(EXPORT_TYPES.values()),
    errors=(429,),
)
async def export_audit_logs(request: web.Request) -> web.StreamResponse:
    """Stream every matching row as CSV or JSON lines, in constant memory."""
    export_format = read_query(ExportFormat, request.query).format
    query = query_from_params(request.query, skip=NOT_EXPORTED)
    sql, args = export_query(query, csv=export_format == "csv")
    await record_admin_action(
        request,
        "audit.exported",
        metadata={"format": export_format, "filters": describe(query)},
    )
    with request.app[OPEN_REQUESTS].hold(request, "export"):
        return await _export(request, export_format, sql, args)


async def _export(
    request: web.Request, export_format: str, sql: str, args: list[Any]
) -> web.StreamResponse:
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
            while rows:
                async with asyncio.timeout(WRITE_TIMEOUT_S):  # a client that stops reading
                    await response.write(b"".join(_encoder.encode(item(r)) + b"\n" for r in rows))
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
        async with asyncio.timeout(WRITE_TIMEOUT_S):  # a client that stops reading is cut
            await response.write(crlf(data))

    async with request.app[POOL].acquire() as conn:
        try:
            # Its own timeout: the pool's command timeout would cut a long export short.
            await conn.copy_from_query(
                sql, *args, output=send, format="csv", timeout=EXPORT_TIMEOUT_S
            )
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
