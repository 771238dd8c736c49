"""The console's searches and lists, in Chromium: entity and action autocomplete, an actor's
name, statistics by hour with named top actors, the list of erasures and its empty page.

The module's stack is its own (a fresh store): the erasures list is empty until a test here
erases someone, so the empty page is tested first."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.async_api import expect

from service.events import Actor, AuditEvent, Entity
from tests.console.test_console_work import _api, _axe, _confirm, _stored, rows
from tests.support.console import Stack, Tab, open_tab
from tests.support.polling import wait_for


async def _options(tab: Tab, datalist: str) -> list[str]:
    found: list[str] = await tab.page.locator(f"#{datalist} option").evaluate_all(
        "os => os.map(o => o.value)"
    )
    return found


async def test_the_empty_erasures_page_explains_erasure_and_how_to_start(tab: Tab) -> None:
    await tab.sign_in(path="/console/subjects")
    section = tab.page.get_by_role("region", name="Erasures")
    empty = section.get_by_role("status")
    await expect(empty).to_contain_text("No subject has been anonymised yet")
    await expect(empty).to_contain_text("replaces its id with a pseudonym in every row")
    await expect(empty).to_contain_text("From a shell: auditq anonymise SUBJECT_ID.")
    await expect(empty).to_contain_text("send it in actor.id, or")
    assert not await _axe(tab.page)
    await tab.shot("search-erasures-empty")


async def test_a_reader_sees_no_erasure_list(tab: Tab) -> None:
    await tab.sign_in(token=tab.stack.reader_token, path="/console/subjects")
    section = tab.page.get_by_role("region", name="Erasures")
    await expect(section).to_contain_text("shown to admins only")
    await expect(section.locator("table")).to_have_count(0)


async def test_entity_and_action_fields_offer_the_stored_values(tab: Tab) -> None:
    stack = tab.stack
    for kind, entity, action in (
        ("invoice", "inv-100", "invoice.paid"),
        ("invoice", "inv-101", "invoice.sent"),
        ("invoice", "inv-200", "invoice.sent"),
        ("workspace", "ws-1", "workspace.renamed"),
    ):
        await stack.capture(
            AuditEvent(
                action=action,
                actor=Actor(id="u-ac", type="user"),
                entity=Entity(type=kind, id=entity),
            )
        )
    await _stored(stack, "workspace.renamed")
    await tab.sign_in(path="/console/audit-logs")
    page = tab.page
    await page.get_by_label("Entity type").fill("inv")
    await expect(page.locator("#entity-type-suggestions option")).to_have_count(1)
    assert await _options(tab, "entity-type-suggestions") == ["invoice"]
    await page.get_by_label("Entity type").fill("invoice")
    await page.get_by_label("Entity id").fill("inv-1")
    await expect(page.locator("#entity-id-suggestions option")).to_have_count(2)
    assert await _options(tab, "entity-id-suggestions") == ["inv-100", "inv-101"]
    await page.get_by_label("Actions").fill("invoice.")
    await expect(page.locator("#action-suggestions option[value='invoice.sent']")).to_have_count(1)
    offered = await _options(tab, "action-suggestions")
    assert {"invoice.paid", "invoice.sent"} <= set(offered)
    assert "workspace.renamed" not in offered[:2]  # the stored values of the prefix come first
    # Chosen, they search: the one invoice with that id.
    await page.get_by_label("Actions").fill("invoice.sent")
    await page.get_by_label("Entity id").fill("inv-101")
    await page.get_by_role("button", name="Search").click()
    await expect(rows(tab)).to_have_count(1)
    await expect(rows(tab).first).to_contain_text("inv-101")


async def test_an_actors_name_finds_that_actors_rows(tab: Tab) -> None:
    stack = tab.stack
    for actor, name, n in (("u-quilla", "Quilla Brant", 2), ("u-quill", "Quill Barrow", 1)):
        for _ in range(n):
            await stack.capture(
                AuditEvent(action="doc.named", actor=Actor(id=actor, type="user", name=name))
            )
    await _stored(stack, "doc.named", 3)
    await tab.sign_in(path="/console/audit-logs")
    page = tab.page
    await page.get_by_label("Actor name starts with").fill("QUILLA")
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_url("**actor_name=QUILLA**")
    await expect(rows(tab)).to_have_count(2)
    for n in range(2):
        await expect(rows(tab).nth(n)).to_contain_text("Quilla Brant")
    await expect(page.get_by_role("status").first).to_contain_text("2 shown of 2 matching")


async def test_statistics_by_hour_show_hourly_bars_and_top_actors_by_name(tab: Tab) -> None:
    stack = tab.stack
    # Its own tenant: the suite's other tests store events of busier actors in this stack, so
    # a window of every tenant could rank this actor out of the top ten.
    tenant = f"t-hour-{uuid.uuid4().hex[:8]}"
    await stack.capture(
        AuditEvent(
            action="hour.probe",
            tenant=tenant,
            actor=Actor(id="u-hour", type="user", name="Hour Person"),
        )
    )
    await _stored(stack, "hour.probe")
    await tab.sign_in(path="/console/statistics")
    page = tab.page
    await page.get_by_label("Count per").select_option("hour")
    await page.get_by_role("button", name="Show").click()
    await page.wait_for_url("**bucket=hour**")
    await expect(page.get_by_role("heading", name="Events per hour")).to_be_visible()
    await expect(page.get_by_role("img", name="Events per hour")).to_be_visible()
    # A fixed window, so the page and the API count the same hours.
    # (the next whole second: the probe stored within this one must fall before `until`)
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    window = (
        f"since={(now - timedelta(hours=6)).isoformat()}&until={now.isoformat()}".replace(
            "+00:00", "Z"
        )
        + f"&tenant={tenant}"
    )
    await tab.open(f"/console/statistics?bucket=hour&{window}")
    await expect(page.get_by_role("heading", name="Events per hour")).to_be_visible()
    _, stats = await _api(stack, "GET", f"/api/v1/admin/audit-logs/statistics?bucket=hour&{window}")
    total = sum(h["count"] for h in stats["per_hour"])
    card = page.locator(".card", has_text="Events in the window").locator(".value")
    await expect(card).to_have_text(f"{total:,}")
    # The chart's counts, as a table: one row per hour of the last 24, an hour apart, in UTC.
    await page.get_by_text("The counts per hour as a table").click()
    table = page.locator("details.counts tbody tr")
    await expect(table).to_have_count(len(stats["per_hour"]))
    first = await table.first.locator("time").get_attribute("datetime")
    second = await table.nth(1).locator("time").get_attribute("datetime")
    assert first and second
    step = datetime.fromisoformat(second) - datetime.fromisoformat(first)
    assert step == timedelta(hours=1)
    await expect(table.first.locator("td").first).to_contain_text(":00:00 UTC")
    shown = await table.locator("td.num").all_inner_texts()
    assert [int(n.replace(",", "")) for n in shown] == [h["count"] for h in stats["per_hour"]]
    top = page.get_by_role("region", name="Top actors")
    named = top.locator("li", has_text="Hour Person")
    await expect(named.locator(".sub")).to_have_text("u-hour")  # the id under its name
    await tab.shot("statistics-hourly")


async def test_the_erasures_list_shows_an_erasure_once_it_is_done(tab: Tab) -> None:
    stack = tab.stack
    await stack.capture(
        AuditEvent(action="doc.erasable", actor=Actor(id="u-gone", type="user", name="Gone"))
    )
    await _stored(stack, "doc.erasable")
    tab.allowed_errors.append("404")  # never asked yet: the API's 404, logged by the browser
    await tab.sign_in(path="/console/subjects/u-gone")
    await tab.page.get_by_role("button", name="Anonymise").click()
    await _confirm(tab, "Anonymise")
    section = tab.page.get_by_role("region", name="Erasures")
    row = section.locator("tbody tr")
    await expect(row).to_have_count(1, timeout=30_000)
    await expect(row.locator("td").nth(1)).to_have_text("done", timeout=30_000)

    async def listed() -> bool:
        _, body = await _api(stack, "GET", "/api/v1/admin/subjects")
        return bool(body["items"] and body["items"][0]["state"] == "done")

    await wait_for(listed)
    _, body = await _api(stack, "GET", "/api/v1/admin/subjects")
    (erasure,) = body["items"]
    await expect(row).to_have_attribute("data-pseudonym", erasure["pseudonym"])
    await expect(row.locator("td").nth(2)).to_have_text(str(erasure["rows"]))
    await expect(row.locator("td").nth(0)).to_have_text(erasure["pseudonym"])
    assert "u-gone" not in await section.inner_text()  # by pseudonym only


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
async def test_the_search_views_are_axe_clean_light_and_dark_wide_and_narrow(
    browser: Any, stack: Stack, width: int, dark: bool
) -> None:
    context: dict[str, Any] = {"viewport": {"width": width, "height": 900}}
    if width < 600:
        context.update(is_mobile=True, has_touch=True)
    since = (datetime.now(UTC) - timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ")
    async for tab in open_tab(browser, stack, **context):
        page = tab.page
        await page.emulate_media(color_scheme="dark" if dark else "light")
        await tab.sign_in(path="/console/audit-logs")
        findings: dict[str, list[str]] = {}
        name = f"{'dark-' if dark else ''}{'phone-' if width < 600 else ''}"
        for path, shot in (
            ("/console/audit-logs?actor_name=quill", "search-audit-logs"),
            (f"/console/statistics?bucket=hour&since={since}", "search-statistics-hourly"),
            ("/console/subjects", "search-erasures"),
        ):
            await tab.open(path)
            await page.locator("main h1").wait_for()
            await page.wait_for_load_state("networkidle")
            if width >= 600 and "audit-logs" in path:  # the filter form open, suggestions shown
                await page.get_by_label("Entity type").fill("in")
            found = await _axe(page)
            if found:
                findings[path] = found
            scroll = await page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= width, (path, scroll)
            await tab.shot(name + shot)
        assert not findings, findings
