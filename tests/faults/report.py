"""docs/reliability.md: the fault matrix's figures, written by the suite, with what they mean."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from tests.faults.harness import Figures

# Scenario key -> (the fault, how it is made). Order is the table's.
SCENARIOS: dict[str, tuple[str, str]] = {
    "worker-kill": (
        "One of two workers SIGKILLed mid-batch, then restarted",
        "two `auditq worker` processes (`AUDITQ_JOB_TIMEOUT_S=3`); a table lock holds the "
        "first one inside a batch's INSERT when it is SIGKILLed; restarted 1 s later",
    ),
    "redis-kill": (
        "Redis SIGKILLed, restarted on its append-only file",
        "a Valkey of the test's own (`appendfsync always`, see below) is SIGKILLed under load "
        "and restarted on the same data 2 s later; the producers' spools engage meanwhile",
    ),
    "redis-unreachable": (
        "Redis unreachable for 20 s, no restart",
        "a TCP proxy between every client (producers, API, worker) and Valkey stops "
        "forwarding: 10 s of partition (connections hang, so clients time out), then 10 s of "
        "refused connections; then it resets the connections of the outage and forwards again",
    ),
    "sentinel-failover": (
        "Redis primary SIGKILLed under load, Sentinel promotes its replica",
        "a Valkey primary, one replica and three Sentinels of the test's own "
        "(`down-after-milliseconds 1000`, `failover-timeout 3000`); the worker, the API and "
        "the producers (awaited `capture` and `capture_nowait` with a spool, awaited `capture` "
        "without one, HTTP ingest) all on the `redis+sentinel://` URL. The primary is "
        "SIGKILLed; once the Sentinels promote the replica, the old primary is restarted on "
        "its data and Sentinel makes it the new primary's replica (the end of the fault, for "
        "the drain). Each batch counts as accepted only once a replica confirmed it "
        "(`WAIT 1`) or it is spooled",
    ),
    "postgres-stop-fast": (
        "PostgreSQL stopped (`fast`) for 30 s, then started",
        "`pg_ctl stop -m fast` of the test's own server under load; the worker's breaker "
        "holds the jobs (no attempt burnt) until it answers again",
    ),
    "postgres-stop-immediate": (
        "PostgreSQL stopped (`immediate`) for 30 s, then started",
        "`pg_ctl stop -m immediate` (a crash: recovery on start) of the test's own server",
    ),
    "postgres-stop-ingest": (
        "PostgreSQL stopped for 20 s under HTTP ingest",
        "`pg_ctl stop -m fast` of the test's own server while four HTTP producers post batches "
        "(beside the other producers); the API keeps the tokens it verified (rechecked every "
        "5 s, trusted up to 5 min while PostgreSQL is away, unless announced revoked in Redis), "
        "so ingest refuses nothing",
    ),
    "postgres-connections": (
        "PostgreSQL out of connections for 10 s",
        "the test takes every connection slot of its own server, terminates the worker's, "
        "holds them 10 s, then lets go",
    ),
    "api-kill": (
        "API process SIGKILLed while ingesting over HTTP, restarted",
        "`auditq api` as a child process, four HTTP producers posting batches; SIGKILL, "
        "restart on the same port and spool; only what got `202` counts as accepted",
    ),
    "ctrl-c": (
        "Ctrl-C to `auditq run --demo`, ten times in a row",
        "`auditq run --demo` on the embedded default in a process group of its own, as in a "
        "terminal; SIGINT to the whole group (Valkey and PostgreSQL run in sessions of their "
        "own, so the stack stops them last); each stop must end within 10 s with no "
        "traceback and both servers down; accepted = what the demo producer was told; after "
        "the tenth, a last start stores what the stops left queued",
    ),
    "timestamps": (
        "Events with `ts` far in the past or future",
        "0001-01-02, 1970, 2000-02-29 at +14:00, 2038-01-19 at -12:00, now, next month, five "
        "years ahead, 9999-12-31T23:59:59.999998Z, through capture, capture_nowait, Lua and "
        "HTTP; each row is checked to hold the exact `ts` sent and to be in its month's "
        "partition or, when that month has none, the default one",
    ),
    "poison": (
        "Poison mixed into the load",
        "bad events inside arrays of good ones through Lua and HTTP ingest (wrong types, "
        "unknown fields, bad actions, bad IPs, ids that are not UUIDs, oversized events, `ts` "
        "out of range, `ts` at the last instant, NUL bytes in metadata and in text columns), "
        "NUL bytes also through `capture` (they pass its checks; PostgreSQL refuses them), "
        "and whole payloads through Lua (invalid UTF-8, bad JSON, a NUL byte in the JSON "
        "text, a bare string). Lua accepts them all: each must end in the dead letter, the "
        "good events around it stored; HTTP refuses most at the door (not accepted)",
    ),
}

HEADER = """# Reliability: the fault matrix

