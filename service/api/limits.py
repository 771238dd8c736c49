"""How many long requests (live tails, exports) one token may hold open at once (429 beyond),
and how long a client may leave a streamed answer unread before it is cut."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from typing import Literal

from aiohttp import web

from service.api.auth import request_principal
from service.api.errors import ApiError

Kind = Literal["stream", "export"]
PER_TOKEN: dict[Kind, int] = {"stream": 4, "export": 2}
WRITE_TIMEOUT_S = 30.0  # seconds a streamed write may wait on a client that does not read


class OpenRequests:
    """The long requests each token holds open, in this API process."""

    def __init__(self) -> None:
        self._open: collections.Counter[tuple[int, Kind]] = collections.Counter()

    @contextlib.contextmanager
    def hold(self, request: web.Request, kind: Kind) -> Iterator[None]:
        """Hold one slot of `kind` for the request's token for the block, or answer 429."""
        key = (request_principal(request).token_id, kind)
        if self._open[key] >= PER_TOKEN[kind]:
            raise ApiError(
                429,
                "too_many_requests",
                f"this token already holds {PER_TOKEN[kind]} open {kind}s; close one first",
            )
        self._open[key] += 1
        try:
            yield
        finally:
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]


OPEN_REQUESTS = web.AppKey("open_requests", OpenRequests)
