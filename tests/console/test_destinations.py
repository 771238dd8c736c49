"""The console's destinations view in a real Chromium: health and lag, the test button with
the receiver's reply, pause and resume; the queue view warns when a destination fails; a
reader sees no control."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from service.events import AuditEvent
from tests.console.test_console import _confirm
from tests.destinations.receivers import Receiver
from tests.support.console import Stack, Tab, axe_source

SECRET = "console-hook-secret"
CONTROLS = re.compile(r"test|pause|resume|remove|add", re.IGNORECASE)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(secret=SECRET) as running:
        yield running


async def add_destination(stack: Stack, name: str, url: str) -> None:
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    body = {"name": name, "type": "webhook", "url": url, "secret": SECRET, "allow_private": True}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{stack.url}/api/v1/admin/destinations", json=body) as response:
            assert response.status == 201, await response.text()


async def test_health_test_button_pause_and_the_queue_warning(tab: Tab, receiver: Receiver) -> None:
    page = tab.page
    await add_destination(tab.stack, "console-siem", receiver.url("/hook"))
    await tab.sign_in(path="/console/destinations")
    row = page.locator("main tbody tr", has_text="console-siem")
    await row.wait_for()
    assert "active" in await row.inner_text()
    await page.get_by_role("button", name="Test console-siem").click()
    await _confirm(tab, "Send")
    reply = page.get_by_role("region", name=re.compile("Test of console-siem"))
    await reply.wait_for()
    assert "delivered" in await reply.inner_text() and '"received": 1' in await reply.inner_text()
    assert receiver.bad_signatures == 0
    assert "destination.test" in [item["action"] for item in receiver.items]
    await tab.shot("destinations")

    await page.get_by_role("button", name="Pause console-siem").click()
    await _confirm(tab, "Pause")
    await row.filter(has_text="paused").wait_for()
    await page.get_by_role("button", name="Resume console-siem").click()
    await _confirm(tab, "Resume")
    await page.get_by_role("button", name="Pause console-siem").wait_for()

    receiver.down = True  # the receiver goes away: the destination fails, the queue says so
    await tab.stack.capture(AuditEvent(action="doc.updated"))
    await row.filter(has_text="failing").wait_for(timeout=60_000)
    assert "503" in await row.inner_text()
    await tab.open("/console/queue")
    await (
        page.get_by_role("alert")
        .filter(has_text="Destination console-siem is failing")
        .wait_for(timeout=30_000)
    )
    receiver.down = False
    await tab.open("/console/destinations")
    await row.filter(has_text="active").wait_for(timeout=90_000)


async def test_a_reader_sees_health_but_no_control(tab: Tab, receiver: Receiver) -> None:
    page = tab.page
    await add_destination(tab.stack, "reader-view", receiver.url("/hook"))
    await tab.sign_in(tab.stack.reader_token, path="/console/destinations")
    row = page.locator("main tbody tr", has_text="reader-view")
    await row.wait_for()
    await page.wait_for_load_state("networkidle")
    names = await page.locator("main button, main summary").all_inner_texts()
    assert not [n for n in names if CONTROLS.search(n)], names
    assert await page.locator("main form").count() == 0


async def test_no_serious_accessibility_finding_in_the_destinations_view(
    tab: Tab, receiver: Receiver
) -> None:
    page = tab.page
    await add_destination(tab.stack, "a11y-view", receiver.url("/hook"))
    await tab.sign_in(path="/console/destinations")
    await page.locator("main tbody tr", has_text="a11y-view").wait_for()
    await page.locator("main details summary").click()  # the add form open, too
    await page.evaluate(axe_source())  # not a <script>: the page's CSP stays as it is
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    serious = [
        f"{v['id']}: {v['nodes'][0]['target']}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not serious, serious
