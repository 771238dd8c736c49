// The Node client's cost and throughput (bench/producer_clients.py runs it beside the Python
// client's): per captureNowait call (CPU and wall µs, nothing awaited), and events/s from the
// first captureNowait to close() resolved, every event in Redis. Prints one JSON line.
//   REDIS_URL=redis://… QUEUE=bench CALLS=20000 EVENTS=200000 node bench/capture.mjs
import { Redis } from "ioredis";

import { AuditClient } from "../dist/index.js";

const ACTIONS = ["document.updated", "document.viewed", "auth.login", "project.created"];

/** The benchmark's event: bench/common.py event_fields, the same shape. */
export function eventFields(run, i) {
  const user = i % 500;
  return {
    action: ACTIONS[i % ACTIONS.length],
    actor: { id: `user-${user}`, type: "user", name: `User ${user}`, email: `user${user}@example.com` },
    entity: { type: "document", id: `${run}-${i}`, name: `Document ${i}` },
    tenant: `tenant-${i % 20}`,
    request: {
      id: `req-${run}-${i}`,
      ip: "203.0.113.7",
      method: "POST",
      path: "/api/documents",
      user_agent: "bench/1.0",
      status: 200,
      duration_ms: 12.5,
    },
    changes: [{ field: "title", old: "Draft", new: `Report ${i}` }],
    metadata: { i, client: "bench", note: "quarterly flamingo report" },
    source: run,
  };
}

const url = process.env.REDIS_URL;
const queue = process.env.QUEUE ?? "bench-node";
const calls = Number(process.env.CALLS ?? 20_000);
const total = Number(process.env.EVENTS ?? 200_000);
const YIELD_EVERY = 100; // a service's event loop runs other work between captures

async function perCall() {
  // A running service has its code compiled: as many calls first, into a queue of their own.
  const warm = new AuditClient(url, { queue: `${queue}-warmup`, bufferMaxEvents: calls + 1 });
  for (let i = 0; i < calls; i++) warm.captureNowait(eventFields("node-warmup", i));
  await warm.close(30_000);
  const client = new AuditClient(url, { queue, bufferMaxEvents: calls + 1, flushIntervalMs: 60_000 });
  const events = Array.from({ length: calls }, (_, i) => eventFields("node-call", i));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (const event of events) client.captureNowait(event);
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  await client.close(30_000);
  return { cpu_us: (cpu.user + cpu.system) / calls, wall_us: (wall * 1000) / calls };
}

async function throughput() {
  const client = new AuditClient(url, { queue });
  const events = Array.from({ length: total }, (_, i) => eventFields("node", i));
  await client.capture(eventFields("node-warmup", 0)); // connected, as a running service is
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < total; i++) {
    client.captureNowait(events[i]);
    if (i % YIELD_EVERY === YIELD_EVERY - 1) await new Promise((resolve) => setImmediate(resolve));
  }
  await client.close(60_000);
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  // CPU per event of the whole flow (capture, batching, sending): what bounds the events/s
  // of one process when it has a core to itself, whatever else loads the machine.
  const flowCpuUs = (cpu.user + cpu.system) / total;
  return { events_per_s: total / seconds, flow_cpu_us: flowCpuUs, seconds, stats: client.stats() };
}

async function queued() {
  const redis = new Redis(url);
  let events = 0;
  for (const taskId of await redis.zrange(queue, 0, -1)) {
    const job = await redis.get(`arq:job:${taskId}`);
    events += job.split('\\"action\\":').length - 1;
  }
  await redis.quit();
  return events;
}

const call = await perCall();
const flow = await throughput();
console.log(JSON.stringify({ ...call, ...flow, queued: await queued() }));
