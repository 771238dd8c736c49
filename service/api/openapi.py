"""The OpenAPI 3.1 document, made from the app's router at request time so no route is missed."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from service.api.auth import PROTECTED_PREFIXES
from service.api.inputs import text_forms

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
class Fields:
    """The query parameters of a route: the fields of a Struct read by `read_query`."""

    kind: type
    skip: frozenset[str] = frozenset()  # fields the route fixes (path parts) or ignores


@dataclasses.dataclass(frozen=True)
class Operation:
    """What the document says of one route beyond its path and method."""

    summary: str = ""
    description: str = ""
    query: type | Fields | tuple[type | Fields, ...] = ()
    path: type | None = None  # a Struct whose fields are path parameters (else: strings)
    body: Any = None  # a msgspec type, or a JSON schema (a Mapping)
    body_required: bool = False
    responses: Mapping[int, Any] = dataclasses.field(default_factory=dict)  # status -> type
    errors: tuple[int, ...] = ()
    media_types: tuple[str, ...] = ("application/json",)  # of the success responses
    extensions: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # x-… keys
    types: tuple[Any, ...] = ()  # further types the document needs among its components


def operation(**fields: Any) -> Callable[[H], H]:
    """Describe a handler for the OpenAPI document."""
    described = Operation(**fields)

    def decorate(handler: H) -> H:
        setattr(handler, OPERATION_ATTR, described)
        return handler

    return decorate


_ERROR_TEXT = {
    400: "Bad input; the message names the parameter",
    401: "Missing or unknown token",
    403: "The token's role may not do this",
    404: "Not found",
    405: "The path takes other methods (the Allow header lists them)",
    409: "Conflict with the resource's state",
    413: "Body too large",
    415: "Body is not JSON",
    429: "This token holds as many open streams or exports as it may",
    503: "A dependency (Redis or PostgreSQL) is not answering",
}
_BLANK = {"const": "", "description": "blank: no value"}
_PLAIN_STRING_KEYS = frozenset({"type", "maxLength", "description", "title"})


def _is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES[0]) or path == PROTECTED_PREFIXES[1]


def _summary(handler: Callable[..., Any]) -> str:
    doc = inspect.getdoc(handler) or ""
    return doc.splitlines()[0] if doc else ""


def _query_fields(op: Operation) -> tuple[Fields, ...]:
    query = op.query if isinstance(op.query, tuple) else (op.query,)
    return tuple(q if isinstance(q, Fields) else Fields(q) for q in query)


class _Schemas:
    """The components of every type the document names, and the schema of each field."""

    def __init__(self, types: Iterable[Any]) -> None:
        self.types = list(dict.fromkeys(types))
        refs, self.components = msgspec.json.schema_components(
            self.types, ref_template="#/components/schemas/{name}"
        )
        self.refs = dict(zip(self.types, refs, strict=True))
        for kind in self.types:
            if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
                self._apply_forms(kind)

    def _apply_forms(self, kind: type) -> None:
        """A field read through a TextForm is documented by the form's schema."""
        properties = self.properties(kind)
        for name, form in text_forms(kind).items():
            old = properties[name]
            members = old.get("anyOf", [old])
            nullable = [m for m in members if m.get("type") == "null"]
            described = {k: v for m in members for k, v in m.items() if k == "description"}
            new: dict[str, Any] = dict(form.schema) | described
            properties[name] = {"anyOf": [new, *nullable]} if nullable else new
            if "default" in old:
                properties[name]["default"] = old["default"]

    def ref(self, kind: Any) -> Any:
        if isinstance(kind, Mapping):
            return dict(kind)
        return self.refs[kind]

    def properties(self, kind: type) -> dict[str, Any]:
        name = self.refs[kind]["$ref"].rsplit("/", 1)[1]
        properties: dict[str, Any] = self.components[name]["properties"]
        return properties

    def parameter(self, kind: type, name: str, where: str) -> dict[str, Any]:
        """The parameter `name` of a query string (or path) read as `kind`."""
        field = copy.deepcopy(self.properties(kind)[name])
        default = field.pop("default", None)
        members = [m for m in field.get("anyOf", [field]) if m.get("type") != "null"]
        lists = [m for m in members if m.get("type") == "array"]
        single = [m for m in members if m.get("type") != "array"]
        value = single[0] if len(single) == 1 else {"anyOf": single}
        description = value.pop("description", "") if isinstance(value, dict) else ""
        entry: dict[str, Any] = {"name": name, "in": where, "required": where == "path"}
        if where == "path":
            entry["schema"] = value
        elif lists:
            entry |= {"style": "form", "explode": True}
            entry["schema"] = {"type": "array", "items": _blank_allowed(value)}
        else:
            entry["schema"] = _blank_allowed(value)
            if default is not None:
                entry["schema"]["default"] = default
        if description:
            entry["description"] = description
        return entry


