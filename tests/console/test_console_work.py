"""The console for an admin's real work: true sentences, live state, one time convention."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from playwright.async_api import expect

from service.events import Actor, AuditEvent, Entity
from tests.admin_api import enqueue
from tests.conftest import wait_for
from tests.console.conftest import Stack, Tab


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
    await _stored(stack, "document.viewed")
    await tab.sign_in(path="/console/audit-logs?actor_id=u-16")
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
    status, body = await _api(tab.stack, "GET", f"/api/v1/admin/tasks/{task_id}")
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
    await tab.page.get_by_role("button", name="Anonymise").click()
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
