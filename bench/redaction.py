"""What redaction costs per event: `python -m bench.redaction [--events N] [--rounds R]`.

Prints CPU µs per event (best of R rounds of N events) of `redact_event` (every string
checked one by one), of `finalize` and of `capture_nowait`, each with and without redaction
(the one pre-check scan of the encoded event, then the rules when it finds something), for
the benchmark's event (bench/common.py: no suspicious text) and for the same event carrying
a password in its metadata and a token in its path (the full rules run).
No server is needed: capture_nowait only buffers here (the client's Redis is never reached).
Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from bench.producer import audit_event
from service import events
from service.events import AuditEvent, redact_event
from service.producer.client import AuditClient


def _suspicious(event: AuditEvent) -> AuditEvent:
    assert event.request is not None
    request = msgspec.structs.replace(event.request, path="/api/documents?token=Zq9secret1")
    return msgspec.structs.replace(
        event, request=request, metadata={**(event.metadata or {}), "password": "hunter2"}
    )


@contextlib.contextmanager
def _without_redaction() -> Iterator[None]:
    saved = events.json_matches
    events.json_matches = lambda data, extra_keys=frozenset(), whole=True: None  # type: ignore[assignment]
    try:
        yield
    finally:
        events.json_matches = saved


def _best_us(run: Callable[[], Any], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best / n * 1e6


async def _capture_nowait_us(batch: list[AuditEvent], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        client = AuditClient.from_url(
            "redis://127.0.0.1:9/0", queue="bench-redaction", buffer_max_events=len(batch) + 1
        )
        started = time.process_time()
        for event in batch:
            client.capture_nowait(event)
        best = min(best, time.process_time() - started)
        client._buffer.clear()  # never sent: the figure is the calls alone
        await client.aclose(timeout_s=0.01)
    return best / len(batch) * 1e6


@dataclasses.dataclass
class Figures:
    redact_event: float
    finalize: float
    finalize_unredacted: float
    capture_nowait: float
    capture_nowait_unredacted: float


def measure(batch: list[AuditEvent], rounds: int) -> Figures:
    """Best of `rounds` for each figure; a round times each once, in turn, so that a change
    of the machine's load reaches a figure and the one it is compared with alike."""
    n = len(batch)
    best = [float("inf")] * 5
    for _ in range(rounds):
        redact = _best_us(lambda: [redact_event(e) for e in batch], n, 1)
        fin = _best_us(lambda: [events.finalize(e) for e in batch], n, 1)
        nowait = asyncio.run(_capture_nowait_us(batch, 1))
        with _without_redaction():
            fin_bare = _best_us(lambda: [events.finalize(e) for e in batch], n, 1)
            nowait_bare = asyncio.run(_capture_nowait_us(batch, 1))
        round_ = (redact, fin, fin_bare, nowait, nowait_bare)
        best = [min(a, b) for a, b in zip(best, round_, strict=True)]
    return Figures(*best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("auditq").setLevel(logging.CRITICAL)  # the never-sent events' lines
    clean = [audit_event("bench", i) for i in range(args.events)]
    for name, batch in (("clean", clean), ("with secrets", [_suspicious(e) for e in clean])):
        f = measure(batch, args.rounds)
        print(
            f"{name:>12}: redact_event {f.redact_event:5.2f} us | "
            f"finalize {f.finalize:5.2f} us ({f.finalize - f.finalize_unredacted:+5.2f}) | "
            f"capture_nowait {f.capture_nowait:5.2f} us "
            f"({f.capture_nowait - f.capture_nowait_unredacted:+5.2f} for redaction)"
        )


if __name__ == "__main__":
    main()
