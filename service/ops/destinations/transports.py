"""Sending a batch to a receiver: HTTPS webhook, syslog over TCP/TLS, Splunk HEC,
Elasticsearch `_bulk`. A send returns once the receiver acknowledged, else raises
DeliveryError with a message that is safe to store and show (never the secret).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from service.ops.destinations import syslog
from service.ops.destinations.formats import Item, render, text
from service.ops.destinations.safety import GuardedResolver, UnsafeDestination, check_url, resolve
from service.redaction import redact_sensitive_in_string
from service.store.destinations import Destination

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Auditq-Signature"
HTTP_TIMEOUT_S = 30.0  # seconds for one delivery request, connect included
CONNECT_TIMEOUT_S = 10.0  # seconds to open a syslog connection
REPLY_LIMIT = 2000  # characters of a receiver's reply kept (test answers, errors)
MAX_REPLY_BYTES = 16 * 1024 * 1024  # the largest answer read (a _bulk answer of a full batch)
_encoder = msgspec.json.Encoder()


class DeliveryError(Exception):
    """The receiver did not acknowledge; the message says why (no secret in it)."""

    def __init__(self, message: str, *, status: int | None = None, reply: str = "") -> None:
        super().__init__(message)
        self.status = status  # the receiver's HTTP status, when it answered
        self.reply = reply  # and its answer


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """What the receiver answered to an acknowledged batch."""

    status: int | None  # the HTTP status; None for syslog (TCP has no reply)
    body: str


class Sender(Protocol):
    """A destination's connection to its receiver."""

    async def send(self, items: Sequence[Item]) -> Reply: ...
    async def close(self) -> None: ...


def signature(secret: str, body: bytes) -> str:
    """The `X-Auditq-Signature` of a body: `sha256=` and the hex HMAC-SHA256 under the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@functools.cache
def _system_ssl_context() -> ssl.SSLContext:
    """Verified TLS against the system's CAs: made once (loading them takes a while)."""
    return ssl.create_default_context()


def _ssl_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    """Verified TLS: the system's CAs, or the destination's own CA certificate."""
    ca_pem = options.get("ca_pem")
    if ca_pem:
        return ssl.create_default_context(cadata=ca_pem)
    return _system_ssl_context()


def _safe(message: str) -> str:
    return redact_sensitive_in_string(message)[:REPLY_LIMIT]


