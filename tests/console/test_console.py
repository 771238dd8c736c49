"""The admin console in a real Chromium against real servers: every view's main flow."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

from service.events import Actor, AuditEvent
from tests.support.admin_api import enqueue
from tests.support.console import XSS_IMG, XSS_SCRIPT, Stack, Tab, axe_source
from tests.support.polling import wait_for

LIVE_WITHIN_S = 15.0  # generous on a loaded machine; the tail itself answers in ~2.5 s today


def rows(tab: Tab) -> Any:
    return tab.page.locator("main tbody tr")


async def settle(tab: Tab, path: str) -> None:
    """Wait until the view has loaded: its requests done (the live tail's stream never is)."""
    await tab.page.locator("main h1").wait_for()
    if path.startswith("/console/live"):
        await tab.page.locator(".live-status").filter(has_text="Live").wait_for()
    else:
        await tab.page.wait_for_load_state("networkidle")


async def test_sign_in_keeps_the_token_out_of_the_url_and_sign_out_forgets_it(tab: Tab) -> None:
    page = tab.page
    await tab.open("/")
    await page.wait_for_url("**/console/audit-logs")
    field = page.get_by_label("API token")
    assert await field.get_attribute("type") == "password"
    tab.allowed_errors.append("401")  # the wrong token's answer, logged by the browser
    await field.fill("aq_not-a-real-token")
    await page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    await alert.wait_for()
    assert "unknown or revoked" in await alert.inner_text()
    await tab.sign_in(path="")
    await page.wait_for_url("**/console/audit-logs")
    assert tab.stack.admin_token not in page.url
    assert await page.evaluate("sessionStorage.length") == 2
    assert "console-admin (admin)" in await page.locator("header").inner_text()
    await tab.shot("audit-logs")
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_label("API token").wait_for()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_a_shared_filtered_link_opens_that_search(tab: Tab) -> None:
    page = tab.page
    await tab.sign_in(path="/console/audit-logs?actor_id=u-ada&severity=notice")
    await rows(tab).first.wait_for()
    assert await rows(tab).count() == 1
    assert "Ada Lovelace created project Apollo" in await rows(tab).first.inner_text()
    assert await page.get_by_label("Actor id").input_value() == "u-ada"
    assert await page.get_by_label("Severity").input_value() == "notice"
    await page.get_by_label("Severity").select_option("")
    await page.get_by_label("Full text").fill("Apollo")
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_url(re.compile(r"actor_id=u-ada&q=Apollo$"))
    await expect(rows(tab)).to_have_count(2)
    # Paging: "More" walks the keyset cursor to the end, each row once.
    await tab.open("/console/audit-logs?action=auth.login&action=auth.login_failed")
    await rows(tab).first.wait_for()
    more = page.get_by_role("button", name="More")
    while await more.count():
        shown = await rows(tab).count()
        await more.click()
        await expect(rows(tab)).not_to_have_count(shown)
    ids = await rows(tab).evaluate_all("rs => rs.map(r => r.dataset.id)")
    expected = await tab.stack.stored(
        "SELECT count(*) FROM audit_log WHERE action IN ('auth.login', 'auth.login_failed')"
    )
    assert len(ids) == len(set(ids)) == expected > 50


async def test_detail_shows_the_diff_and_links_to_the_entity_history(tab: Tab) -> None:
    page = tab.page
    await tab.sign_in(path=f"/console/audit-logs/{tab.stack.diff_event_id}")
    changes = page.locator("section[aria-labelledby=h-changes] tbody tr")
    await changes.first.wait_for()
    assert await changes.count() == 2
    first = changes.nth(0)
    assert await first.locator("del").inner_text() == "private"
    assert await first.locator("ins").inner_text() == "public"
    assert await changes.nth(1).locator("ins").inner_text() == "90"
    main = await page.locator("main").inner_text()
    assert "Ada Lovelace changed the settings of project Apollo" in main
    assert "req-console-1" in main and "203.0.113.9" in main and "Received at" in main
    await tab.shot("audit-log-detail")
    await page.get_by_role("link", name="History of this entity").click()
    await page.wait_for_url("**/console/entities/project/p-console")
    await rows(tab).first.wait_for()
    texts = await rows(tab).all_inner_texts()
    assert len(texts) == 2 and "created" in texts[0] and "changed the settings" in texts[1]
    await tab.shot("entity-history")
    await tab.open("/console/actors/u-ada")
    await rows(tab).first.wait_for()
    assert await rows(tab).count() == 2


async def test_export_downloads_the_current_filters(tab: Tab) -> None:
    page = tab.page
    await tab.sign_in(path="/console/audit-logs?entity_type=project&entity_id=p-console")
    await rows(tab).first.wait_for()
    async with page.expect_download() as waiting:
        await page.get_by_role("button", name="Export CSV").click()
    download = await waiting.value
    assert download.suggested_filename.endswith(".csv")
    lines = (await download.path()).read_text().strip().splitlines()
    assert len(lines) == 3 and "p-console" in lines[1]
    async with page.expect_download() as waiting:
        await page.get_by_role("button", name="Export JSONL").click()
    exported = [
        json.loads(line) for line in (await (await waiting.value).path()).read_text().splitlines()
    ]
    assert {e["action"] for e in exported} == {"project.created", "project.settings.updated"}
    await page.get_by_role("status").filter(has_text="Exported").wait_for()


async def test_a_live_event_appears_and_pause_holds_it_back(tab: Tab) -> None:
    page = tab.page
    await tab.sign_in(path="/console/live?action_prefix=live.")
    status = page.locator(".live-status")
    await status.filter(has_text="Live").wait_for()
    await tab.stack.capture(AuditEvent(action="live.first", actor=Actor(id="u-live", type="user")))
    await page.get_by_text("live.first", exact=True).wait_for(timeout=LIVE_WITHIN_S * 1000)
    await tab.stack.capture(AuditEvent(action="other.event"))  # not matching the filter

    await page.get_by_role("button", name="Pause").click()
    await status.filter(has_text="Paused.").wait_for()
    await tab.stack.capture(AuditEvent(action="live.second"))

    async def stored() -> bool:
        return (
            await tab.stack.stored("SELECT count(*) FROM audit_log WHERE action = 'live.second'")
            == 1
        )

    await wait_for(stored)
    await page.wait_for_timeout(3000)  # longer than the tail's own delay: it would be here
    assert await page.get_by_text("live.second", exact=True).count() == 0
    await page.get_by_role("button", name="Resume").click()
    await page.get_by_text("live.second", exact=True).wait_for(timeout=LIVE_WITHIN_S * 1000)
    assert await page.get_by_text("other.event", exact=True).count() == 0
    # A hidden tab stops streaming.
    await page.evaluate(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    await status.filter(has_text="hidden").wait_for()
    await page.evaluate(
        "Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    await status.filter(has_text="Live").wait_for()
    await tab.shot("live")


async def _failed_task(stack: Stack) -> str:
    import redis.asyncio as aioredis

    assert stack.settings.redis_url
    redis = aioredis.Redis.from_url(stack.settings.redis_url)
    try:
        task_id = await enqueue(redis, stack.settings.queue, "this is not json")
    finally:
        await redis.aclose()

    async def failed() -> bool:
        headers = {"Authorization": f"Bearer {stack.admin_token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{stack.url}/api/v1/admin/tasks/{task_id}", headers=headers) as response,
        ):
            return response.status == 200 and (await response.json())["status"] == "failed"

    await wait_for(failed)
    return task_id


async def _confirm(tab: Tab, label: str) -> None:
    dialog = tab.page.locator("dialog[open]")
    await dialog.wait_for()
    await dialog.get_by_role("button", name=label).click()
    await dialog.wait_for(state="detached")


async def test_retry_of_a_failed_task_is_audited(tab: Tab) -> None:
    page = tab.page
    task_id = await _failed_task(tab.stack)
    before = await tab.stack.stored("SELECT count(*) FROM audit_log WHERE action = 'task.retried'")
    await tab.sign_in(path="/console/tasks?status=failed")
    tabs = page.get_by_role("navigation", name="Task status")
    await tabs.get_by_role("link", name=re.compile(r"Failed \([1-9]")).wait_for()
    await page.locator(f"tr[data-id='{task_id}'] a").click()
    await page.wait_for_url(f"**/console/tasks/{task_id}")
    await page.get_by_text("invalid", exact=True).wait_for()
    assert "this is not json" in await page.get_by_label("Payload", exact=True).inner_text()
    await tab.shot("task-detail")
    # Cancelling changes nothing.
    await page.get_by_role("button", name="Retry this task").click()
    await _confirm(tab, "Cancel")
    await page.get_by_role("button", name="Retry this task").click()
    await _confirm(tab, "Retry")
    await page.get_by_role("status").filter(has_text="queued again").wait_for()

    async def audited() -> bool:
        sql = "SELECT count(*) FROM audit_log WHERE action = 'task.retried' AND entity_id = $1"
        return await tab.stack.stored(sql, task_id) == 1

    await wait_for(audited)
    assert before == 0
    await tab.open("/console/audit-logs?action=task.retried")
    await page.get_by_text("console-admin retried task").wait_for()


async def test_retry_all_failed_and_cleanup_show_the_policy_and_ask_first(tab: Tab) -> None:
    page = tab.page
    await _failed_task(tab.stack)
    await tab.sign_in(path="/console/tasks?status=failed")
    await page.get_by_text("Retry every failed task matching a filter").click()
    await page.get_by_label("Classification").select_option("invalid")
    await page.get_by_role("button", name="Retry matching").click()
    await _confirm(tab, "Retry them")
    await page.get_by_role("status").filter(has_text=re.compile(r"[1-9]\d* failed task")).wait_for()

    await page.get_by_text("Clean up old tasks").click()
    assert "365 days" in await page.get_by_text("Policy defaults").inner_text()
    assert await page.get_by_label("Failed older than (days)").input_value() == "90"
    assert await page.get_by_label("Keep recent failed").input_value() == "100"
    await tab.shot("tasks")
    await page.get_by_role("button", name="Clean up").click()
    await _confirm(tab, "Delete")
    await page.get_by_role("status").filter(has_text="Deleted 0 complete and 0 failed").wait_for()

    async def audited() -> bool:
        sql = "SELECT count(*) FROM audit_log WHERE action IN ('task.cleanup', 'task.retried_bulk')"
        return await tab.stack.stored(sql) == 2

    await wait_for(audited)


async def test_tokens_are_created_shown_once_and_revoked(tab: Tab) -> None:
    page = tab.page
    await tab.sign_in(path="/console/tokens")
    await page.get_by_label("Name").fill("ci-console")
    await page.get_by_label("Role").select_option("reader")
    await page.get_by_role("button", name="Create token").click()
    await _confirm(tab, "Create")
    secret = page.get_by_label("New token")
    await secret.wait_for()
    token = await secret.input_value()
    assert token.startswith("aq_")
    await page.get_by_role("button", name="Copy").click()
    await page.get_by_role("status").filter(has_text="Cop").wait_for()
    await page.locator("tbody tr", has_text="ci-console").wait_for()
    await tab.shot("tokens")
    whoami = f"{tab.stack.url}/api/v1/admin/whoami"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get(whoami) as response:
            assert (await response.json()) == {"name": "ci-console", "role": "reader"}
        await page.get_by_role("button", name="Done").click()
        await page.get_by_role("button", name="Revoke ci-console").click()
        await _confirm(tab, "Revoke")
        await page.get_by_role("status").filter(has_text="Token ci-console revoked").wait_for()
        async with http.get(whoami) as response:
            assert response.status == 401
    # The list is fetched again after the revoke: wait for the row's control to go.
    await page.get_by_role("button", name="Revoke ci-console").wait_for(state="detached")

    async def audited() -> bool:
        sql = "SELECT count(*) FROM audit_log WHERE action LIKE 'token.%' AND entity_id = $1"
        return await tab.stack.stored(sql, "ci-console") == 2

    await wait_for(audited)  # token.created and token.revoked, by console-admin


MUTATING = re.compile(r"retry|clean|create|revoke|verify|anonymise|delete", re.IGNORECASE)


async def test_a_reader_sees_no_control_that_changes_anything(tab: Tab) -> None:
    page = tab.page
    task_id = await _failed_task(tab.stack)
    await tab.sign_in(tab.stack.reader_token, path="/console/tasks?status=failed")
    for path in (
        "/console/tasks?status=failed",
        f"/console/tasks/{task_id}",
        "/console/tasks",
        "/console/tokens",
        "/console/integrity",
        "/console/subjects/u-ada",
    ):
        if path.startswith("/console/subjects/"):
            # Never asked for this subject: the API's 404, which the browser logs as it loads.
            tab.allowed_errors.append("404")
        await tab.open(path)
        await settle(tab, path)
        names = await page.locator("main button, main summary").all_inner_texts()
        assert not [n for n in names if MUTATING.search(n)], (path, names)
    assert "console-reader (reader)" in await page.locator("header").inner_text()


async def test_stored_markup_stays_inert_text(tab: Tab) -> None:
    page = tab.page
    await tab.sign_in(path="/console/audit-logs?action=xss.attempt")
    await rows(tab).first.wait_for()
    assert XSS_IMG in await rows(tab).first.inner_text()
    await tab.open(f"/console/audit-logs/{tab.stack.xss_event_id}")
    await page.locator("del.old").wait_for()
    main = await page.locator("main").inner_text()
    assert XSS_SCRIPT in main and XSS_IMG in main
    assert await page.locator("del.old").inner_text() == XSS_SCRIPT
    assert await page.locator("main img, main script").count() == 0
    await page.wait_for_timeout(200)
    assert await page.evaluate("window.__xss") is None


async def test_other_views_render(tab: Tab) -> None:
    page = tab.page
    await tab.sign_in(path="/console/statistics")
    await page.locator(".chart canvas").first.wait_for()
    assert "Events in the window" in await page.locator("main").inner_text()
    await page.get_by_role("region", name="Top actions").get_by_role("link").first.wait_for()
    await tab.shot("statistics")
    await tab.open("/console/queue")
    await page.get_by_role("heading", name="Workers").wait_for()
    await page.locator("main tbody tr").first.wait_for()  # the test's worker, with its breaker
    assert "closed" in await page.locator("main tbody").inner_text()
    await tab.shot("queue")
    for path, name in (("/console/integrity", "integrity"), ("/console/subjects", "subjects")):
        await tab.open(path)
        await settle(tab, path)
        await tab.shot(name)
    await tab.open("/console/no-such-view")
    await page.get_by_role("heading", name="Not found").wait_for()


async def test_the_phone_width_has_no_sideways_scroll(phone: Tab) -> None:
    page = phone.page
    await phone.sign_in(path="/console/audit-logs")
    for path in (
        "/console/audit-logs",
        f"/console/audit-logs/{phone.stack.diff_event_id}",
        "/console/tasks",
        "/console/queue",
        "/console/statistics",
        "/console/tokens",
    ):
        await phone.open(path)
        await settle(phone, path)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
        assert await page.get_by_role("link", name="Tasks").is_visible()
    await phone.open("/console/audit-logs")
    await rows(phone).first.wait_for()
    await phone.shot("phone-audit-logs")


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
async def test_no_serious_accessibility_finding(tab: Tab, dark: bool) -> None:
    page = tab.page
    await page.emulate_media(color_scheme="dark" if dark else "light")
    await tab.sign_in(path="/console/audit-logs")
    source = axe_source()
    findings: dict[str, list[str]] = {}
    paths = [
        "/console/audit-logs",
        f"/console/audit-logs/{tab.stack.diff_event_id}",
        "/console/live",
        "/console/statistics",
        "/console/tasks",
        "/console/queue",
        "/console/integrity",
        "/console/subjects",
        "/console/tokens",
    ]
    # Dark mode changes colours only: its contrast is checked on the densest views.
    for path in paths[:4] if dark else paths:
        await tab.open(path)
        await settle(tab, path)
        await page.evaluate(source)  # not a <script>: the page's CSP stays as it is
        result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        serious = [
            f"{v['id']}: {v['nodes'][0]['target']}"
            for v in result["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        if serious:
            findings[path] = serious
    if dark:
        await tab.open("/console/audit-logs")
        await rows(tab).first.wait_for()
        await tab.shot("dark-audit-logs")
    assert not findings, findings


async def test_keyboard_reaches_the_views(tab: Tab) -> None:
    page = tab.page
    await tab.open("/console/")
    await page.get_by_label("API token").wait_for()
    await page.keyboard.press("Tab")
    await page.keyboard.type(tab.stack.admin_token)
    await page.keyboard.press("Enter")
    await page.get_by_role("button", name="Sign out").wait_for()
    for _ in range(12):  # skip link, brand, then the views in order
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == "Queue":
            break
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/console/queue")


async def test_an_event_offers_its_receipt_and_integrity_shows_the_log(tab: Tab) -> None:
    from service.integrity.keys import load_public_key
    from tests.integrity import independent_verifier

    page = tab.page

    async def sealed() -> bool:
        return bool(await tab.stack.stored("SELECT count(*) FROM tlog_checkpoint"))

    await wait_for(sealed, within_s=60)
    await tab.sign_in(path=f"/console/audit-logs/{tab.stack.diff_event_id}")
    async with page.expect_download() as waiting:
        await page.get_by_role("button", name="Download receipt").click()
    download = await waiting.value
    assert download.suggested_filename == f"receipt-{tab.stack.diff_event_id}.json"
    receipt = json.loads((await download.path()).read_text())
    assert receipt["item"]["id"] == tab.stack.diff_event_id
    key = load_public_key(tab.stack.settings.seal_key_path)
    assert independent_verifier.check(receipt, key)
    await tab.open("/console/integrity")
    checkpoint = page.get_by_test_id("checkpoint")
    await checkpoint.wait_for()
    assert (await checkpoint.inner_text()).startswith("auditq/")
    await page.get_by_test_id("sealing-running").wait_for()
    assert "No witness has been asked yet" in await page.locator("main").inner_text()
    await tab.shot("integrity-log")