<!-- Generated by tests/faults (tests/faults/report.py) when a test session runs every
scenario of the matrix; do not edit by hand. Regenerate: .venv/bin/python -m pytest -m faults -->

Every scenario runs under steady load from several producers at once: awaited `capture`
(three concurrent callers), `capture_nowait`, the Lua script (`enqueue.lua`, as a producer in
another language would) and, where the API is part of the scenario, HTTP ingest. A producer
counts an event as **accepted** only when it was told so: `capture` returned its id,
`capture_nowait` wrote no failure line for it, the Lua script returned a task id, the API
answered `202` with it in `accepted`. Each scenario ends with one assertion: every accepted
event is in PostgreSQL exactly once, or, for deliberately bad events only, in the dead letter.

Run of {when} on {cores} cores; the fault tests took {wall:.0f} s of wall time in all.

| scenario | accepted | stored | dead-lettered | duplicated | lost | drain (s) | notes |
|---|---:|---:|---:|---:|---:|---:|---|
"""

FOOTER = """
- **stored**: accepted good events found in `audit_log`; **dead-lettered**: deliberately bad
  events (or whole bad payloads) found in the dead letter; **duplicated**: event ids stored
  more than once; **lost**: accepted events in neither place (must be 0).
- **drain**: seconds from the end of the fault until every event accepted by then was stored
  (for the last two rows, from the end of the load). The killed worker's row is dominated by
  arq's rule that a job held by a dead worker is rerun after the job timeout + 10 s.

## The scenarios

{scenarios}

## What makes these hold

