"""Opaque cursors of pages and of the live tail: a signed Position."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import msgspec
from aiohttp import web

from service.api.audit_logs.query import UtcTime
from service.api.errors import bad_parameter
from service.api.state import POOL
from service.store.secrets import read_secret


# Positional, not kw_only: a position is a key of three parts, made in one place each.
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


async def cursor_context(app: web.Application) -> AsyncIterator[None]:
    """Read the cursor secret every replica shares."""
    async with app[POOL].acquire() as conn:
        app[CURSORS] = CursorCodec(await read_secret(conn, "cursor"))
    yield
