"""Admin routes over API tokens (list, create, revoke) and the caller's own identity."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Annotated

import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from service.api import body as json_body
from service.api.auth import TOKEN_CHECK, request_principal
from service.api.errors import ApiError
from service.api.openapi import operation
from service.api.state import POOL, REDIS, request_by, unrecorded
from service.ops.admin_actions import RECORD_FAILURES, unwritable
from service.queue import revocations
from service.store import tokens as auth

# A name is a label for people and the actor of audit events: printable, no surrounding space.
TokenName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^\S(.*\S)?$")]


class Whoami(msgspec.Struct, frozen=True, kw_only=True):
    """The calling token: its name and role."""

    name: str
    role: auth.Role


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A token as stored: never its secret, which only exists at creation."""

    name: str
    role: auth.Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenList(msgspec.Struct, frozen=True, kw_only=True):
    """Every token ever made, oldest first."""

    items: list[TokenInfo]


class NewToken(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to make: a name (unique among active tokens) and a role."""

    name: TokenName
    role: auth.Role


class CreatedToken(msgspec.Struct, frozen=True, kw_only=True):
    """A new token; `token` is shown this once (only its hash is stored)."""

    name: str
    role: auth.Role
    token: str


class RevokedToken(msgspec.Struct, frozen=True, kw_only=True):
    """The token that was revoked."""

    name: str
    revoked: bool = True


@operation(summary="The calling token's name and role", responses={200: Whoami})
async def whoami(request: web.Request) -> web.Response:
    """Tell the caller which token it uses (the console hides what its role may not do)."""
    principal = request_principal(request)
    return json_body.json_response(Whoami(name=principal.name, role=principal.role))


@operation(summary="Every API token, active and revoked (no secrets)", responses={200: TokenList})
async def list_tokens(request: web.Request) -> web.Response:
    """List the tokens."""
    async with request.app[POOL].acquire() as conn:
        rows = await auth.list_tokens(conn)
    items = [
        TokenInfo(
            name=row["name"],
            role=row["role"],
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
            revoked_at=row["revoked_at"],
        )
        for row in rows
    ]
    return json_body.json_response(TokenList(items=items))


@operation(
    summary="Create a token; the answer holds it once",
    body=NewToken,
    body_required=True,
    responses={201: CreatedToken},
    errors=(409, 415),
)
async def create_token(request: web.Request) -> web.Response:
    """Make a token of a role, audited as token.created."""
    wanted = await json_body.read_json(request, NewToken)
    async with request.app[POOL].acquire() as conn:
        try:  # stored with its token.created event, or not at all
            token = await auth.create_token(
                conn, name=wanted.name, role=wanted.role, by=request_by(request)
            )
        except ValueError as exc:  # an active token has that name
            raise ApiError(409, "token_exists", str(exc)) from None
        except RECORD_FAILURES as exc:
            raise unrecorded(unwritable("token.created", exc)) from None
    # This replica may have cached the token as unknown a moment ago.
    request.app[TOKEN_CHECK].forget(auth.hash_token(token))
    return json_body.json_response(
        CreatedToken(name=wanted.name, role=wanted.role, token=token), status=201
    )


@operation(summary="Revoke the active token of that name", responses={200: RevokedToken})
async def revoke_token(request: web.Request) -> web.Response:
    """Revoke a token, audited as token.revoked; 404 when no active token has the name."""
    name = request.match_info["name"]
    async with request.app[POOL].acquire() as conn:
        try:  # revoked with its token.revoked event, or not at all
            revoked = await auth.revoke_token(conn, name, by=request_by(request))
        except RECORD_FAILURES as exc:
            raise unrecorded(unwritable("token.revoked", exc)) from None
    if not revoked:
        raise ApiError(404, "not_found", f"no active token is named {name[:128]!r}")
    # Every replica (this one at once) refuses it now, even while PostgreSQL is away.
    request.app[TOKEN_CHECK].forget(revoked)
    with contextlib.suppress(RedisError, OSError):  # each replica rechecks within 5 s anyway
        await revocations.announce(request.app[REDIS], revoked)
    return json_body.json_response(RevokedToken(name=name))


ROUTES = [
    web.get("/api/v1/admin/whoami", whoami),
    web.get("/api/v1/admin/tokens", list_tokens),
    web.post("/api/v1/admin/tokens", create_token),
    web.post("/api/v1/admin/tokens/{name}/revoke", revoke_token),
]
