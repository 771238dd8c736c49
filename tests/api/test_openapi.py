"""The OpenAPI document: every route of the app, with schemas, parameters and bearer security."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
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


def test_readme_has_the_section() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    tasks = readme.index("## Tasks, queue and ingest")
    assert tasks < readme.index("## Configuration")
