"""Run every benchmark side by side and write bench/results/latest.{json,md,png}.

    python -m bench.run [--quick] [--only write,ceilings,read,integrity,live,destinations]
    [--systems a,b]

`make bench` runs it (and installs Node's packages into bench/node/ first);
`make bench QUICK=1` is the short version (smaller counts, under 5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import ceilings, live_tail, read_side, report, seal_cost, tlog_cost, verify, write_side
from bench import destinations as destinations_bench
from bench.common import RESULTS

PARTS = ("write", "ceilings", "read", "integrity", "live", "destinations")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    node = shutil.which(os.environ.get("NODE", "node"))
    node_version = (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        if node
        else "no node"
    )
    return (
        f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, Node {node_version}"
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    parts = set(args.only.split(",")) if args.only else set(PARTS)
    systems = set(args.systems.split(",")) if args.systems else None
    logs = Path(tempfile.mkdtemp(prefix="auditq-bench-logs-"))
    raw: dict[str, Any] = {
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "quick": quick,
        "logs": str(logs),
    }
    started = time.monotonic()
    print(f"bench ({'quick' if quick else 'full'}), logs in {logs}", file=sys.stderr)
    sizes = write_side.QUICK if quick else write_side.FULL
    raw["sizes"] = {"warmup": sizes.warmup, "e2e_seconds": sizes.e2e_seconds}
    raw["concurrency"] = write_side.CONCURRENCY
    if "write" in parts:
        raw["rounds"] = 1 if quick else 3
        raw["write"] = await write_side.run_all(sizes, logs, systems, raw["rounds"])
    if "ceilings" in parts:
        count = 50_000 if quick else 200_000
        raw["ceilings"] = await ceilings.run_all(count, count)
    if "read" in parts:
        rows, reps = (200_000, 30) if quick else (1_000_000, 200)
        raw["read_reps"] = reps
        raw["read"] = await read_side.run_all(rows, reps, 1000, logs)
    if "integrity" in parts:
        events, rounds = (20_000, 4) if quick else (100_000, 8)
        raw["seal_cost"] = await seal_cost.run(events, rounds)
        raw["verify"] = await verify.run(100_000 if quick else 200_000)
        raw["tlog"] = await tlog_cost.run(200_000 if quick else tlog_cost.ROWS)
    if "live" in parts:
        raw["live_tail"] = await live_tail.measure(5.0 if quick else 20.0, 200.0)
    if "destinations" in parts:  # two destinations: ingest's drop, lag at 2,000 events/s
        events, rounds, seconds = (20_000, 2, 10) if quick else (50_000, 4, 30)
        raw["destinations"] = await destinations_bench.run(events, rounds, seconds)
    raw["seconds"] = time.monotonic() - started
    return raw


def write_results(raw: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    head = report.headline(raw)
    document = {**head, "quick": raw["quick"], "machine": raw["machine"], "raw": raw}
    (out / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "latest.md").write_text(report.markdown(raw, head))
    report.chart(raw, head, out / "latest.png")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (< 5 minutes)")
    parser.add_argument("--only", help="comma-separated parts: " + ", ".join(PARTS))
    parser.add_argument("--systems", help="comma-separated write-side systems")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    raw = asyncio.run(main(args))
    if {"write", "ceilings"} <= raw.keys() and not args.systems:  # a whole run: the report
        write_results(raw, args.out)
        print((args.out / "latest.md").read_text())
    else:
        print(json.dumps(raw, indent=2))
        print("\n".join(report.integrity(raw)))
    print(f"done in {raw['seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    cli()
