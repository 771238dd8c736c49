"""Real receivers for destination tests: an aiohttp webhook that checks signatures and can
play down, a Splunk HEC and an Elasticsearch `_bulk` endpoint implementing their documented
request and response formats (docs/destinations.md cites them)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


class Receiver:
    """An HTTP receiver on a loopback port; `down` makes it answer 503 (or drop connections)."""

    def __init__(self, *, secret: str | None = None, token: str | None = None) -> None:
        self.secret = secret
        self.token = token
        self.down = False
        self.echo = False  # answer a refused token by quoting it (as careless receivers do)
        self.deliveries: list[list[Any]] = []  # each acknowledged request's items
        self.refused = 0
        self.bad_signatures = 0
        self.es_docs: dict[str, Any] = {}  # Elasticsearch: documents by _id
        self.es_reject: set[str] = set()  # Elasticsearch: ids answered with a per-item 400
        app = web.Application()
        app.router.add_post("/hook", self.webhook)
        app.router.add_post("/services/collector/event", self.hec)
        app.router.add_post("/_bulk", self.bulk)
        app.router.add_post("/redirect", self.redirect)
        self.server = TestServer(app, host="127.0.0.1")

    async def __aenter__(self) -> Receiver:
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    @property
    def items(self) -> list[Any]:
        """Every item acknowledged, in the order received (duplicates kept)."""
        return [item for batch in self.deliveries for item in batch]

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.down:
            self.refused += 1
            return web.json_response({"error": "maintenance"}, status=503)
        if self.secret is not None:
            expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(request.headers.get("X-Auditq-Signature", ""), expected):
                self.bad_signatures += 1
                return web.json_response({"error": "bad signature"}, status=401)
        items = json.loads(body)
        assert isinstance(items, list)
        self.deliveries.append(items)
        return web.json_response({"received": len(items)})

    async def redirect(self, request: web.Request) -> web.Response:
        self.refused += 1
        raise web.HTTPTemporaryRedirect("http://169.254.169.254/latest/meta-data/")

    async def hec(self, request: web.Request) -> web.Response:
        # Splunk HEC: `Authorization: Splunk <token>`; the body is JSON event objects one
        # after another; success is 200 {"text":"Success","code":0}; a bad token is 401
        # {"text":"Invalid token","code":4}; an unavailable server 503 code 9.
        if self.down:
            self.refused += 1
            return web.json_response({"text": "Server is busy", "code": 9}, status=503)
        if request.headers.get("Authorization") != f"Splunk {self.token}":
            quoted = f": {request.headers.get('Authorization')}" if self.echo else ""
            return web.json_response({"text": f"Invalid token{quoted}", "code": 4}, status=401)
        text = await request.text()
        decoder, pos, events = json.JSONDecoder(), 0, []
        while pos < len(text):
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            event, pos = decoder.raw_decode(text, pos)
            for field in ("event", "time", "host", "source", "sourcetype"):
                if field not in event:
                    return web.json_response(
                        {"text": "Event field is required", "code": 12}, status=400
                    )
            events.append(event)
        if not events:
            return web.json_response({"text": "No data", "code": 5}, status=400)
        self.deliveries.append(events)
        return web.json_response({"text": "Success", "code": 0})

    async def bulk(self, request: web.Request) -> web.Response:
        # Elasticsearch _bulk: NDJSON action/source line pairs ending in a newline; 200 with
        # {"took", "errors", "items": [{"create": {"_index", "_id", "status", "error"?}}]};
        # `create` of an existing _id is a per-item 409 version_conflict_engine_exception.
        if self.down:
            self.refused += 1
            return web.json_response({"error": "unavailable", "status": 503}, status=503)
        if request.headers.get("Content-Type", "").split(";")[0] != "application/x-ndjson":
            return web.json_response({"error": "wrong content type", "status": 406}, status=406)
        text = await request.text()
        if not text.endswith("\n"):
            return web.json_response(
                {
                    "error": {
                        "type": "illegal_argument_exception",
                        "reason": "The bulk request must be terminated by a newline [\\n]",
                    },
                    "status": 400,
                },
                status=400,
            )
        lines = text.splitlines()
        results, accepted = [], []
        for action_line, source_line in zip(lines[0::2], lines[1::2], strict=True):
            action = json.loads(action_line)
            ((op, meta),) = action.items()
            doc_id = meta["_id"]
            if doc_id in self.es_reject:
                error = {"type": "document_parsing_exception", "reason": "failed to parse"}
                results.append(
                    {op: {"_index": meta["_index"], "_id": doc_id, "status": 400, "error": error}}
                )
                continue
            if op == "create" and doc_id in self.es_docs:
                results.append(
                    {
                        op: {
                            "_index": meta["_index"],
                            "_id": doc_id,
                            "status": 409,
                            "error": {
                                "type": "version_conflict_engine_exception",
                                "reason": f"[{doc_id}]: version conflict",
                            },
                        }
                    }
                )
                continue
            self.es_docs[doc_id] = json.loads(source_line)
            accepted.append(self.es_docs[doc_id])
            results.append(
                {op: {"_index": meta["_index"], "_id": doc_id, "status": 201, "result": "created"}}
            )
        self.deliveries.append(accepted)
        errors = any(next(iter(r.values()))["status"] >= 300 for r in results)
        return web.json_response({"took": 1, "errors": errors, "items": results})
