"""The OpenAPI 3.1 document, made from the app's router at request time so no route is missed."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from service.api.auth import PROTECTED_PREFIXES

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"
OPERATION_ATTR = "__auditq_operation__"
_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

H = TypeVar("H", bound=Callable[..., Any])


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    """What went wrong: a snake_case code and a human sentence."""

    code: str
    message: str


class ErrorEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """Every error response."""

    error: ErrorDetail


@dataclasses.dataclass(frozen=True)
class Param:
    """One query parameter."""

    name: str
    schema: Mapping[str, Any]
    description: str = ""
    required: bool = False
    repeatable: bool = False


@dataclasses.dataclass(frozen=True)
class Operation:
    """What the document says of one route beyond its path and method."""

    summary: str = ""
    query: tuple[Param, ...] = ()
    body: Any = None  # a msgspec type, a tuple of them (any of), or a JSON schema (a Mapping)
    body_required: bool = False
    responses: Mapping[int, Any] = dataclasses.field(default_factory=dict)  # status -> type
    errors: tuple[int, ...] = ()
    media_type: str = "application/json"  # of the success responses


def operation(**fields: Any) -> Callable[[H], H]:
    """Describe a handler for the OpenAPI document."""
    described = Operation(**fields)

    def decorate(handler: H) -> H:
        setattr(handler, OPERATION_ATTR, described)
        return handler

    return decorate


_STRING = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}

# Routes described by the contract whose handlers carry no Operation: their query parameters.
_AUDIT_FILTERS = (
    Param("action", _STRING, "exact action; repeatable", repeatable=True),
    Param("action_prefix", _STRING, "actions starting with this"),
    Param("category", _STRING),
    Param("severity", {"enum": ["info", "notice", "warning", "critical"]}),
    Param("outcome", {"enum": ["success", "failure"]}),
    Param("actor_id", _STRING),
    Param("entity_type", _STRING),
    Param("entity_id", _STRING),
    Param("tenant", _STRING),
    Param("request_id", _STRING),
    Param("ip", _STRING),
    Param("since", _TIME),
    Param("until", _TIME),
    Param("q", _STRING, "full-text search"),
)
_PAGE = (
    Param("order", {"enum": ["desc", "asc"], "default": "desc"}),
    Param("limit", _LIMIT),
    Param("cursor", _STRING, "next_cursor of the previous page"),
)
KNOWN_QUERIES: dict[str, tuple[Param, ...]] = {
    "/api/v1/admin/audit-logs": _AUDIT_FILTERS + _PAGE,
    "/api/v1/admin/audit-logs/entity/{entity_type}/{entity_id}": _PAGE[1:],
    "/api/v1/admin/audit-logs/user/{actor_id}": _PAGE[1:],
    "/api/v1/admin/audit-logs/export": (
        Param("format", {"enum": ["csv", "jsonl"]}, required=False),
        *_AUDIT_FILTERS,
    ),
    "/api/v1/admin/audit-logs/statistics": (
        Param("since", _TIME),
        Param("until", _TIME),
        Param("tenant", _STRING),
    ),
    "/api/v1/admin/audit-logs/stream": _AUDIT_FILTERS,
}

_ERROR_TEXT = {
    400: "Bad input; the message names the parameter",
    401: "Missing or unknown token",
    403: "The token's role may not do this",
    404: "Not found",
    409: "Conflict with the resource's state",
    413: "Body too large",
    415: "Body is not JSON",
    503: "A dependency (Redis or PostgreSQL) is not answering",
}


def _is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES[0]) or path == PROTECTED_PREFIXES[1]


def _summary(handler: Callable[..., Any]) -> str:
    doc = inspect.getdoc(handler) or ""
    return doc.splitlines()[0] if doc else ""


def _schema(kind: Any, types: list[Any]) -> dict[str, Any]:
    """A placeholder for `kind`'s schema, resolved once every type is known."""
    if isinstance(kind, Mapping):
        return dict(kind)
    if isinstance(kind, tuple):  # one of several types
        return {"anyOf": [_schema(k, types) for k in kind]}
    types.append(kind)
    return {"$type": len(types) - 1}


def _parameters(path: str, query: tuple[Param, ...]) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(path)
    ]
    for param in query:
        schema = dict(param.schema)
        entry: dict[str, Any] = {"name": param.name, "in": "query", "required": param.required}
        if param.repeatable:
            schema = {"type": "array", "items": schema}
            entry |= {"style": "form", "explode": True}
        entry["schema"] = schema
        if param.description:
            entry["description"] = param.description
        parameters.append(entry)
    return parameters


def _responses(op: Operation, *, described: bool, types: list[Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, kind in (op.responses or {200: None}).items():
        response: dict[str, Any] = {"description": "Success"}
        if kind is not None:
            response["content"] = {op.media_type: {"schema": _schema(kind, types)}}
        elif not described:
            response["description"] = "Success (see the README for the body)"
        responses[str(status)] = response
    return responses


def _operation_doc(
    path: str, method: str, handler: Callable[..., Any], types: list[Any]
) -> dict[str, Any]:
    described: Operation | None = getattr(handler, OPERATION_ATTR, None)
    op = described or Operation()
    doc: dict[str, Any] = {
        "summary": op.summary or _summary(handler),
        "operationId": f"{method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', path).strip('_')}",
    }
    parameters = _parameters(path, op.query if described else KNOWN_QUERIES.get(path, ()))
    if parameters:
        doc["parameters"] = parameters
    if op.body is not None:
        doc["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": _schema(op.body, types)}},
        }
    responses = _responses(op, described=described is not None, types=types)
    errors = set(op.errors) | {503}
    if op.query or op.body is not None or described is None:
        errors.add(400)
    protected = _is_protected(path)
    if protected:
        errors |= {401, 403}
    if _PATH_PARAM.search(path):
        errors.add(404)
    doc["security"] = [{"bearer": []}] if protected else []
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": _schema(ErrorEnvelope, types)}},
        }
    doc["responses"] = responses
    return doc


def _resolve(node: Any, refs: list[dict[str, Any]]) -> Any:
    """Replace the placeholders with the references msgspec made."""
    if isinstance(node, dict):
        if set(node) == {"$type"}:
            return refs[node["$type"]]
        return {key: _resolve(value, refs) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, refs) for value in node]
    return node


def build_document(routes: Iterable[web.AbstractRoute], *, title: str = "auditq") -> dict[str, Any]:
    """Make the OpenAPI document of `routes`."""
    types: list[Any] = []
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        method = route.method.upper()
        resource = route.resource
        if method in ("HEAD", "*", "OPTIONS") or resource is None:
            continue
        path = resource.canonical
        paths.setdefault(path, {})[method.lower()] = _operation_doc(
            path, method, route.handler, types
        )
    refs, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": API_VERSION,
            "description": "Audit events into PostgreSQL: admin, ingest and ops API.",
        },
        "paths": _resolve(paths, list(refs)),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@operation(summary="This document", responses={200: {"type": "object"}})
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every route."""
    return web.json_response(build_document(request.app.router.routes()))


ROUTES = [web.get("/api/v1/openapi.json", openapi_json)]
