"""A TCP proxy the fault tests put between auditq and a server, to cut the network on demand."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

CutMode = Literal["hang", "refuse"]


class TcpProxy:
    """Forward 127.0.0.1:<port> to `target`; `cut()` makes the target unreachable.

    Two kinds of cut. `hang`: a network partition; nothing is forwarded, connections stay open
    but silent and new ones are accepted and held silent too, so clients see timeouts.
    `refuse`: every connection is reset and the port is closed, so connecting is refused.
    `restore()` resets every connection of the outage and forwards again; clients reconnect.
    """

    def __init__(self, target_host: str, target_port: int, password: str | None = None) -> None:
        self.target = (target_host, target_port)
        self.password = password  # the target's: a URL through the proxy carries it
        self.port = 0
        self.reply_delay = 0.0  # seconds each chunk from the target is held: a slow server
        self.held = 0  # chunks of replies being held back right now
        self._server: asyncio.Server | None = None
        self._cut = False
        self._restored = asyncio.Event()
        self._links: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.BaseTransport] = set()

    def url(self, database: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{database}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self, mode: CutMode = "hang") -> None:
        """Stop forwarding: hold every byte back (`hang`), or refuse connections (`refuse`)."""
        self._cut = True
        self._restored.clear()
        if mode == "refuse":
            self._reset_all()
            await self._stop_listening()

    async def restore(self) -> None:
        """Forward again; connections that lived through the outage are reset."""
        self._cut = False
        self._reset_all()
        self._restored.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self._stop_listening()
        self._reset_all()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)

    def _reset_all(self) -> None:
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        self._transports.add(writer.transport)
        try:
            if self._cut:
                await self._restored.wait()
                return  # restore() reset it
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._transports.add(up_writer.transport)
            await asyncio.gather(
                self._pump(reader, up_writer),
                self._pump(up_reader, writer, replies=True),
                return_exceptions=True,
            )
            self._transports.discard(up_writer.transport)
        finally:
            writer.transport.abort()
            self._transports.discard(writer.transport)
            self._links.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                if replies and self.reply_delay:
                    self.held += 1
                    try:
                        await asyncio.sleep(
                            self.reply_delay
                        )  # the server did its work; answers late
                    finally:
                        self.held -= 1
                if self._cut:
                    await self._restored.wait()  # held: restore() resets this connection
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()
