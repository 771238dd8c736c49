"""The OpenAPI document: every route of the app, with schemas, parameters and bearer security."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import MultiDict

from service.api.app import ROUTES, create_app
from service.api.audit_logs.query import AuditLogQuery
from service.api.audit_logs.statistics import StatisticsQuery
from service.api.errors import ApiError
from service.api.formats import parse_network, parse_time
from service.api.inputs import read_query
from service.api.tasks import TaskListQuery
from service.settings import Settings


async def document(settings: Settings) -> tuple[dict[str, Any], set[tuple[str, str]]]:
    app = create_app(settings)
    async with TestClient(TestServer(app)) as api:
        async with api.get("/api/v1/openapi.json") as response:  # no token needed
            assert response.status == 200, await response.text()
            doc: dict[str, Any] = await response.json()
        routes = {
            (route.method.lower(), route.resource.canonical)
            for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        }
    return doc, routes


async def test_every_route_is_documented(settings: Settings) -> None:
    doc, routes = await document(settings)
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert routes <= documented, routes - documented
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            protected = path.startswith("/api/v1/admin/") or path == "/api/v1/events"
            assert op["security"] == ([{"bearer": []}] if protected else []), (method, path)
            if protected:
                assert {"401", "403"} <= set(op["responses"]), (method, path)


async def test_schemas_and_query_parameters(settings: Settings) -> None:
    doc, _ = await document(settings)
    paths, schemas = doc["paths"], doc["components"]["schemas"]

    def query(path: str) -> set[str]:
        return {p["name"] for p in paths[path]["get"].get("parameters", []) if p["in"] == "query"}

    assert query("/api/v1/admin/tasks") == {"status", "kind", "limit", "cursor"}
    assert {"action", "since", "until", "q", "limit", "cursor"} <= query("/api/v1/admin/audit-logs")
    listed = paths["/api/v1/admin/tasks"]["get"]["responses"]["200"]
    assert listed["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TaskPage"
    }
    task = schemas["Task"]
    assert set(task["required"]) >= {"id", "status", "failure", "presentation", "next_attempt_at"}
    assert {"AuditEvent", "TaskDetail", "QueueStats", "CleanupPolicy", "ErrorEnvelope"} <= set(
        schemas
    )
    ingest = paths["/api/v1/events"]["post"]
    assert "anyOf" in ingest["requestBody"]["content"]["application/json"]["schema"]
    assert {"202", "400", "413", "415"} <= set(ingest["responses"])
    retry = paths["/api/v1/admin/tasks/{id}/retry"]["post"]
    assert {"202", "404", "409"} <= set(retry["responses"])
    refs = _refs(doc)
    assert refs and all(ref.removeprefix("#/components/schemas/") in schemas for ref in refs)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


PATH_PARAMETER = re.compile(r"[{](\w+):[^{}]*[}]")  # {id:regex} as the docs write it: {id}


def test_the_admin_api_page_lists_every_route() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "admin-api.md").read_text()
    listed = set(re.findall(r"^\| `([A-Z]+ /[^`]*)` \|", page, flags=re.MULTILINE))
    served = {
        route.method + " " + PATH_PARAMETER.sub(r"{\1}", route.path)
        for route in ROUTES
        if isinstance(route, web.RouteDef) and route.path != "/"
        if not route.path.startswith("/console")  # the console's paths: docs/console.md
    }
    missing = sorted(served - listed)
    assert not missing, f"docs/admin-api.md, 'Every route', lacks: {missing}"
    unknown = sorted(listed - served)
    assert not unknown, f"docs/admin-api.md, 'Every route', lists routes the API lacks: {unknown}"


async def test_parameters_are_the_query_structs(settings: Settings) -> None:
    """One declaration: each route's query parameters are its Struct's fields."""
    doc, _ = await document(settings)

    def parameters(path: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in doc["paths"][path]["get"]["parameters"] if p["in"] == "query"}

    base = "/api/v1/admin/audit-logs"
    filters = set(AuditLogQuery.__struct_fields__)
    listed = parameters(base)
    assert set(listed) == filters
    assert {name for name, p in listed.items() if p["schema"].get("type") == "array"} == {
        "action",
        "severity",
        "actor_id",
        "entity_type",
        "tenant",
        "metadata",
        "change_field",
    }
    assert set(parameters(f"{base}/entity/{{entity_type}}/{{entity_id}}")) == filters - {
        "entity_type",
        "entity_id",
        "order",
    }
    assert set(parameters(f"{base}/export")) == filters - {"limit", "cursor", "count"} | {"format"}
    assert set(parameters(f"{base}/stream")) == filters - {"order", "limit", "cursor", "count"}
    assert set(parameters(f"{base}/statistics")) == set(StatisticsQuery.__struct_fields__)
    assert set(parameters("/api/v1/admin/tasks")) == set(TaskListQuery.__struct_fields__)
    formats = json.dumps(listed["ip"]["schema"])
    assert '"ipv4"' in formats and '"ipv6"' in formats
    assert '"date-time"' in json.dumps(listed["until"]["schema"])
    assert listed["limit"]["schema"]["anyOf"][0] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
    }
    search = doc["paths"][f"{base}/search"]["post"]
    assert search["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AuditLogQuery"
    }
    assert {"400", "413", "415"} <= set(search["responses"])
    by_id = doc["paths"][f"{base}/{{id}}"]["get"]["parameters"]
    assert by_id == [
        {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "format": "uuid"},
        }
    ]


async def test_a_wrong_method_is_405_with_allow(settings: Settings) -> None:
    async with TestClient(TestServer(create_app(settings))) as api:
        async with api.post("/healthz") as response:
            assert response.status == 405
            assert response.headers["Allow"] == "GET,HEAD"
            assert (await response.json())["error"]["code"] == "method_not_allowed"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01t12:00:00.5+02:00", datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("0001-01-01T00:00:00+05:00", datetime.min.replace(tzinfo=UTC)),  # past year 1
        ("2024-02-29", datetime(2024, 2, 29, tzinfo=UTC)),
        ("2023-02-29", None),
        ("2024-05-01 12:00:00Z", None),  # not the declared form
        ("20240501", None),
        ("", None),
    ],
)
def test_times_are_read_as_declared(text: str, expected: datetime | None) -> None:
    if expected is None:
        with pytest.raises(ApiError):
            parse_time("since", text)
    else:
        assert parse_time("since", text) == expected


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.2.3", "10.1.2.3/32"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("10.0.0.0/255.0.0.0", None),  # a netmask is not the declared CIDR form
        ("fe80::1%eth0", None),
        ("010.1.2.3", None),
        ("0..0", None),
    ],
)
def test_networks_are_read_as_declared(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ApiError):
            parse_network("ip", text)
    else:
        assert parse_network("ip", text) == expected


@pytest.mark.unit
def test_query_strings_read_numbers_and_refuse_null() -> None:
    assert read_query(TaskListQuery, MultiDict(limit="54.0")).limit == 54
    assert read_query(TaskListQuery, MultiDict(limit="")).limit == 50  # blank: the default
    for params in (MultiDict(status="null"), MultiDict(limit="54.5"), MultiDict(kind="x")):
        with pytest.raises(ApiError) as raised:
            read_query(TaskListQuery, params)
        assert f"`{next(iter(params))}`" in raised.value.message
    with pytest.raises(ApiError, match="more than once"):
        read_query(TaskListQuery, MultiDict([("kind", "events"), ("kind", "events")]))


async def test_every_audit_log_read_declares_its_200_body(settings: Settings) -> None:
    doc, _ = await document(settings)
    reads = {
        ("get", "/api/v1/admin/audit-logs"): "AuditLogPage",
        ("post", "/api/v1/admin/audit-logs/search"): "AuditLogPage",
        ("get", "/api/v1/admin/audit-logs/{id}"): "AuditLogItem",
        ("get", "/api/v1/admin/audit-logs/entity/{entity_type}/{entity_id}"): "AuditLogPage",
        ("get", "/api/v1/admin/audit-logs/user/{actor_id}"): "AuditLogPage",
        ("get", "/api/v1/admin/audit-logs/statistics"): "AuditLogStatistics",
    }
    for (method, path), name in reads.items():
        content = doc["paths"][path][method]["responses"]["200"]["content"]
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{name}"}
    item = doc["components"]["schemas"]["AuditLogItem"]
    assert {"id", "ts", "action", "received_at", "received_via"} <= set(item["required"])
