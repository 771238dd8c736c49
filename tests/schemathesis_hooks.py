"""Schemathesis hooks of tests/test_openapi_fuzz.py: the rules JSON Schema cannot state.

Loaded by the `schemathesis` CLI through SCHEMATHESIS_HOOKS. Both only touch cases generated
as schema-valid, and only drop optional parameters, so a case stays schema-valid; everything
else the document says is checked as generated."""

from __future__ import annotations

from typing import Any

import schemathesis
from multidict import MultiDict

from service.api.audit_logs.statistics import StatisticsQuery, stats_window
from service.api.errors import ApiError
from service.api.inputs import read_query

STATISTICS = "/api/v1/admin/audit-logs/statistics"
SUGGESTIONS = "/api/v1/admin/audit-logs/suggestions"


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if case.meta is None or case.meta.generation.mode != schemathesis.GenerationMode.POSITIVE:
        return case
    # A cursor is signed by the API (an HMAC): no generator can make one that passes, and
    # a forged one is rightly a 400. A real one is what next_cursor hands out.
    for given in (case.query, case.body):
        if isinstance(given, dict):
            given.pop("cursor", None)
    query = case.query
    if not query:
        return case
    # A statistics window is at most x-max-window-days long and since is not after until: a
    # rule between two parameters. The API's own check decides; a window it refuses is
    # replaced by the default one.
    if case.operation.path == STATISTICS:
        window = ("since", "until", "bucket")  # bucket=hour: a window of at most 7 days
        params = MultiDict((k, str(v)) for k, v in query.items() if k in window)
        try:
            stats_window(read_query(StatisticsQuery, params))
        except ApiError:
            query.pop("since", None)
            query.pop("until", None)
    # The ids of an entity type: field=entity_id needs entity_type. Without it, the field is
    # dropped (its default, the actions).
    if case.operation.path == SUGGESTIONS and query.get("field") == "entity_id":
        if query.get("entity_type") in (None, ""):
            query.pop("field")
    return case