def _blank_allowed(schema: dict[str, Any]) -> dict[str, Any]:
    """An empty value (a blank form field) is no value: say so where the schema refuses it."""
    if schema.get("type") == "string" and set(schema) <= _PLAIN_STRING_KEYS:
        return schema
    if set(schema) == {"anyOf"}:
        return {"anyOf": [*schema["anyOf"], _BLANK]}
    return {"anyOf": [schema, _BLANK]}


def _parameters(path: str, op: Operation, schemas: _Schemas) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []
    for name in _PATH_PARAM.findall(path):
        if op.path is not None and name in op.path.__struct_fields__:  # type: ignore[attr-defined]
            parameters.append(schemas.parameter(op.path, name, "path"))
        else:
            parameters.append(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            )
    for fields in _query_fields(op):
        for name in fields.kind.__struct_fields__:  # type: ignore[attr-defined]
            if name not in fields.skip:
                parameters.append(schemas.parameter(fields.kind, name, "query"))
    return parameters


def _statuses(path: str, op: Operation, parameters: list[dict[str, Any]]) -> set[int]:
    """Every error status the route can answer."""
    statuses = set(op.errors) | {503}
    if parameters or op.body is not None:
        statuses.add(400)
    if op.body is not None:
        statuses |= {413, 415}
    if _is_protected(path):
        statuses |= {401, 403}
    if _PATH_PARAM.search(path):
        statuses.add(404)
    return statuses


def _operation_doc(
    path: str, method: str, handler: Callable[..., Any], schemas: _Schemas
) -> dict[str, Any]:
    op: Operation = getattr(handler, OPERATION_ATTR, None) or Operation()
    doc: dict[str, Any] = {
        "summary": op.summary or _summary(handler),
        "operationId": f"{method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', path).strip('_')}",
    }
    if op.description:
        doc["description"] = op.description
    parameters = _parameters(path, op, schemas)
    if parameters:
        doc["parameters"] = parameters
    if op.body is not None:
        doc["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schemas.ref(op.body)}},
        }
    responses: dict[str, Any] = {}
    for status, kind in (op.responses or {200: None}).items():
        response: dict[str, Any] = {"description": "Success"}
        if kind is not None:
            schema = schemas.ref(kind)
            response["content"] = {media: {"schema": schema} for media in op.media_types}
        responses[str(status)] = response
    protected = _is_protected(path)
    doc["security"] = [{"bearer": []}] if protected else []
    for status in sorted(_statuses(path, op, parameters)):
        error = schemas.ref(ErrorEnvelope)
        declared = responses.get(str(status), {}).get("content", {}).get("application/json")
        if declared is not None:  # the route's own body for that status, or the error envelope
            error = {"anyOf": [declared["schema"], error]}
        responses[str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": error}},
        }
    doc["responses"] = responses
    return doc | dict(op.extensions)


def _types(op: Operation) -> Iterable[Any]:
    """The msgspec types `op` names."""
    named = [*op.types, op.path, op.body, *op.responses.values()]
    named += [fields.kind for fields in _query_fields(op)]
    return [kind for kind in named if kind is not None and not isinstance(kind, Mapping)]


def build_document(routes: Iterable[web.AbstractRoute], *, title: str = "auditq") -> dict[str, Any]:
    """Make the OpenAPI document of `routes`."""
    operations: list[tuple[str, str, Callable[..., Any]]] = []
    types: list[Any] = [ErrorEnvelope]
    for route in routes:
        method = route.method.upper()
        resource = route.resource
        if method in ("HEAD", "*", "OPTIONS") or resource is None:
            continue
        operations.append((resource.canonical, method, route.handler))
        types += _types(getattr(route.handler, OPERATION_ATTR, None) or Operation())
    schemas = _Schemas(types)
    paths: dict[str, dict[str, Any]] = {}
    for path, method, handler in operations:
        paths.setdefault(path, {})[method.lower()] = _operation_doc(path, method, handler, schemas)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": API_VERSION,
            "description": "Audit events into PostgreSQL: admin, ingest and ops API. A method "
            "a path does not offer is answered 405 with an Allow header.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@operation(summary="This document", responses={200: {"type": "object"}})
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every route."""
    return web.json_response(build_document(request.app.router.routes()))


ROUTES = [web.get("/api/v1/openapi.json", openapi_json)]
