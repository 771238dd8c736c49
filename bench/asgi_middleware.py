"""What the ASGI middleware adds per request: `python -m bench.asgi_middleware [--rounds R]`.

The same FastAPI app (one async endpoint, the route a service has) with and without
`AuditContextMiddleware`, driven through its ASGI interface in this process (no HTTP, no
socket: they would drown the difference), in alternating rounds; and the middleware alone
around an empty ASGI app. CPU µs per request (process time), best and median of the rounds.
Many short rounds: on a loaded machine one round's difference swings by tens of µs either
way, and only the median of many pairs taken close together settles.
Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from fastapi import FastAPI

from service.producer.asgi import AuditContextMiddleware

HEADERS = [
    (b"host", b"service.example"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) bench/1.0"),
    (b"accept", b"application/json"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"x-forwarded-for", b"198.51.100.7"),
    (b"x-request-id", b"req-0123456789abcdef"),
    (b"content-length", b"0"),
]
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "PUT",
    "scheme": "http",
    "path": "/projects/42",
    "raw_path": b"/projects/42",
    "query_string": b"",
    "root_path": "",
    "headers": HEADERS,
    "client": ("10.0.0.5", 51000),
    "server": ("127.0.0.1", 8000),
}


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.put("/projects/{project_id}")
    async def update_project(project_id: str) -> dict[str, str]:
        return {"project": project_id}

    return app


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


async def _empty_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def scopes(requests: int, *, distinct_clients: bool, run: int = 0) -> list[dict[str, Any]]:
    """The requests' scopes: the same client each time, or a new client each time (the
    middleware remembers the client IP it worked out; a new client is its worst case)."""
    out = []
    for i in range(requests):
        headers = HEADERS
        if distinct_clients:
            client = f"{1 + run % 200}.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}".encode()
            headers = [*HEADERS[:4], (b"x-forwarded-for", client), *HEADERS[5:]]
        out.append({**SCOPE, "headers": headers})
    return out


async def per_request_us(app: Any, batch: list[dict[str, Any]]) -> float:
    started = time.process_time()
    for scope in batch:
        await app(dict(scope), _receive, _send)
    return (time.process_time() - started) / len(batch) * 1e6


async def main(rounds: int, requests: int) -> None:
    trusted = ["10.0.0.0/8"]
    plain = fastapi_app()
    wrapped = fastapi_app()
    wrapped.add_middleware(AuditContextMiddleware, trusted_proxies=trusted)
    alone = AuditContextMiddleware(_empty_app, trusted_proxies=trusted)
    same = scopes(requests, distinct_clients=False)
    for app in (plain, wrapped, alone, _empty_app):
        await per_request_us(app, same[:500])  # warm-up: FastAPI builds its stack on first call
    results: dict[str, list[float]] = {
        "without": [],
        "with": [],
        "without_new": [],
        "with_new": [],
        "empty": [],
        "alone": [],
    }
    for n in range(rounds):
        # A new client each request, never seen in an earlier round either.
        new = scopes(requests, distinct_clients=True, run=n)
        results["without"].append(await per_request_us(plain, same))
        results["with"].append(await per_request_us(wrapped, same))
        results["without_new"].append(await per_request_us(plain, new))
        results["with_new"].append(await per_request_us(wrapped, new))
        results["empty"].append(await per_request_us(_empty_app, same))
        results["alone"].append(await per_request_us(alone, same))
    deltas = [w - p for w, p in zip(results["with"], results["without"], strict=True)]
    new_deltas = [w - p for w, p in zip(results["with_new"], results["without_new"], strict=True)]
    alone_deltas = [a - e for a, e in zip(results["alone"], results["empty"], strict=True)]
    for name, values in results.items():
        print(f"{name:8s} best {min(values):7.2f} µs  median {statistics.median(values):7.2f} µs")
    spread = statistics.quantiles(deltas, n=4) if len(deltas) > 1 else deltas
    quartiles = ", ".join(f"{q:.1f}" for q in spread)
    print(
        f"FastAPI with - without: median {statistics.median(deltas):.2f} µs per request "
        f"(quartiles of the {len(deltas)} rounds: {quartiles}); best-vs-best "
        f"{min(results['with']) - min(results['without']):.2f} µs; ratio "
        f"{statistics.median(results['with']) / statistics.median(results['without']):.3f}"
    )
    print(
        f"FastAPI with (a new client every request) - without: median "
        f"{statistics.median(new_deltas):.2f} µs per request"
    )
    print(
        f"middleware alone (around an empty ASGI app): median "
        f"{statistics.median(alone_deltas):.2f} µs per request"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.requests))
