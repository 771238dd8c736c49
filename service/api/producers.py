"""The API's producers: its own (admin actions, stored as `api`) and one per ingest token
(stored as `http:<token name>`), each vouching for its provenance with the shared key."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from aiohttp import web

from service.api.state import CLIENT, POOL, SETTINGS
from service.producer.client import AuditClient
from service.queue.jobs import Provenance
from service.settings import Settings
from service.store.secrets import read_provenance_key

API_VIA = "api"


class IngestClients:
    """One AuditClient per ingest token, made on its first request: a job carries one claim."""

    def __init__(self, settings: Settings, key: bytes) -> None:
        self._settings = settings
        self._key = key
        self._clients: dict[str, AuditClient] = {}

    def client(self, token_name: str) -> AuditClient:
        """The producer of the events this token sends."""
        client = self._clients.get(token_name)
        if client is None:
            via = f"http:{token_name}"
            # A spool of its own (segments replay with the claim of the client that wrote them).
            spool = self._settings.spool_dir
            if spool is not None:
                spool = spool / "http" / hashlib.sha256(token_name.encode()).hexdigest()[:16]
            client = AuditClient.from_settings(
                self._settings,
                spool_dir=spool,
                provenance=Provenance(via=via, key=self._key, task_prefix="http"),
            )
            self._clients[token_name] = client
        return client

    def clients(self) -> list[AuditClient]:
        """The clients made so far (their counters go to /metrics)."""
        return list(self._clients.values())

    async def aclose(self) -> None:
        """Send what each client holds, then close them."""
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))


INGEST_CLIENTS = web.AppKey("ingest_clients", IngestClients)
PROVENANCE_KEY = web.AppKey("provenance_key", bytes)  # tags retried tasks (task_actions.py)


async def producers_context(app: web.Application) -> AsyncIterator[None]:
    """Make the API's own producer and the ingest producers; close them last."""
    settings = app[SETTINGS]
    async with app[POOL].acquire() as conn:
        key = await read_provenance_key(conn)
    app[CLIENT] = AuditClient.from_settings(
        settings, provenance=Provenance(via=API_VIA, key=key, task_prefix="api")
    )
    app[INGEST_CLIENTS] = IngestClients(settings, key)
    app[PROVENANCE_KEY] = key
    yield
    await app[INGEST_CLIENTS].aclose()
    await app[CLIENT].aclose()
