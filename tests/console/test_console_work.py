"""The console for an admin's real work: true sentences, live state, one time convention."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
from playwright.async_api import expect

from service.events import Actor, AuditEvent, Entity
from tests.support.admin_api import enqueue
from tests.support.console import Stack, Tab, axe_source, open_tab
from tests.support.polling import wait_for


def rows(tab: Tab) -> Any:
    return tab.page.locator("main tbody tr")


async def _stored(stack: Stack, action: str, n: int = 1) -> None:
    async def done() -> bool:
        sql = "SELECT count(*) FROM audit_log WHERE action = $1"
        return await stack.stored(sql, action) >= n

    await wait_for(done)


async def _api(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{stack.url}{path}", headers=headers, json=body) as response,
    ):
        return response.status, await response.json()


async def _failed_task(stack: Stack, payload: str) -> str:
    import redis.asyncio as aioredis

    assert stack.settings.redis_url
    redis = aioredis.Redis.from_url(stack.settings.redis_url)
    try:
        task_id = await enqueue(redis, stack.settings.queue, payload)
    finally:
        await redis.aclose()

    async def failed() -> bool:
        status, body = await _api(stack, "GET", f"/api/v1/admin/tasks/{task_id}")
        return bool(status == 200 and body["status"] == "failed")

    await wait_for(failed)
    return task_id


async def test_a_failed_sign_in_reads_as_failed_and_an_unknown_action_in_words(tab: Tab) -> None:
    stack = tab.stack
    await stack.capture(
        AuditEvent(action="auth.login", outcome="failure", actor=Actor(id="u-16", type="user"))
    )
    await stack.capture(
        AuditEvent(
            action="document.viewed",
            actor=Actor(id="u-17", type="user", name="Grace Hopper"),
            entity=Entity(type="document", id="d-9", name="Q3 report"),
        )
    )
    await stack.capture(
        AuditEvent(
            action="auth.login_failed", outcome="failure", actor=Actor(id="u-18", type="user")
        )
    )
    await stack.capture(
        AuditEvent(
            action="integrity.verified",
            outcome="failure",
            severity="critical",
            actor=Actor(id="u-19", type="user"),
            metadata={"findings": 2},
        )
    )
    await _stored(stack, "document.viewed")
    await _stored(stack, "integrity.verified")
    await tab.sign_in(path="/console/audit-logs?actor_id=u-18")
    await rows(tab).first.wait_for()
    sentence = await rows(tab).first.locator("td").nth(2).inner_text()
    assert sentence == "A sign-in as u-18 failed"  # said once, not "Failed attempt: … failed"
    await tab.open("/console/audit-logs?actor_id=u-19")
    await rows(tab).first.wait_for()
    sentence = await rows(tab).first.locator("td").nth(2).inner_text()
    assert "NOT intact (2 findings)" in sentence and "Failed attempt" not in sentence
    await tab.open("/console/audit-logs?actor_id=u-16")
    await rows(tab).first.wait_for()
    text = await rows(tab).first.inner_text()
    assert "signed in" not in text, text
    assert "A sign-in by u-16 failed" in text
    await tab.open("/console/audit-logs?action=document.viewed")
    await rows(tab).first.wait_for()
    sentence = await rows(tab).first.locator("td").nth(2).inner_text()
    assert "Grace Hopper" in sentence and "document viewed" in sentence and "Q3 report" in sentence
    assert "audit.document.viewed" not in sentence


async def test_a_task_failure_reads_in_plain_words(tab: Tab) -> None:
    task_id = await _failed_task(tab.stack, '{"action": "Not An Action"}')
    _, body = await _api(tab.stack, "GET", f"/api/v1/admin/tasks/{task_id}")
    assert "regex" in body["failure"]["message"]  # what the console must not show as it is
    await tab.sign_in(path=f"/console/tasks/{task_id}")
    await tab.page.get_by_role("heading", name="Failure").wait_for()
    main = tab.page.locator("main")
    await expect(main).to_contain_text("lowercase words joined by dots")
    assert "regex" not in await main.inner_text()
    await tab.open("/console/tasks?status=failed")
    await tab.page.locator(f"tr[data-id='{task_id}']").wait_for()
    assert "regex" not in await tab.page.locator(f"tr[data-id='{task_id}']").inner_text()


async def _confirm(tab: Tab, label: str) -> None:
    dialog = tab.page.locator("dialog[open]")
    await dialog.wait_for()
    await dialog.get_by_role("button", name=label).click()
    await dialog.wait_for(state="detached")


def _dd(tab: Tab, term: str) -> Any:
    return tab.page.locator(f"dl.fields dt:text-is('{term}') + dd")


async def test_an_erasure_is_followed_to_done_without_a_reload(tab: Tab) -> None:
    stack = tab.stack
    for n in range(3):
        await stack.capture(
            AuditEvent(action="doc.opened", actor=Actor(id="u-erase", type="user", name=f"E{n}"))
        )
    await _stored(stack, "doc.opened", 3)
    tab.allowed_errors.append("404")  # never asked yet: the API's 404, logged by the browser
    await tab.sign_in(path="/console/subjects/u-erase")
    await tab.page.get_by_text("No anonymisation was asked").wait_for()
    preview = tab.page.locator("p.preview")
    await expect(preview).to_contain_text("3 row(s) name this subject as their actor and 0 as")
    await tab.page.get_by_role("button", name="Anonymise").click()
    await expect(tab.page.locator("dialog[open]")).to_contain_text("It changes 3 row(s) as actor")
    await _confirm(tab, "Anonymise")
    await expect(_dd(tab, "State")).to_have_text("done", timeout=30_000)
    status, body = await _api(stack, "GET", "/api/v1/admin/subjects/u-erase/anonymisation")
    assert status == 200 and body["state"] == "done"
    await expect(_dd(tab, "Rows")).to_have_text(str(body["rows"]))
    assert body["rows"] >= 3


async def test_after_retry_the_task_page_reaches_its_real_final_state(tab: Tab) -> None:
    stack = tab.stack
    task_id = await _failed_task(stack, '{"action": "Still Not An Action"}')
    _, before = await _api(stack, "GET", f"/api/v1/admin/tasks/{task_id}")
    await tab.sign_in(path=f"/console/tasks/{task_id}")
    await tab.page.get_by_role("button", name="Retry this task").click()
    await _confirm(tab, "Retry")

    async def failed_again() -> bool:
        _, task = await _api(stack, "GET", f"/api/v1/admin/tasks/{task_id}")
        return bool(task["status"] == "failed" and task["finished_at"] != before["finished_at"])

    await wait_for(failed_again)
    _, after = await _api(stack, "GET", f"/api/v1/admin/tasks/{task_id}")
    finished = _dd(tab, "Finished").locator("time")
    await expect(finished).to_have_attribute("datetime", after["finished_at"], timeout=20_000)
    await expect(_dd(tab, "Status")).to_have_text("failed")
    await tab.page.get_by_role("button", name="Retry this task").wait_for()
    # Each failure stays in the task's history, the retry does not reset it.
    assert [f["failed_at"] for f in after["failures"]][-1] == after["finished_at"]
    assert len(after["failures"]) == 2
    runs = tab.page.locator("section[aria-labelledby=h-attempts] li")
    await expect(runs).to_have_count(2)


async def test_the_tasks_list_refreshes_while_visible_lists_each_task_once_and_stops_hidden(
    tab: Tab,
) -> None:
    stack = tab.stack
    page = tab.page
    await _failed_task(stack, "not json either")
    await tab.sign_in(path="/console/tasks?status=failed")
    failed_tab = page.get_by_role("navigation", name="Task status").get_by_role(
        "link", name=re.compile(r"^Failed")
    )
    await expect(failed_tab).to_have_text(re.compile(r"\(\d+\)"))
    shown = int(re.findall(r"\((\d+)\)", await failed_tab.inner_text())[0])
    new_id = await _failed_task(stack, "and a new failure")
    await page.locator(f"tr[data-id='{new_id}']").wait_for(timeout=20_000)
    await expect(failed_tab).to_have_text(re.compile(rf"\({shown + 1}\)"), timeout=20_000)
    ids = await rows(tab).evaluate_all("rs => rs.map(r => r.dataset.id)")
    assert len(ids) == len(set(ids))

    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/v1/admin/" in r.url else None)
    await page.evaluate(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    asked.clear()
    await page.wait_for_timeout(7000)  # two refresh periods and more: nothing is asked
    assert asked == []
    await page.evaluate(
        "Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    await wait_for(lambda: _true(bool(asked)))


async def _true(value: bool) -> bool:
    return value


async def test_the_integrity_page_gives_a_verdict_that_follows_a_verification(tab: Tab) -> None:
    await tab.sign_in(path="/console/integrity")
    verdict = tab.page.locator("p.verdict")
    await expect(verdict).to_contain_text("Not verified yet")
    await tab.page.get_by_role("button", name="Verify now").click()
    await _confirm(tab, "Verify")
    await expect(verdict).to_contain_text("Intact.", timeout=60_000)
    _, body = await _api(tab.stack, "GET", "/api/v1/admin/integrity")
    assert body["last_verification"]["intact"] is True
    main = await tab.page.locator("main").inner_text()
    assert "intact\ttrue" not in main.lower() and "[" not in main
    await tab.shot("integrity")


async def test_times_are_utc_by_default_with_a_labelled_switch_to_local(
    browser: Any, stack: Stack
) -> None:
    # A browser in New York: local time is not UTC there, so the two cannot be confused.
    context = {"viewport": {"width": 1280, "height": 800}, "timezone_id": "America/New_York"}
    async for tab in open_tab(browser, stack, **context):
        page = tab.page
        _, item = await _api(stack, "GET", f"/api/v1/admin/audit-logs/{stack.diff_event_id}")
        when = datetime.fromisoformat(item["ts"])
        await tab.sign_in(path=f"/console/audit-logs/{stack.diff_event_id}")
        shown = _dd(tab, "Time")
        utc = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        await expect(shown).to_have_text(f"{utc} UTC")
        await page.get_by_label("Times in").select_option("local")
        local = when.astimezone(ZoneInfo("America/New_York"))
        await expect(shown).to_have_text(f"{local.strftime('%Y-%m-%d %H:%M:%S')} UTC-05:00")
        await page.get_by_label("Times in").select_option("utc")

        # Inputs take ISO dates, in the zone their label names.
        await tab.open("/console/audit-logs")
        since = page.get_by_label("Since (UTC)")
        assert await since.get_attribute("type") == "text"
        await since.fill("2026-01-02 03:04")
        await page.get_by_role("button", name="Search").click()
        await page.wait_for_url(re.compile(r"since=2026-01-02T03%3A04%3A00Z$"))
        await expect(page.get_by_label("Since (UTC)")).to_have_value("2026-01-02 03:04:00")

        # A filter the API refuses shows the refusal alone.
        tab.allowed_errors.append("400")
        await page.get_by_label("Since (UTC)").fill("yesterday")
        await page.get_by_role("button", name="Search").click()
        await expect(page.get_by_role("alert")).to_contain_text("since")
        assert await page.get_by_text("No audit logs match").count() == 0
        assert await page.get_by_text("shown").count() == 0


async def test_the_statistics_axis_fits_labels_from_ten_thousand_up(tab: Tab) -> None:
    day = (datetime.now(UTC) - timedelta(days=3)).replace(hour=12, minute=0, second=0)
    assert tab.stack.settings.database_url
    conn = await asyncpg.connect(tab.stack.settings.database_url)
    try:
        await conn.execute(
            "INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation)"
            " SELECT gen_random_uuid(), $1, 'bulk.row', 'bulk', 'info', 'success',"
            """ '{"code": "audit.bulk.row", "params": {}}'::jsonb"""
            " FROM generate_series(1, 12000)",
            day,
        )
    finally:
        await conn.close()
    await tab.sign_in(path="/console/statistics")
    over = tab.page.locator(".chart .u-over").first
    await over.wait_for()
    axis = await over.evaluate("e => e.offsetLeft")
    label = await tab.page.evaluate(
        "() => { const c = document.createElement('canvas').getContext('2d');"
        ' c.font = \'12px system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",'
        ' Arial, "Noto Sans", sans-serif, "Apple Color Emoji", "Segoe UI Emoji",'
        ' "Segoe UI Symbol", "Noto Color Emoji"\';'
        " return c.measureText((12000).toLocaleString()).width; }"
    )
    assert axis >= label + 15, (axis, label)  # ticks (10 px) and gap (5 px) beside the text
    await tab.shot("statistics")


async def test_a_preset_finds_the_last_hours_events_and_the_total_is_counted(tab: Tab) -> None:
    stack = tab.stack
    page = tab.page
    now = datetime.now(UTC)
    for ago in (timedelta(minutes=1), timedelta(minutes=20), timedelta(hours=2)):
        await stack.capture(AuditEvent(action="preset.recent", ts=now - ago))
    await _stored(stack, "preset.recent", 3)
    await tab.sign_in(path="/console/audit-logs?action=preset.recent")
    status = page.get_by_role("status").filter(has_text="shown")
    await expect(status).to_have_text("3 shown of 3 matching.")
    await (
        page.get_by_role("group", name="Time presets")
        .get_by_role("button", name="Last hour")
        .click()
    )
    await page.wait_for_url(re.compile(r"action=preset.recent&since=\d{4}-\d\d-\d\dT[\d%A]+Z$"))
    await expect(status).to_have_text("2 shown of 2 matching.")
    await expect(rows(tab)).to_have_count(2)


async def test_payload_filters_find_the_one_row_through_the_api_and_the_console(
    tab: Tab,
) -> None:
    stack = tab.stack
    page = tab.page
    await stack.capture(
        AuditEvent(action="payload.probe", metadata={"plan": "pro", "geo": {"country": "FR"}})
    )
    await stack.capture(
        AuditEvent(action="payload.probe", metadata={"plan": "free", "geo": {"country": "DE"}})
    )
    await _stored(stack, "payload.probe", 2)
    base = "/api/v1/admin/audit-logs?action=payload.probe&count=true"
    status, body = await _api(stack, "GET", f"{base}&metadata=geo.country%3DFR")
    assert status == 200 and len(body["items"]) == 1
    assert body["items"][0]["metadata"]["plan"] == "pro"
    assert body["total"] == {"count": 1, "exact": True}
    status, body = await _api(
        stack,
        "POST",
        "/api/v1/admin/audit-logs/search",
        {"action": ["payload.probe"], "metadata": ["plan=free"], "count": True},
    )
    assert status == 200 and body["total"]["count"] == 1
    assert body["items"][0]["metadata"]["plan"] == "free"
    status, body = await _api(
        stack, "GET", "/api/v1/admin/audit-logs?change_field=visibility&count=true"
    )
    assert [i["id"] for i in body["items"]] == [stack.diff_event_id]
    status, body = await _api(stack, "GET", f"{base}&metadata=geo.country&metadata=plan%3Dpro")
    assert status == 200 and body["total"]["count"] == 1  # a key alone: the key is there
    status, doc = await _api(stack, "GET", "/api/v1/openapi.json")
    declared = {p["name"] for p in doc["paths"]["/api/v1/admin/audit-logs"]["get"]["parameters"]}
    assert {"metadata", "change_field", "count"} <= declared

    await tab.sign_in(path="/console/audit-logs?action=payload.probe")
    await expect(rows(tab)).to_have_count(2)
    await page.get_by_label("Metadata key=value").fill("geo.country=FR")
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_url(re.compile(r"metadata=geo.country%3DFR$"))
    await expect(rows(tab)).to_have_count(1)
    await expect(page.get_by_role("status").filter(has_text="shown")).to_have_text(
        "1 shown of 1 matching."
    )


# The screenshots docs/console.md shows of these views (one per width and scheme).
DOC_SHOTS = {
    "work-audit-logs",
    "dark-work-integrity",
    "phone-work-task",
    "dark-phone-work-subject",
}


async def _axe(page: Any) -> list[str]:
    await page.evaluate(axe_source())  # not a <script>: the page's CSP stays as it is
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']}: {v['nodes'][0]['target']}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
async def test_the_changed_views_are_axe_clean_light_and_dark_wide_and_narrow(
    browser: Any, stack: Stack, width: int, dark: bool
) -> None:
    task_id = await _failed_task(stack, '{"action": "Shown In Screenshots"}')
    context: dict[str, Any] = {"viewport": {"width": width, "height": 900}}
    if width < 600:
        context.update(is_mobile=True, has_touch=True)
    async for tab in open_tab(browser, stack, **context):
        page = tab.page
        tab.allowed_errors.append("404")  # a subject never asked for: the API's 404
        await page.emulate_media(color_scheme="dark" if dark else "light")
        await tab.sign_in(path="/console/audit-logs")
        findings: dict[str, list[str]] = {}
        name = f"{'dark-' if dark else ''}{'phone-' if width < 600 else ''}"
        for path, shot in (
            ("/console/audit-logs?action=preset.recent&action=payload.probe", "work-audit-logs"),
            ("/console/audit-logs?action=document.viewed", "work-fallback-sentence"),
            (f"/console/tasks/{task_id}", "work-task"),
            ("/console/tasks?status=failed", "work-tasks"),
            ("/console/integrity", "work-integrity"),
            ("/console/subjects/u-erase", "work-subject"),
            ("/console/statistics", "work-statistics"),
        ):
            await tab.open(path)
            await page.locator("main h1").wait_for()
            await page.wait_for_load_state("networkidle")
            found = await _axe(page)
            if found:
                findings[path] = found
            scroll = await page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= width, (path, scroll)
            if name + shot in DOC_SHOTS:
                await tab.shot(name + shot)
        assert not findings, findings


async def test_an_events_raw_json_is_the_api_item_and_copies(tab: Tab) -> None:
    page = tab.page
    await page.context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=tab.stack.url
    )
    await tab.sign_in(path=f"/console/audit-logs/{tab.stack.diff_event_id}")
    await page.get_by_text("Raw JSON", exact=True).click()
    raw = page.get_by_label("The event as JSON", exact=True)
    _, item = await _api(tab.stack, "GET", f"/api/v1/admin/audit-logs/{tab.stack.diff_event_id}")
    assert json.loads(await raw.inner_text()) == item
    await page.get_by_role("button", name="Copy JSON").click()
    await page.get_by_role("status").filter(has_text="Copied").wait_for()
    assert json.loads(await page.evaluate("navigator.clipboard.readText()")) == item


async def test_a_failed_task_that_can_never_succeed_is_discarded_and_audited(tab: Tab) -> None:
    stack = tab.stack
    page = tab.page
    task_id = await _failed_task(stack, '{"action": "Never Valid"}')
    await tab.sign_in(path=f"/console/tasks/{task_id}")
    await page.get_by_role("button", name="Discard this task").click()
    await _confirm(tab, "Cancel")
    status, _ = await _api(stack, "GET", f"/api/v1/admin/tasks/{task_id}")
    assert status == 200  # cancelled: nothing happened
    await page.get_by_role("button", name="Discard this task").click()
    await _confirm(tab, "Discard")
    await page.get_by_role("status").filter(has_text="was discarded").wait_for()
    status, _ = await _api(stack, "GET", f"/api/v1/admin/tasks/{task_id}")
    assert status == 404
    sql = "SELECT count(*) FROM audit_log WHERE action = 'task.discarded' AND entity_id = $1"
    assert await stack.stored(sql, task_id) == 1
    status, body = await _api(stack, "POST", f"/api/v1/admin/tasks/{task_id}/discard")
    assert status == 404
    # Only a failed task: a complete one is refused, and nothing is recorded for it.
    event_id = await stack.capture(AuditEvent(action="discard.refused"))
    await _stored(stack, "discard.refused")
    _, listed = await _api(stack, "GET", "/api/v1/admin/tasks?status=complete")
    done = listed["items"][0]["id"]
    status, body = await _api(stack, "POST", f"/api/v1/admin/tasks/{done}/discard")
    assert status == 409 and "only a failed task can be discarded" in body["error"]["message"]
    assert await stack.stored(sql, done) == 0
    assert event_id


async def test_a_bulk_discard_over_a_filter_counts_asks_and_takes_exactly_the_matching(
    tab: Tab,
) -> None:
    stack = tab.stack
    page = tab.page
    # Leave no other failed task of this error: retry (they fail again) would interfere, so
    # discard every earlier one first through the API.
    await _api(stack, "POST", "/api/v1/admin/tasks/discard-failed", {})
    invalid = [await _failed_task(stack, f'{{"action": "Bad {n}"}}') for n in range(2)]
    not_json = await _failed_task(stack, "plainly not json")
    _, one = await _api(stack, "GET", f"/api/v1/admin/tasks/{not_json}")
    _, other = await _api(stack, "GET", f"/api/v1/admin/tasks/{invalid[0]}")
    assert one["failure"]["error_name"] != other["failure"]["error_name"]
    await tab.sign_in(path="/console/tasks?status=failed")
    await page.get_by_text("Retry every failed task matching a filter").click()
    await page.get_by_label("Error name").fill(other["failure"]["error_name"])
    await page.get_by_role("button", name="Discard matching").click()
    dialog = page.locator("dialog[open]")
    await expect(dialog).to_contain_text("Discard the 2 failed task(s)")
    await _confirm(tab, "Discard them")
    await page.get_by_role("status").filter(has_text="2 failed task(s) discarded").wait_for()
    for task_id in invalid:
        status, _ = await _api(stack, "GET", f"/api/v1/admin/tasks/{task_id}")
        assert status == 404
    status, body = await _api(stack, "GET", f"/api/v1/admin/tasks/{not_json}")
    assert status == 200 and body["status"] == "failed"  # not matched: untouched
    sql = "SELECT count(*) FROM audit_log WHERE action = 'task.discarded_bulk'"
    assert await stack.stored(sql) == 2  # the API call above and the console's
    await expect(page.locator(f"tr[data-id='{invalid[0]}']")).to_have_count(0, timeout=20_000)


async def test_the_actor_field_suggests_the_actors_seen(tab: Tab) -> None:
    _, stats = await _api(tab.stack, "GET", "/api/v1/admin/audit-logs/statistics")
    await tab.sign_in(path="/console/audit-logs")
    field = tab.page.get_by_label("Actor id")
    assert await field.get_attribute("list") == "actor-suggestions"
    options = tab.page.locator("#actor-suggestions option")
    await expect(options).to_have_count(len(stats["top_actors"]))
    shown = await options.evaluate_all("os => os.map(o => o.value)")
    assert shown == [a["actor_id"] for a in stats["top_actors"]]


@pytest.mark.parametrize("width", [1280, 390])
async def test_an_entitys_history_shows_each_change_inline(
    browser: Any, stack: Stack, width: int
) -> None:
    context: dict[str, Any] = {"viewport": {"width": width, "height": 900}}
    async for tab in open_tab(browser, stack, **context):
        await tab.sign_in(path="/console/entities/project/p-console")
        changed = tab.page.locator(f"tr[data-id='{stack.diff_event_id}'] .inline-changes li")
        await expect(changed).to_have_count(2)
        assert await changed.nth(0).inner_text() == "visibility: private → public"
        assert await changed.nth(1).locator("ins").inner_text() == "90"
        await tab.page.wait_for_load_state("networkidle")
        assert await _axe(tab.page) == []
        scroll = await tab.page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= width
