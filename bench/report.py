"""Turn a run's results into latest.json's headline figures, latest.md and latest.png."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

GOALS = {
    "vs_testplanit": 8.0,
    "vs_arq_per_event": 25.0,
    "vs_copy_ceiling": 0.8,
    "capture_p99_ms": 1.0,
    "e2e_p99_ms_at_2000": 200.0,
    "read_p95_ms": 50.0,
    "deep_page_ratio": 2.0,
    "export_rows_per_s": 100_000,
    "capture_nowait_us": 10.0,
    "cpu_us_producer": 20.0,
    "cpu_us_worker": 8.0,
    "postgres_vs_copy_cpu": 1.2,
    "redis_bytes_per_stored_event": 50.0,
    "seal_overhead": 0.05,
    "verify_rows_per_s": 200_000,
    "receipt_p95_ms": 20.0,
    "consistency_p95_ms": 20.0,
}
MAIN = "auditq_1_worker"  # the system the single figures are of
QUERIES = ("entity_history", "actor_history", "action_time_range", "full_text")
STATISTICS = ("statistics_30d", "statistics_30d_tenant")  # the second: one tenant's


def headline(raw: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks latest.json to hold, from the raw results."""
    write = raw["write"]
    ceilings = raw["ceilings"]
    throughput = {name: r["throughput_eps"] for name, r in write.items()}
    throughput["copy_ceiling"] = ceilings["copy"]["eps"]
    throughput["redis_enqueue_ceiling_per_event"] = ceilings["redis_enqueue"]["per_event"]["eps"]
    throughput["redis_enqueue_ceiling_batched"] = ceilings["redis_enqueue"]["batched_500"]["eps"]
    auditq = max(
        (write[n]["throughput_eps"] for n in ("auditq_1_worker", "auditq_2_workers") if n in write),
        default=0.0,
    )
    out: dict[str, Any] = {
        "throughput_eps": throughput,
        "auditq_best_eps": auditq,
        "ratios": {  # of the baselines this run measured (--systems may leave some out)
            f"auditq_vs_{name}": auditq / throughput[name]
            for name in (
                "testplanit",
                "arq_per_event",
                "copy_ceiling",
                "redis_enqueue_ceiling_batched",
            )
            if name in throughput
        },
        "capture_p99_ms": {n: r["capture_ms"]["p99"] for n, r in write.items()},
        "capture_p99_ms_at_2000": {n: r["capture_ms_at_2000"]["p99"] for n, r in write.items()},
        "capture_p999_ms": {n: r["capture_ms"]["p99.9"] for n, r in write.items()},
        "e2e_p99_ms_at_2000": {n: r["e2e_ms_at_2000"]["p99"] for n, r in write.items()},
        "capture_nowait_us": {
            n: r["capture_nowait_us"] for n, r in write.items() if "capture_nowait_us" in r
        },
    }
    if MAIN in write:
        main = write[MAIN]
        # CPU s per 10,000 events -> µs per event
        out["cpu_us_per_event"] = {k: v * 100 for k, v in main["cpu_s_per_10k"].items()}
        out["postgres_cpu_vs_copy"] = (
            main["cpu_s_per_10k"]["postgres"]
            / ceilings["copy"]["1_connection"]["postgres_cpu_s_per_10k"]
        )
        out["redis_bytes_per_stored_event"] = main.get("redis_bytes_per_stored_event")
    if "seal_cost" in raw:
        out["seal_overhead"] = raw["seal_cost"]["seal_overhead"]
        out["seal_cpu_overhead"] = raw["seal_cost"]["seal_cpu_overhead"]
    if "verify" in raw:
        out["verify_rows_per_s"] = raw["verify"]["verify_rows_per_s"]
    if "tlog" in raw:
        out["verify_log_rows_per_s"] = raw["tlog"]["verify_log_rows_per_s"]
        out["receipt_p95_ms"] = raw["tlog"]["receipt_p95_ms"]
        out["consistency_p95_ms"] = raw["tlog"]["consistency_p95_ms"]
    if "live_tail" in raw:
        out["live_tail_p99_ms"] = raw["live_tail"]["row_to_client_p99_ms"]
    read = raw.get("read")
    if read:
        deep = f"page_{read['deep_page']}"
        out["read_p95_ms"] = {
            name: read[name]["p95"] for name in (*QUERIES, "page_1", deep, "statistics_30d")
        }
        out["deep_page_vs_page_1_p50"] = read[deep]["p50"] / read["page_1"]["p50"]
        out["export_rows_per_s"] = read["export_csv"]["rows_per_s"]
        out["export_api_rss_growth_mib"] = read["export_csv"]["api_rss_growth_mib"]
        out["read_rows"] = read["load"]["rows"]
    return out