- **Producer spool** (`service/producer/spool.py`). When Redis does not take a batch (an
  error, or no answer within half the capture bound for a batch an awaited `capture` is in), the
  client appends the batch to a local spool and counts its events as accepted only once the
  append is on disk: each appended batch is written with one `write(2)` and `fdatasync`ed before
  `capture` returns the ids; a new segment file is locked, renamed into place and its
  directory fsynced. While anything is spooled, new batches go to the spool behind it, so
  order is kept; a background task probes Redis and replays the segments, oldest first,
  through the same Lua script, each batch under a task id derived from its segment and
  position, and deletes a segment only after Redis acknowledged all of it. A replay cut
  short is repeated: event ids make that harmless. The spool is bounded
  (`AUDITQ_SPOOL_MAX_BYTES`, 1 GiB): past it, new events are dropped, counted
  (`client.spool_dropped`) and logged one failure line each. A spool that cannot be written
  is one log line, and `capture` returns `None` (never raises). A restarted process replays
  what an earlier one left (segments are locked by their writer; a dead writer's are free).
  `auditq run` and `auditq api` spool under `AUDITQ_DATA_DIR/spool` by default
  (`AUDITQ_SPOOL_DIR`, `off` to disable); library users opt in with `spool_dir=`.
- **Redis append-only file and SIGKILL.** A SIGKILL of the Valkey *process* loses nothing
  Valkey already `write(2)`-ed to its append-only file: the page cache survives the process.
  With `appendfsync everysec`, though, `flushAppendOnlyFile` postpones that `write(2)` for up
  to 2 s while the background fsync of the previous second is still running (a busy disk),
  and replies to clients meanwhile: a SIGKILL in that window loses acknowledged writes. So
  `everysec` is not a guarantee against a process kill, only likely: three runs of this
  scenario with `everysec` on this machine lost nothing. The scenario's own server runs
  `appendfsync always` (replies wait for the write and its fsync) so that its assertion holds
  whatever the disk does. The embedded default keeps `everysec`, whose exposure is that window
  (and up to a second of writes on a crash of the machine). For production Redis:
  `appendonly yes`, and `appendfsync always` when an acknowledged event must survive
  anything short of losing the disk.
- **Replicas and failover (`redis+sentinel://`).** Redis replication is asynchronous: the
  primary replies to an enqueue before any replica has it, so a failover can promote a
  replica that lacks the last enqueues. With `AUDITQ_REDIS_WAIT_REPLICAS=N` (0 without
  Sentinel) the client sends each batch as `FCALL auditq_enqueue` and
  `WAIT N <ms>` in one round trip on one connection, and counts the batch's events as
  accepted only when N replicas confirmed it; `<ms>` is half of the batch's share of the
  capture bound (62 ms for a batch an awaited `capture` waits for, with a spool), so
  `capture` still answers in time. A batch no replica confirmed in time is spooled (it may
  also be queued already: its ids make the second delivery harmless), or, without a spool,
  refused (`capture` returns `None`, a failure line with `NotReplicated`; the event may still
  be stored). A replayed spool segment is deleted only after a replica confirmed it too (a
  write of its own before the `WAIT` makes the confirmation cover a batch an earlier replay
  queued). Sentinel promotes, among replicas of equal `replica-priority`, the one with the
  most replicated data, so what a replica confirmed survives the loss of the primary (with
  several replicas and N=1, not the loss of the primary and the confirming replica at once).
- **`AUDITQ_REDIS_WAIT_REPLICAS=auto`, the default for a Sentinel URL.** As `1` while a
  replica streams the primary's writes; when `WAIT 1` is not confirmed and the Sentinels see
  no replica up with its link to the primary `ok` (asked at most once a second), the batch is
  accepted at once, counted as unreplicated (`AuditClient.unreplicated`,
  `auditq_api_capture_unreplicated_total` in `/metrics`) with one warning a minute. So a
  primary promoted with no replica of its own, or whose only replica is still syncing, takes
  events within a second or two of the promotion instead of refusing them until a replica is
  back (`tests/faults/test_sentinel_auto.py`: the old primary lost for good, a strict `1`
  refusing meanwhile). Such events are as durable as the primary's append-only file until a
  replica streams again. A number keeps the strict promise below.
- **What is promised, with and without replicas.** *With replicas and a strict WAIT*
  (`AUDITQ_REDIS_WAIT_REPLICAS=1`, or `auto` while a replica streams): every event whose id
  `capture` returned, or that HTTP ingest answered `202` for, is on a replica or on the
  producer's disk, and survives the loss of the primary. While a replica streams but does
  not confirm in time (lagging past the bound), producers with a spool keep accepting into
  it and deliver once a replica confirms again; producers without one refuse (`None`, `503`
  from HTTP ingest when its spool is off) — the trade Redis's own `min-replicas-to-write`
  makes; with a strict number that holds as well while no replica streams at all (the
  failover row above ran with `auto`). *Without replicas, or with
  `AUDITQ_REDIS_WAIT_REPLICAS=0`*: an accepted event is as durable as the primary's
  append-only file (see above); with replicas but no WAIT, a failover may lose the enqueues
  of about the last replication lag (usually well under a second), each of them an event a
  producer was told was accepted. The worker needs nothing of this: a job it took is stored
  idempotently, and a job whose end the promoted replica missed is run again, storing nothing
  twice. Producers in other languages get the same promise by sending `WAIT 1 <ms>` on the
  connection of their `FCALL` and treating a reply below 1 as not accepted.
- **Following the primary.** Every process (producers, the API and its HTTP ingest, the CLI,
  the worker) connects through `service/connections.py`: each new connection asks the
  Sentinels where the primary is, a connection to a dead or demoted primary fails (`READONLY`
  becomes a connection error) and is made again to the new one under the caller's retry
  policy. The worker treats the failover as any Redis outage: its poll loop waits, its pool
  retries with backoff, jobs in flight finish or are rerun. No process is restarted.
- **Awaited `capture` says when it cannot know.** `capture` waits at most its bound (250 ms).
  An event still in the client's buffer when the bound passes is taken back out, never sent,
  and reported failed (`TimeoutError`). An event whose batch is already on the wire (Redis may
  have run the script and not yet answered) is reported with its own error name,
  `DeliveryUncertain`, and counted apart (`client.uncertain`): it may still be stored, so a
  caller that retries resends the same event (same id, stored once), never a new one. A batch
  send that times out is `DeliveryUncertain` for its `capture_nowait` events too. Shown by
  `tests/producer/test_client.py` (a proxy holds Redis's replies back past the bound: the event
  on the wire arrives and is stored once, the one behind it is never sent); such events are
  never counted as accepted here.
- **Tokens across a PostgreSQL outage.** The API keeps each token it verified for 5 s before
  asking PostgreSQL again (so a revocation takes effect within 5 s on every replica); when
  PostgreSQL does not answer (each lookup bounded to 1 s, pool wait included), a token
  verified in the last 5 minutes still works unless `auditq tokens revoke` announced it revoked
  in Redis, which every replica then consults. HTTP ingest therefore refuses nothing while
  PostgreSQL is down; a token no replica verified lately gets `503`. In the revocation test
  (`tests/faults/test_auth_faults.py`) a revoked token was refused after 5.1 s, and after 4.9 s
  when PostgreSQL was stopped right after the revocation.
- **Ctrl-C.** A terminal sends SIGINT to its whole foreground process group. The embedded
  Valkey is started in a session of its own (`service/embedded/valkey_process.py`; `pg_ctl` puts
  PostgreSQL in one too), so it no longer dies at once while the worker and the API still need
  it: `auditq run` stops the demo producer (flushing it), the API, the worker, and only then
  the servers. A Ctrl-C while the stack starts is caught from the first moment (and `initdb`,
  `pg_ctl` and `psql` run in sessions of their own, so it cannot cut them): the stack comes up,
  then stops cleanly. A stopping worker takes no job once its stop began (a poll halfway through
  taking one is waited for, and the breaker cannot re-enable picking), so no job runs into
  arq's close; without Redis, arq's close is bounded and the worker still exits within its
  grace (20 s; 5.3 s in `tests/faults/test_stop_faults.py`, where it took 11.7 s and ended in
  a traceback before).
- **Worker.** Every write is idempotent (`ON CONFLICT (id, ts) DO NOTHING`), so a job rerun
  after a killed worker stores nothing twice; PostgreSQL being away (stopped, crashed, out of
  connections) opens a breaker that holds jobs without burning attempts; a row PostgreSQL
  refuses is isolated by bisection and only that event is dead-lettered. Redis away: the
  worker's commands retry connecting, and its poll loop waits for Redis however long it
  takes (a job whose end could not be recorded is run again later, storing nothing twice).

## Bugs this matrix found (fixed)

- **A Redis restart stopped the worker for good.** redis-py retries a failed *connect* only
  for the errors it is told to, and a refused connection is a bare `OSError` at that point;
  the first poll after Redis went away raised, and arq ends its worker on any error of its
  poll loop (once also on a `WatchError` that redis-py raises for a connection lost while
  WATCHing). The queue stayed intact, but nothing was stored until someone restarted the
  worker. Fixed in `workers/runner.py`: `OSError` is retried, and the worker's poll loop
  waits out any Redis failure, giving back the job slot arq takes for a job it could not
  start.
- **A stopping worker started jobs into arq's close.** A poll that had read job ids just
  before the stop went on to start them after the running jobs were counted; arq's close then
  closed the pools under them, a job failed with an `AttributeError` traceback, and its
  in-progress key left it unrun until the key expired (a 39 s drain on the next start). Found
  by the Ctrl-C scenario; fixed in `workers/runner.py` (`stop_picking`).
- **The first and last instants were stored as `-infinity` / `infinity`.** asyncpg encodes
  `0001-01-01T00:00:00Z` and `9999-12-31T23:59:59.999999Z` as PostgreSQL's infinities, so
  such an event was stored with another `ts` and read back without a time zone. They are
  now refused as out of range (`service/events.py`), at the producer, at HTTP ingest, and in
  the worker (dead letter) for Lua producers.
"""


def _row(title: str, figures: Figures) -> str:
    drain = "n/a" if figures.drain_s is None else f"{figures.drain_s:.1f}"
    return (
        f"| {title} | {figures.accepted} | {figures.stored} | {figures.dead_lettered} | "
        f"{figures.duplicated} | {figures.lost} | {drain} | {figures.notes} |"
    )


def render(rows: Mapping[str, Figures], *, when: datetime, cores: int, wall_s: float) -> str:
    """The whole of docs/reliability.md."""
    lines = [_row(SCENARIOS[key][0], rows[key]) for key in SCENARIOS if key in rows]
    scenarios = "\n".join(f"- **{title}**: {how}." for title, how in SCENARIOS.values())
    header = HEADER.format(when=when.strftime("%Y-%m-%d %H:%M UTC"), cores=cores, wall=wall_s)
    return header + "\n".join(lines) + "\n" + FOOTER.format(scenarios=scenarios)


class FaultReport:
    """The figures of each scenario run in this session."""

    def __init__(self) -> None:
        self.rows: dict[str, Figures] = {}
        self.busy_s = 0.0  # wall time of the fault tests, setup and teardown included

    def add(self, figures: Figures) -> None:
        assert figures.scenario in SCENARIOS, f"unknown scenario {figures.scenario!r}"
        self.rows[figures.scenario] = figures
        print(figures)  # shown with -s, and with the report of a failed scenario

    def complete(self) -> bool:
        return set(self.rows) == set(SCENARIOS)
