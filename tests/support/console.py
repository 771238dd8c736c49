"""The console's browser tests: the running app they drive, a tab, what they look for."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from service.events import AuditEvent
from service.producer.client import AuditClient
from service.settings import Settings

AXE = Path(__file__).parents[1] / "console" / "axe.min.js"
# AUDITQ_CONSOLE_SCREENSHOTS=docs/console: the tests also save a screenshot of each view.
SCREENSHOTS = os.environ.get("AUDITQ_CONSOLE_SCREENSHOTS")
if SCREENSHOTS:
    Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
XSS_SCRIPT = "<script>window.__xss = 'script'</script>"
XSS_IMG = "<img src=x onerror=\"window.__xss = 'img'\">"


@dataclasses.dataclass
class Stack:
    """The running app and what the tests seeded into it."""

    url: str
    settings: Settings
    admin_token: str
    reader_token: str
    diff_event_id: str
    xss_event_id: str
    entity: tuple[str, str]

    async def capture(self, event: AuditEvent) -> str:
        async with AuditClient.from_settings(self.settings) as client:
            event_id = await client.capture(event)
        assert event_id is not None
        return event_id

    async def stored(self, sql: str, *args: Any) -> int:
        assert self.settings.database_url
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            n: int = await conn.fetchval(sql, *args)
            return n
        finally:
            await conn.close()


@dataclasses.dataclass
class Tab:
    """A browser tab of its own context, and what it did that a test must not see."""

    page: Any
    stack: Stack
    console_errors: list[str] = dataclasses.field(default_factory=list)
    foreign_requests: list[str] = dataclasses.field(default_factory=list)
    allowed_errors: list[str] = dataclasses.field(default_factory=list)

    async def open(self, path: str) -> None:
        await self.page.goto(self.stack.url + path)

    async def sign_in(self, token: str | None = None, path: str = "/console/") -> None:
        if path:
            await self.open(path)
        await self.page.get_by_label("API token").fill(token or self.stack.admin_token)
        await self.page.get_by_role("button", name="Sign in").click()
        await self.page.get_by_role("button", name="Sign out").wait_for()

    async def shot(self, name: str, *, settle_ms: int = 300) -> None:
        """Save a screenshot when AUDITQ_CONSOLE_SCREENSHOTS names a directory."""
        if SCREENSHOTS:
            await self.page.wait_for_timeout(settle_ms)  # charts settle after their first frame
            await self.page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))


def watch(tab: Tab, origin: str) -> None:
    """Record the tab's console errors and every request that leaves `origin`."""

    def on_console(message: Any) -> None:
        if message.type == "error":
            tab.console_errors.append(message.text)

    def on_request(request: Any) -> None:
        parts = urlsplit(request.url)
        if parts.scheme not in ("blob", "data") and f"{parts.scheme}://{parts.netloc}" != origin:
            tab.foreign_requests.append(request.url)

    tab.page.on("console", on_console)
    tab.page.on("pageerror", lambda error: tab.console_errors.append(f"page error: {error}"))
    tab.page.on("request", on_request)


async def open_tab(browser: Any, stack: Stack, **context: Any) -> AsyncIterator[Tab]:
    ctx = await browser.new_context(accept_downloads=True, **context)
    tab = Tab(page=await ctx.new_page(), stack=stack)
    watch(tab, stack.url)
    yield tab
    await ctx.close()
    unexpected = [e for e in tab.console_errors if not any(a in e for a in tab.allowed_errors)]
    assert not unexpected, unexpected
    assert not tab.foreign_requests, tab.foreign_requests


def axe_source() -> str:
    return AXE.read_text(encoding="utf-8")