def _f(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _goal(ok: bool) -> str:
    return "met" if ok else "**missed**"


def markdown(raw: dict[str, Any], head: dict[str, Any]) -> str:
    write, ceilings = raw["write"], raw["ceilings"]
    tp = head["throughput_eps"]
    auditq = head["auditq_best_eps"]
    lines = [
        "# auditq benchmarks",
        "",
        f"Run {raw['started_at']} on {raw['machine']}"
        + (" — **QUICK** (smaller counts; figures are indicative)" if raw["quick"] else "")
        + ". Each system on fresh embedded Valkey 9 + PostgreSQL 18, same rows, same schema"
        + (
            f"; write side run {raw['rounds']} times round-robin, each system's median-throughput"
            " round shown (all rounds in latest.json)"
            if raw.get("rounds", 1) > 1
            else ""
        )
        + "; the machine was shared with other work, so absolute figures are noisy and the ratios "
        "of one run side by side are what holds. How: [bench/README.md](../README.md).",
        "",
        "## Write side",
        "",
        "| system | events/s end to end | auditq ÷ it | awaited capture p50 / p99 / p99.9 ms, "
        "at full load | the same at 2,000/s | e2e p50 / p99 ms at 2,000/s "
        "| CPU s per 10k events: producer / worker / PostgreSQL / Valkey "
        "| worker peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in write.values():
        c, e, cpu = r["capture_ms"], r["e2e_ms_at_2000"], r["cpu_s_per_10k"]
        s = r["capture_ms_at_2000"]
        e2e = f"{_f(e['p50'])} / {_f(e['p99'])}"
        if e["achieved_rate_eps"] < 1900:
            e2e += f" (offered only {_f(e['achieved_rate_eps'])}/s)"
        lines.append(
            f"| {r['label']} | {_f(r['throughput_eps'])} | {auditq / r['throughput_eps']:.1f}x "
            f"| {_f(c['p50'], 2)} / {_f(c['p99'], 2)} / {_f(c['p99.9'], 2)} "
            f"| {_f(s['p50'], 2)} / {_f(s['p99'], 2)} / {_f(s['p99.9'], 2)} | {e2e} "
            f"| {cpu['producer']:.2f} / {cpu['worker']:.2f} / {cpu['postgres']:.2f} / "
            f"{cpu['valkey']:.2f} | {_f(r['worker_peak_rss_mib'])} |"
        )
    copy = ceilings["copy"]
    redis = ceilings["redis_enqueue"]
    lines += [
        f"| ceiling: COPY of pre-built rows (1 connection {_f(copy['1_connection']['eps'])}, "
        f"2 connections {_f(copy['2_connections']['eps'])}) | {_f(tp['copy_ceiling'])} "
        f"| {auditq / tp['copy_ceiling']:.2f}x | | | | - / - / "
        f"{copy['1_connection']['postgres_cpu_s_per_10k']:.2f} / - | |",
        f"| ceiling: Redis enqueue, pipelined, no consumer — one job per event "
        f"| {_f(redis['per_event']['eps'])} | {auditq / redis['per_event']['eps']:.2f}x "
        "| | | | | |",
        f"| ceiling: Redis enqueue, pipelined, no consumer — jobs of 500 "
        f"| {_f(redis['batched_500']['eps'])} | {auditq / redis['batched_500']['eps']:.2f}x "
        "| | | | | |",
        "",
    ]
    for r in write.values():
        floor = r.get("floor_ms_at_2000")
        if floor:
            lag, ping = floor["loop_lag"], floor["redis_ping"]
            lines += [
                f"Where {r['label']}'s awaited capture at 2,000/s spends its time beyond auditq's "
                f"code: in the producer process at the same moments, the event loop's lag was "
                f"p50 {lag['p50']:.2f} / p99 {lag['p99']:.2f} ms and a bare Redis PING took "
                f"p50 {ping['p50']:.2f} / p99 {ping['p99']:.2f} ms (capture p99 "
                f"{r['capture_ms_at_2000']['p99']:.2f} ms).",
                "",
            ]
    nowait = head["capture_nowait_us"]
    if nowait:
        lines += [
            "`capture_nowait` costs "
            + ", ".join(f"{_f(v, 1)} µs per call ({k})" for k, v in nowait.items())
            + " (validation, redaction and encoding included).",
            "",
        ]
    r = head["ratios"]
    cap = min(head["capture_p99_ms"][n] for n in write if n.startswith("auditq"))
    steady = min(write[n]["capture_ms_at_2000"]["p99"] for n in write if n.startswith("auditq"))
    e2e = max(head["e2e_p99_ms_at_2000"][n] for n in write if n.startswith("auditq"))
    lines += [
        "## Goals",
        "",
        "| goal | measured | |",
        "|---|---:|---|",
        f"| end to end ≥ 8x TestPlanIt's design | {r['auditq_vs_testplanit']:.1f}x "
        f"| {_goal(r['auditq_vs_testplanit'] >= GOALS['vs_testplanit'])} |",
        f"| ≥ 25x one arq job per event | {r['auditq_vs_arq_per_event']:.1f}x "
        f"| {_goal(r['auditq_vs_arq_per_event'] >= GOALS['vs_arq_per_event'])} |",
        f"| ≥ 80 % of the COPY ceiling | {r['auditq_vs_copy_ceiling']:.0%} "
        f"| {_goal(r['auditq_vs_copy_ceiling'] >= GOALS['vs_copy_ceiling'])} |",
        f"| awaited capture p99 ≤ 1 ms, under the full throughput load | {cap:.2f} ms "
        f"| {_goal(cap <= GOALS['capture_p99_ms'])} |",
        f"| awaited capture p99 ≤ 1 ms, at a steady 2,000 events/s | {steady:.2f} ms "
        f"| {_goal(steady <= GOALS['capture_p99_ms'])} |",
        f"| e2e p99 ≤ 200 ms at 2,000 events/s | {e2e:.0f} ms "
        f"| {_goal(e2e <= GOALS['e2e_p99_ms_at_2000'])} |",
    ]
    lines += _cost_goals(head)
    read = raw.get("read")
    if read:
        worst = max(head["read_p95_ms"][q] for q in QUERIES)
        ratio = head["deep_page_vs_page_1_p50"]
        export = read["export_csv"]
        lines += [
            f"| each query p95 ≤ 50 ms on {_f(head['read_rows'])} rows | worst {worst:.1f} ms "
            f"| {_goal(worst <= GOALS['read_p95_ms'])} |",
            f"| page {read['deep_page']:,} ≤ 2x page 1 | {ratio:.2f}x "
            f"| {_goal(ratio <= GOALS['deep_page_ratio'])} |",
            f"| statistics over 30 days p95 ≤ 50 ms | {head['read_p95_ms']['statistics_30d']:.1f} "
            f"ms | {_goal(head['read_p95_ms']['statistics_30d'] <= GOALS['read_p95_ms'])} |",
            f"| CSV export ≥ 100,000 rows/s, API memory flat | {_f(export['rows_per_s'])} rows/s, "
            f"+{export['api_rss_growth_mib']:.0f} MiB "
            f"| {_goal(export['rows_per_s'] >= GOALS['export_rows_per_s'])} |",
            "",
            f"## Read side ({_f(head['read_rows'])} rows, over HTTP, {raw['read_reps']} runs each)",
            "",
            "| query | p50 ms | p95 ms |",
            "|---|---:|---:|",
        ]
        names = (*QUERIES, "page_1", f"page_{read['deep_page']}", *STATISTICS)
        for name in (n for n in names if n in read):
            lines.append(f"| {name} | {_f(read[name]['p50'], 1)} | {_f(read[name]['p95'], 1)} |")
        lines += [
            "",
            f"CSV export of every row: {_f(export['rows_per_s'])} rows/s "
            f"({export['bytes'] / 2**20:,.0f} MiB in {export['seconds']:.1f} s); the API's RSS "
            f"{export['api_rss_before_mib']:.0f} MiB before, {export['api_rss_peak_mib']:.0f} "
            "MiB at most during it.",
            "",
        ]
    else:
        lines.append("")
    if "seal_cost" in raw:
        lines += seals(raw["seal_cost"])
    lines += integrity(raw)
    if "destinations" in raw:
        lines += destinations(raw["destinations"])
    return "\n".join(lines)


def destinations(result: dict[str, Any]) -> list[str]:
    """Two destinations on and off (bench/destinations.py): ingest's drop, and the lag."""
    lag = result["lag"]
    rows = [
        "## Destinations",
        "",
        f"Two webhook destinations (item JSON signed, OCSF) against none, {result['events']:,} "
        f"events flat out, {result['rounds']} alternating pairs: on "
        + ", ".join(f"{x:,.0f}" for x in result["on_events_per_s"])
        + " events/s, off "
        + ", ".join(f"{x:,.0f}" for x in result["off_events_per_s"])
        + f"; median drop {result['drop']:.0%} (goal ≤ 10 %: {_goal(result['drop'] <= 0.10)}).",
        "",
        f"At {lag['rate']:,} events/s for {lag['seconds']} s: each destination's lag "
        + ", ".join(
            f"{name} max {v['max']:.1f} s (p95 {v['p95']:.1f} s)"
            for name, v in lag["lag_s"].items()
        )
        + f" (goal < 2 s: {_goal(all(v['max'] < 2 for v in lag['lag_s'].values()))}).",
        "",
        "CPU per event of the worker and PostgreSQL, which the machine's load does not change "
        f"(median of the pairs, until every destination caught up): "
        f"{result['worker_pg_cpu_us_per_event_off']:.0f} µs without destinations, "
        f"{result['worker_pg_cpu_us_per_event_on']:.0f} µs with both; load average "
        f"{result['load_average_before']:.1f} before, {result['load_average']:.1f} after.",
        "",
    ]
    return rows


def integrity(raw: dict[str, Any]) -> list[str]:
    """The transparency log's goals side by side (bench/seal_cost.py, bench/tlog_cost.py)."""
    if "seal_cost" not in raw and "tlog" not in raw:
        return []
    lines = ["## Integrity, side by side", "", "| goal | measured | |", "|---|---:|---|"]
    seal, log = raw.get("seal_cost"), raw.get("tlog")
    if seal:
        lines += [
            f"| sealing ≤ 5 % of write throughput (median of {seal['rounds']} on/off pairs) "
            f"| {seal['seal_overhead']:.1%} "
            f"| {_goal(seal['seal_overhead'] <= GOALS['seal_overhead'])} |",
            f"| sealing's CPU per event, beside it | +{seal['seal_cpu_overhead']:.1%} | |",
        ]
    if log:
        rate, p95, cons = (
            log["verify_log_rows_per_s"],
            log["receipt_p95_ms"],
            log["consistency_p95_ms"],
        )
        lines += [
            f"| `auditq verify` of the log ≥ 200,000 rows/s | {_f(rate)} rows/s "
            f"({log['verify_log_cpu_us']:.1f} µs of the verifier's CPU a row, "
            f"PostgreSQL's {log.get('verify_server_cpu_us', float('nan')):.1f}) "
            f"| {_goal(rate >= GOALS['verify_rows_per_s'])} |",
            f"| a receipt ≤ 20 ms p95 on a store of {_f(log['rows'])} rows | {p95:.1f} ms "
            f"| {_goal(p95 <= GOALS['receipt_p95_ms'])} |",
            f"| a consistency proof ≤ 20 ms p95 | {cons:.1f} ms "
            f"| {_goal(cons <= GOALS['consistency_p95_ms'])} |",
            f"| sealing: the sealer's / PostgreSQL's CPU per row | {log['seal_log_py_us']:.1f} / "
            f"{log['seal_log_pg_us']:.1f} µs | |",
        ]
    lines += [
        "",
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.",
        "",
    ]
    return lines


def seals(seal: dict[str, Any]) -> list[str]:
    """Seals on and off side by side (bench/seal_cost.py)."""
    parts = tuple(seal["off"]["cpu_us_per_event"])  # bench/seal_cost.py's PARTS, in order
    lines = [
        f"## Sealing, end to end ({_f(seal['events'])} events a round, {seal['rounds']} pairs "
        "of rounds on and off)",
        "",
        "| seals | events/s (median) | CPU µs per event: " + ", ".join(parts) + " |",
        "|---|---:|---:|",
    ]
    for name in ("off", "on"):
        cpu = seal[name]["cpu_us_per_event"]
        lines.append(
            f"| {name} | {_f(seal[name]['events_per_s'])} "
            f"| {' + '.join(f'{cpu[p]:.1f}' for p in parts)} = {sum(cpu.values()):.1f} |"
        )
    pairs = ", ".join(f"{c:.1%}" for c in seal["seal_overhead_pairs"])
    lines += [
        "",
        f"Cost, median over the pairs: {seal['seal_overhead']:.1%} of throughput (each pair: "
        f"{pairs}), {seal['seal_cpu_overhead']:.1%} more CPU per event "
        f"({seal['seal_cpu_overhead_worker_postgres']:.1%} of the worker's and PostgreSQL's).",
        "",
    ]
    return lines


def _cost_goals(head: dict[str, Any]) -> list[str]:
    """The goal rows of CPU, Redis, seals and verification, for those measured."""
    rows = []
    nowait = head["capture_nowait_us"].get(MAIN)
    if nowait is not None:
        rows.append(
            f"| `capture_nowait` ≤ 10 µs a call | {nowait:.1f} µs "
            f"| {_goal(nowait <= GOALS['capture_nowait_us'])} |"
        )
    cpu = head.get("cpu_us_per_event")
    if cpu:
        rows += [
            f"| producer CPU ≤ 20 µs per awaited capture (64 callers) | {cpu['producer']:.1f} µs "
            f"| {_goal(cpu['producer'] <= GOALS['cpu_us_producer'])} |",
            f"| worker CPU ≤ 8 µs per event | {cpu['worker']:.1f} µs "
            f"| {_goal(cpu['worker'] <= GOALS['cpu_us_worker'])} |",
            f"| PostgreSQL CPU per row ≤ 1.2x a bare COPY's | {head['postgres_cpu_vs_copy']:.2f}x "
            f"| {_goal(head['postgres_cpu_vs_copy'] <= GOALS['postgres_vs_copy_cpu'])} |",
        ]
    kept = head.get("redis_bytes_per_stored_event")
    if kept is not None:
        rows.append(
            f"| Redis grows ≤ 50 B per stored event | {kept:.1f} B "
            f"| {_goal(kept <= GOALS['redis_bytes_per_stored_event'])} |"
        )
    if "seal_overhead" in head:
        rows += [
            f"| sealing costs ≤ 5 % of end-to-end write throughput | {head['seal_overhead']:.1%} "
            f"| {_goal(head['seal_overhead'] <= GOALS['seal_overhead'])} |",
            f"| sealing's CPU per event (producer + worker + PostgreSQL + Valkey) "
            f"| +{head['seal_cpu_overhead']:.1%} | |",
        ]
    if "verify_rows_per_s" in head:
        rate = head["verify_rows_per_s"]
        rows.append(
            f"| verification ≥ 200,000 rows/s | {_f(rate)} rows/s "
            f"| {_goal(rate >= GOALS['verify_rows_per_s'])} |"
        )
    if "live_tail_p99_ms" in head:
        rows.append(f"| live tail, row to client p99 | {head['live_tail_p99_ms']} ms | |")
    return rows


def chart(raw: dict[str, Any], head: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "testplanit": "TestPlanIt design\n(BullMQ, job/event)",
        "arq_per_event": "arq\njob/event",
        "auditq_1_worker": "auditq\n1 worker",
        "auditq_2_workers": "auditq\n2 workers",
        "copy_ceiling": "COPY\nceiling",
    }
    tp = head["throughput_eps"]
    names = [n for n in labels if n in tp]
    values = [tp[n] for n in names]
    colors = [
        "#999999"
        if n in ("testplanit", "arq_per_event")
        else "#bbbbdd"
        if "ceiling" in n
        else "#3366cc"
        for n in names
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    bars = left.bar([labels[n] for n in names], values, color=colors)
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    left.set_ylabel("events/s, first capture → last row visible")
    left.set_title("Sustained end-to-end throughput")
    left.tick_params(axis="x", labelsize=8)
    read = raw.get("read")
    if read:
        deep = f"page_{read['deep_page']}"
        queries = [*QUERIES, "page_1", deep]
        p95 = [read[q]["p95"] for q in queries]
        bars = right.barh(queries, p95, color="#3366cc")
        right.bar_label(bars, labels=[f"{v:.1f}" for v in p95], fontsize=8)
        right.axvline(50, color="#cc3333", linestyle="--", linewidth=1)
        right.set_xlabel("p95 ms (goal ≤ 50, dashed)")
        right.set_title(f"Read side on {head['read_rows']:,} rows")
        right.invert_yaxis()
    else:
        right.axis("off")
    fig.suptitle(f"auditq benchmarks{' (QUICK)' if raw['quick'] else ''} — {raw['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
