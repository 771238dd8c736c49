// TestPlanIt's audit pipeline, rebuilt for the benchmark on its own stack (Node + BullMQ + pg):
// the producer awaits one `queue.add` per event (attempts 3, exponential backoff from 5 s,
// removeOnComplete {age: 1 year, count: 100000}, removeOnFail {age: 90 days}); the worker
// (concurrency 10) writes one row per job with one INSERT, logging a line before and after,
// as TestPlanIt's auditLogWorker does. Rows go into auditq's own schema, so every system of
// the benchmark writes the same rows into the same table.
//
//   node testplanit.mjs worker   REDIS_URL DATABASE_URL
//   node testplanit.mjs produce  REDIS_URL RUN COUNT CONCURRENCY RATE OUT_JSON
//     RATE 0: as fast as the awaited adds go; otherwise events/s, paced.
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";
import pg from "pg";

const QUEUE = "audit-logs";
const DAY_S = 24 * 3600;
const JOB_OPTIONS = {
  attempts: 3,
  backoff: { type: "exponential", delay: 5000 },
  removeOnComplete: { age: 365 * DAY_S, count: 100000 },
  removeOnFail: { age: 90 * DAY_S },
};
const ACTIONS = ["document.viewed", "document.updated", "auth.login", "project.created"];

// An ioredis client, as TestPlanIt's valkeyConnection is (BullMQ needs no retry limit on it).
function connection(url) {
  return new IORedis(url, { maxRetriesPerRequest: null });
}

// The same event as bench/common.py makes, in TestPlanIt's job shape: {event, context, queuedAt}.
function makeJob(run, i) {
  const user = i % 500;
  return {
    event: {
      id: randomUUID(),
      ts: new Date().toISOString(),
      action: ACTIONS[i % ACTIONS.length],
      actor: { id: `user-${user}`, type: "user", name: `User ${user}`, email: `user${user}@example.com` },
      entity: { type: "document", id: `${run}-${i}`, name: `Document ${i}` },
      tenant: `tenant-${i % 20}`,
      request: {
        id: `req-${run}-${i}`, ip: "203.0.113.7", method: "POST", path: "/api/documents",
        user_agent: "bench/1.0", status: 200, duration_ms: 12.5,
      },
      changes: [{ field: "title", old: "Draft", new: `Report ${i}` }],
      metadata: { i, client: "bench", note: "quarterly flamingo report" },
      source: run,
    },
    context: null,
    queuedAt: new Date().toISOString(),
  };
}

const INSERT = `
INSERT INTO audit_log (
    id, ts, action, category, severity, outcome,
    actor_id, actor_type, actor_name, actor_email,
    entity_type, entity_id, entity_name, tenant,
    request_id, ip, user_agent, method, path, status, duration_ms,
    changes, metadata, presentation, source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
        $15, $16::inet, $17, $18, $19, $20, $21, $22::jsonb, $23::jsonb, $24::jsonb, $25)`;

async function worker(redisUrl, databaseUrl) {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 10 });
  const processor = async (job) => {
    const e = job.data.event;
    console.log(`[AuditLogWorker] Processing audit event: ${e.action} ${e.entity.type}:${e.entity.id}`);
    const r = e.request;
    await pool.query(INSERT, [
      e.id, e.ts, e.action, e.action.split(".")[0], "info", "success",
      e.actor.id, e.actor.type, e.actor.name, e.actor.email,
      e.entity.type, e.entity.id, e.entity.name, e.tenant,
      r.id, r.ip, r.user_agent, r.method, r.path, r.status, r.duration_ms,
      JSON.stringify(e.changes), JSON.stringify(e.metadata),
      JSON.stringify({ code: `audit.${e.action}`, params: {} }), e.source,
    ]);
    console.log(`[AuditLogWorker] Successfully logged: ${e.action} ${e.entity.type}:${e.entity.id}`);
  };
  const w = new Worker(QUEUE, processor, { connection: connection(redisUrl), concurrency: 10 });
  w.on("failed", (job, err) => console.error(`[AuditLogWorker] Job ${job?.id} failed:`, err));
  w.on("error", (err) => console.error("[AuditLogWorker] Worker error:", err));
  const stop = async () => {
    await w.close();
    await pool.end();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function produce(redisUrl, run, count, concurrency, rate, out) {
  const queue = new Queue(QUEUE, { connection: connection(redisUrl), defaultJobOptions: JOB_OPTIONS });
  await queue.waitUntilReady();
  const latencies = new Float64Array(count);
  let next = 0;
  let failed = 0;
  const started = Date.now();
  const t0 = performance.now();
  const capture = async (i) => {
    const data = makeJob(run, i);
    const e = data.event;
    const t = performance.now();
    try {
      // TestPlanIt's captureAuditEvent: one awaited add per event; the helper never throws.
      await queue.add("audit-event", data, {
        jobId: `${e.action}-${e.entity.type}-${e.entity.id}-${Date.now()}`,
      });
    } catch (err) {
      failed += 1;
      console.error("[AuditLog] Failed to queue audit event:", err.message);
    }
    latencies[i] = performance.now() - t;
  };
  const loop = async () => {
    while (next < count) {
      const i = next++;
      if (rate > 0) {
        const due = t0 + (i * 1000) / rate;
        const wait = due - performance.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      }
      await capture(i);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  const elapsed = (performance.now() - t0) / 1000;
  writeFileSync(
    out,
    JSON.stringify({
      started_at: started / 1000,
      elapsed_s: elapsed,
      failed,
      latencies_ms: Array.from(latencies),
      cpu_s: (process.cpuUsage().user + process.cpuUsage().system) / 1e6,
      peak_rss_kib: process.resourceUsage().maxRSS,
    }),
  );
  await queue.close();
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "worker") {
  await worker(args[0], args[1]);
} else if (mode === "produce") {
  const [redisUrl, run, count, concurrency, rate, out] = args;
  await produce(redisUrl, run, Number(count), Number(concurrency), Number(rate), out);
  process.exit(0);
} else {
  console.error("usage: testplanit.mjs worker|produce …");
  process.exit(2);
}