class _Http:
    """What the HTTP kinds share: a session whose resolver refuses forbidden addresses."""

    def __init__(self, destination: Destination, secret: str | None) -> None:
        self.destination = destination
        self.secret = secret
        self.options = destination.options
        self.allow_private = bool(self.options.get("allow_private"))
        check_url(destination.kind, destination.url, allow_private=self.allow_private)
        self.tls = urlsplit(destination.url).scheme == "https"
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(allow_private=self.allow_private),
                # Plain http:// needs no TLS context (the system's CAs take a while to load).
                ssl=_ssl_context(self.options) if self.tls else True,
                limit=4,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
                headers={"User-Agent": "auditq"},
            )
        return self._session

    def scrub(self, text: str) -> str:
        """`text` without the secret: a receiver that echoes what it was sent (its error
        saying which token it refused) must not put the secret into last_error or a reply."""
        return text.replace(self.secret, "[REDACTED]") if self.secret else text

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        try:
            async with self.session().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                # Whole (a _bulk answer is read item by item), but bounded: a receiver's
                # answer never takes more than MAX_REPLY_BYTES of the worker's memory.
                answer = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    answer += chunk
                    if len(answer) > MAX_REPLY_BYTES:
                        raise DeliveryError(
                            f"the receiver's answer exceeds {MAX_REPLY_BYTES} bytes"
                        )
                return response.status, self.scrub(answer.decode(errors="replace"))
        except UnsafeDestination as exc:
            raise DeliveryError(f"refused: {exc}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DeliveryError(_safe(f"{type(exc).__name__}: {exc}")) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class Webhook(_Http):
    """POST a JSON array of the batch's items, signed when the destination has a secret."""

    async def send(self, items: Sequence[Item]) -> Reply:
        body = _encoder.encode(
            [render(item, self.destination.format, self.options) for item in items]
        )
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        status, reply = await self.post(self.destination.url, body, headers)
        if not 200 <= status < 300:
            raise DeliveryError(
                _safe(f"HTTP {status}: {reply[:300]}"), status=status, reply=reply[:REPLY_LIMIT]
            )
        return Reply(status=status, body=reply[:REPLY_LIMIT])


class SplunkHec(_Http):
    """Splunk's HTTP Event Collector, `/services/collector/event`: one JSON object per item."""

    def url(self) -> str:
        parts = urlsplit(self.destination.url)
        if parts.path in ("", "/"):
            parts = parts._replace(path="/services/collector/event")
        return urlunsplit(parts)

    async def send(self, items: Sequence[Item]) -> Reply:
        host = self.options.get("host") or socket.gethostname()
        sourcetype = self.options.get("sourcetype") or (
            "ocsf" if self.destination.format == "ocsf" else "auditq:event"
        )
        lines = []
        for item in items:
            event: dict[str, Any] = {
                "time": round(item.ts.timestamp(), 6),
                "host": host,
                "source": self.options.get("source") or "auditq",
                "sourcetype": sourcetype,
                "event": render(item, self.destination.format, self.options),
            }
            if self.options.get("index"):
                event["index"] = self.options["index"]
            lines.append(_encoder.encode(event))
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers["Authorization"] = f"Splunk {self.secret}"
        status, reply = await self.post(self.url(), b"\n".join(lines), headers)
        if status != 200:
            raise DeliveryError(
                _safe(f"HEC {status}: {reply[:300]}"), status=status, reply=reply[:REPLY_LIMIT]
            )
        try:
            answer = msgspec.json.decode(reply)
        except msgspec.DecodeError:
            raise DeliveryError(_safe(f"HEC {status}, not JSON: {reply[:300]}")) from None
        if not isinstance(answer, dict) or answer.get("code") != 0:
            raise DeliveryError(
                _safe(f"HEC refused: {reply[:300]}"), status=status, reply=reply[:REPLY_LIMIT]
            )
        return Reply(status=status, body=reply[:REPLY_LIMIT])


class Elasticsearch(_Http):
    """The `_bulk` API: a `create` per item with the event id as `_id`, so a re-delivery of a
    document already there is answered 409 per item, which counts as delivered."""

    def url(self) -> tuple[str, str]:
        parts = urlsplit(self.destination.url)
        index = parts.path.strip("/") or self.options.get("index") or "auditq"
        return urlunsplit(parts._replace(path="/_bulk", query="", fragment="")), index

    async def send(self, items: Sequence[Item]) -> Reply:
        url, index = self.url()
        lines = []
        for item in items:
            lines.append(_encoder.encode({"create": {"_index": index, "_id": item.id}}))
            lines.append(_encoder.encode(render(item, self.destination.format, self.options)))
        body = b"\n".join(lines) + b"\n"  # the bulk body ends with a newline
        headers = {"Content-Type": "application/x-ndjson"}
        if self.secret:
            headers["Authorization"] = f"ApiKey {self.secret}"
        status, reply = await self.post(url, body, headers)
        if status != 200:
            raise DeliveryError(
                _safe(f"Elasticsearch {status}: {reply[:300]}"), status=status, reply=reply
            )
        try:
            answer = msgspec.json.decode(reply)
        except msgspec.DecodeError:
            raise DeliveryError(_safe(f"Elasticsearch {status}, not JSON: {reply[:300]}")) from None
        if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
            raise DeliveryError(_safe(f"Elasticsearch answered no items: {reply[:300]}"))
        if len(answer["items"]) != len(items):
            raise DeliveryError(
                f"Elasticsearch answered {len(answer['items'])} items for {len(items)}"
            )
        for result in answer["items"]:
            outcome: Any = next(iter(result.values()), {}) if isinstance(result, dict) else {}
            item_status = outcome.get("status") if isinstance(outcome, dict) else None
            if item_status in (200, 201, 409):  # 409: that id is there already
                continue
            error = outcome.get("error") if isinstance(outcome, dict) else None
            reason = error.get("reason") if isinstance(error, dict) else error
            raise DeliveryError(
                _safe(f"Elasticsearch refused {outcome.get('_id')}: {item_status} {reason}"),
                status=status,
                reply=reply[:REPLY_LIMIT],
            )
        return Reply(status=status, body=reply[:REPLY_LIMIT])


class Syslog:
    """RFC 5424 over TCP or TLS, octet-counted; one connection kept open and reopened on error.

    TCP syslog has no application-level acknowledgment: a batch counts as delivered once
    every byte was handed to the connection and flushed (docs/destinations.md says what a
    receiver that dies mid-batch can lose and how RELP would close that gap).
    """

    def __init__(self, destination: Destination, secret: str | None) -> None:
        self.destination = destination
        self.options = destination.options
        self.allow_private = bool(self.options.get("allow_private"))
        scheme, self.host, self.port = check_url(
            "syslog", destination.url, allow_private=self.allow_private
        )
        self.tls = "tls" in scheme
        self.hostname = str(self.options.get("host") or socket.gethostname())
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None

    async def _connect(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            assert self._reader is not None
            if not self._reader.at_eof():
                return self._writer
            await self.close()
        try:
            addresses = await resolve(self.host, self.port, allow_private=self.allow_private)
        except UnsafeDestination as exc:
            raise DeliveryError(f"refused: {exc}") from None
        except OSError as exc:
            raise DeliveryError(_safe(f"cannot resolve {self.host}: {exc}")) from None
        context = _ssl_context(self.options) if self.tls else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    addresses[0],
                    self.port,
                    ssl=context,
                    server_hostname=self.host if context else None,
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise DeliveryError(_safe(f"{type(exc).__name__}: {exc}")) from None
        self._reader, self._writer = reader, writer
        return writer

    async def send(self, items: Sequence[Item]) -> Reply:
        writer = await self._connect()
        payload = b"".join(
            syslog.frame(
                syslog.message(
                    item,
                    text(render(item, self.destination.format, self.options)),
                    hostname=self.hostname,
                    app_name="auditq",
                )
            )
            for item in items
        )
        try:
            writer.write(payload)
            await asyncio.wait_for(writer.drain(), HTTP_TIMEOUT_S)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self.close()
            raise DeliveryError(_safe(f"{type(exc).__name__}: {exc}")) from None
        return Reply(status=None, body=f"{len(items)} messages written ({len(payload)} bytes)")

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except (OSError, TimeoutError, ssl.SSLError):
                pass


def make_sender(destination: Destination, secret: str | None) -> Sender:
    """The sender of a destination's kind (raises UnsafeDestination for a refused URL)."""
    if destination.kind == "webhook":
        return Webhook(destination, secret)
    if destination.kind == "splunk-hec":
        return SplunkHec(destination, secret)
    if destination.kind == "elasticsearch":
        return Elasticsearch(destination, secret)
    if destination.kind == "syslog":
        return Syslog(destination, secret)
    raise ValueError(f"unknown destination kind {destination.kind!r}")
