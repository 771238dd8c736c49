// The client against a real Redis (the suite's embedded Valkey: AUDITQ_TEST_REDIS_URL). What
// it queued is read back here; the stored rows are checked by tests/producer/test_node_client.py
// from the report each test appends to (AUDITQ_TEST_REPORT).
import assert from "node:assert/strict";
import { appendFileSync } from "node:fs";
import { createServer } from "node:net";
import { after, before, describe, test } from "node:test";

import express from "express";
import Fastify from "fastify";
import { Redis } from "ioredis";

import {
  AuditClient,
  FAILURE_PREFIX,
  auditContext,
  fastifyAuditContext,
  setActor,
} from "../dist/index.js";

const REDIS_URL = process.env.AUDITQ_TEST_REDIS_URL;
const QUEUE = process.env.AUDITQ_TEST_QUEUE ?? `node-test-${process.pid}`;
const REPORT = process.env.AUDITQ_TEST_REPORT;
// Clients whose captures must succeed get a bound a loaded machine cannot miss: the default
// 250 ms is the promise of "never waits long", tested with a Redis that is down.
const LIVE = { captureTimeoutMs: 10_000 };
const UUID7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

if (!REDIS_URL) throw new Error("set AUDITQ_TEST_REDIS_URL (make test does)");

/** Tell the Python side which row to expect in the store, with which values. */
function expectStored(row) {
  if (REPORT) appendFileSync(REPORT, `${JSON.stringify(row)}\n`);
}

function collectingLogger() {
  const lines = [];
  return { lines, error: (line) => lines.push(line) };
}

function failurePayload(line) {
  assert.ok(line.startsWith(FAILURE_PREFIX), line);
  return JSON.parse(line.slice(FAILURE_PREFIX.length));
}

/** A loopback port nothing listens on: a Redis that is down. */
async function deadPort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

let redis;
before(() => {
  redis = new Redis(REDIS_URL);
});
after(async () => {
  await redis.quit();
});

/** Every event queued in `queue`, from the arq jobs the enqueue function wrote. */
async function queuedEvents(queue) {
  const events = [];
  const jobs = await redis.zrange(queue, 0, -1);
  for (const taskId of jobs) {
    const job = JSON.parse(await redis.get(`arq:job:${taskId}`));
    const payload = JSON.parse(job.a[0]);
    events.push(...(Array.isArray(payload) ? payload : [payload]));
  }
  return { events, jobs: jobs.length };
}

/** What the queue's jobs hold, as Redis keeps it (every byte a secret could hide in). */
async function rawQueued(queue) {
  const jobs = await redis.zrange(queue, 0, -1);
  const raw = [];
  for (const taskId of jobs) raw.push(await redis.get(`arq:job:${taskId}`));
  return raw.join("\n");
}

async function dropQueue(queue) {
  const ids = await redis.zrange(queue, 0, -1);
  await redis.del(queue, `auditq:open-job:${queue}`, ...ids.map((taskId) => `arq:job:${taskId}`));
}

describe("capture", () => {
  test("resolves to a UUIDv7 id, and the event is queued with it", async () => {
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue: QUEUE });
    const id = await client.capture({
      action: "node.captured",
      actor: { id: "u-1", type: "user" },
      entity: { type: "project", id: "42" },
      metadata: { plan: "pro" },
    });
    await client.close();
    assert.match(id, UUID7);
    const { events } = await queuedEvents(QUEUE);
    const event = events.find((e) => e.id === id);
    assert.equal(event.action, "node.captured");
    assert.ok(Math.abs(Date.parse(event.ts) - Date.now()) < 60_000);
    expectStored({ id, action: "node.captured", actor_id: "u-1", entity_id: "42", metadata: { plan: "pro" } });
  });

  test("keeps the id and ts an event brings (a resend is stored once)", async () => {
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue: QUEUE });
    const own = { id: "01890a5d-ac96-774b-bcce-b302099a8057", ts: "2026-01-02T03:04:05.000Z" };
    const id = await client.capture({ action: "node.resent", ...own });
    await client.close();
    assert.equal(id, own.id);
    const { events } = await queuedEvents(QUEUE);
    const event = events.find((e) => e.id === own.id);
    assert.equal(event.ts, own.ts);
    assert.equal(Object.keys(event).filter((k) => k === "id").length, 1);
  });

  test("redacts secrets by the shared rules before the event leaves the process", async () => {
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue: QUEUE, redactExtraKeys: ["ssn"] });
    const id = await client.capture({
      action: "node.redacted",
      metadata: {
        password: "hunter2",
        userPassword: "hunter3",
        nested: { Authorization: "Bearer abc.def.ghi", apiKey: 12345 },
        user_ssn: "123-45-6789",
        token_count: 3,
        note: "callback https://bob:s3cr3t@example.org/x?access_token=zzz",
        aws: "AKIAIOSFODNN7REALKEY",
      },
      changes: [{ field: "password", old: "a", new: "b" }, { field: "plan", old: "free", new: "pro" }],
    });
    await client.close();
    const { events } = await queuedEvents(QUEUE);
    const event = events.find((e) => e.id === id);
    const expected = {
      password: "[REDACTED]",
      userPassword: "[REDACTED]",
      nested: { Authorization: "[REDACTED]", apiKey: "[REDACTED]" },
      user_ssn: "[REDACTED]",
      token_count: 3,
      note: "callback https://bob:[REDACTED]@example.org/x?access_token=[REDACTED]",
      aws: "[REDACTED]",
    };
    assert.deepEqual(event.metadata, expected);
    assert.deepEqual(event.changes, [
      { field: "password", old: "[REDACTED]", new: "[REDACTED]" },
      { field: "plan", old: "free", new: "pro" },
    ]);
    assert.ok(!JSON.stringify(events).includes("hunter"));
    expectStored({ id, action: "node.redacted", metadata: expected });
  });

  test("masks card numbers to their last four as the Python side does; other digits stay", async () => {
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue: QUEUE });
    const clean = {
      not_luhn: "4111111111111112",
      order: "order 4111-1111-1111-1112 refused",
      ts: "2026-01-02T03:04:05.000Z",
      epoch_ms: 1765432101234,
      epoch_us: 1765432101234563, // Luhn-valid, but no card starts with 1
      epoch_us_text: "at 1765432101234563",
      ref: "01890a5d-ac96-774b-bcce-b302099a8057",
      phone: "+49 30 1234567",
      amount: 4111111111111112,
    };
    const id = await client.capture({
      action: "node.paid",
      entity: { type: "payment", id: "p-1", name: "card 5500000000000004" },
      metadata: {
        spaced: "paid with 4111 1111 1111 1111 today",
        dashed: "6011-1111-1111-1117",
        plain: "4111111111111111",
        amex: "3782 822463 10005",
        short: "visa 4222222222222.",
        number: 4111111111111111,
        list: ["x", "5500 0000 0000 0004"],
        "4111111111111111": "as a key",
        ...clean,
      },
      changes: [{ field: "pan", old: "4111111111111111", new: "5500-0000-0000-0004" }],
      presentation: { code: "audit.node.paid", params: { card: "4111 1111 1111 1111" } },
    });
    await client.close();
    const { events } = await queuedEvents(QUEUE);
    const event = events.find((e) => e.id === id);
    const metadata = {
      spaced: "paid with **** **** **** 1111 today",
      dashed: "****-****-****-1117",
      plain: "************1111",
      amex: "**** ****** *0005",
      short: "visa *********2222.",
      number: "************1111",
      list: ["x", "**** **** **** 0004"],
      "************1111": "as a key",
      ...clean,
    };
    assert.deepEqual(event.metadata, metadata);
    assert.equal(event.entity.name, "card ************0004");
    assert.deepEqual(event.changes, [{ field: "pan", old: "************1111", new: "****-****-****-0004" }]);
    assert.deepEqual(event.presentation.params, { card: "**** **** **** 1111" });
    const queued = JSON.stringify(events.filter((e) => e.id === id));
    for (const card of ["4111111111111111", "4111 1111", "5500000000000004", "6011-1111", "822463"]) {
      assert.ok(!queued.includes(card), card);
    }
    expectStored({ id, action: "node.paid", entity_id: "p-1", metadata });
  });

  test("a failure line masks the card numbers it would carry", async () => {
    const logger = collectingLogger();
    const client = new AuditClient(REDIS_URL, { queue: QUEUE, logger });
    const event = { action: "paid 4111 1111 1111 1111", entity: { type: "card", id: "5500000000000004" } };
    assert.equal(await client.capture(event), null);
    await client.close();
    assert.equal(logger.lines.length, 1);
    const payload = failurePayload(logger.lines[0]);
    assert.equal(payload.entityId, "************0004");
    assert.ok(payload.errorMessage.includes("paid **** **** **** 1111"), payload.errorMessage);
    assert.ok(!logger.lines[0].includes("4111") && !logger.lines[0].includes("5500"), logger.lines[0]);
  });

  test("never rejects and answers null in bounded time when Redis is down", async () => {
    const logger = collectingLogger();
    const port = await deadPort();
    const client = new AuditClient(`redis://127.0.0.1:${port}/0`, { queue: QUEUE, logger });
    const started = performance.now();
    const results = await Promise.all([
      client.capture({ action: "node.lost", actor: { id: "u-9", type: "user" } }),
      client.capture({ action: "node.lost" }),
    ]);
    const elapsed = performance.now() - started;
    await client.close();
    assert.deepEqual(results, [null, null]);
    assert.ok(elapsed < 2000, `answered after ${elapsed} ms`); // the bound is 250 ms; slack for load
    assert.equal(logger.lines.length, 2);
    const payload = failurePayload(logger.lines[0]);
    assert.deepEqual(Object.keys(payload), [
      "action", "entityType", "entityId", "userId", "requestId", "errorName", "errorMessage",
    ]);
    assert.equal(payload.action, "node.lost");
    assert.equal(payload.userId, "u-9");
    assert.ok(!logger.lines[0].includes("\n") && !logger.lines[0].includes("    at "));
  });

  test("bad input is a failure line and null, never an exception; its secrets redacted", async () => {
    const logger = collectingLogger();
    const client = new AuditClient(REDIS_URL, { queue: QUEUE, logger });
    const circular = { action: "node.circular", metadata: {} };
    circular.metadata.self = circular.metadata;
    assert.equal(await client.capture({ action: "password=hunter2 not an action" }), null);
    assert.equal(await client.capture(null), null);
    assert.equal(await client.capture(circular), null);
    assert.doesNotThrow(() => client.captureNowait(42));
    assert.equal(
      await client.capture({ action: "node.too_big", metadata: { blob: "x".repeat(70_000) } }),
      null,
    );
    await client.close();
    const names = logger.lines.map((line) => failurePayload(line).errorName);
    assert.deepEqual(names, ["InvalidEvent", "InvalidEvent", "InvalidEvent", "InvalidEvent", "InvalidEvent"]);
    assert.ok(!logger.lines.join("\n").includes("hunter2"), logger.lines[0]);
  });

  test("the default logger is console.error, with the same line", async () => {
    const original = console.error;
    const lines = [];
    console.error = (line) => lines.push(line);
    try {
      const client = new AuditClient(REDIS_URL, { ...LIVE, queue: QUEUE });
      client.captureNowait({ action: "Not.Valid" });
      await client.close();
    } finally {
      console.error = original;
    }
    assert.equal(lines.length, 1);
    assert.equal(failurePayload(lines[0]).errorName, "InvalidEvent");
  });
});

describe("captureNowait", () => {
  test("returns at once, sends in batches, and close() flushes every event", async () => {
    const queue = `${QUEUE}-batch`;
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue });
    const count = 3000;
    for (let i = 0; i < count; i++) {
      client.captureNowait({ action: "node.batched", entity: { type: "item", id: String(i) } });
    }
    await client.close();
    const { events, jobs } = await queuedEvents(queue);
    assert.equal(events.length, count);
    assert.deepEqual(new Set(events.map((e) => e.entity.id)).size, count);
    assert.ok(jobs <= count / 100, `${jobs} jobs for ${count} events`); // batches, not one per event
    assert.equal(client.stats().sent, count);
    // Each id a UUIDv7 of its own whose millisecond is the event's ts (the ids are made here).
    assert.equal(new Set(events.map((e) => e.id)).size, count);
    for (const event of events) {
      assert.match(event.id, UUID7);
      const ms = parseInt(event.id.slice(0, 8) + event.id.slice(9, 13), 16);
      assert.equal(ms, Date.parse(event.ts), `${event.id} made at ${event.ts}`);
    }
    const ids = await redis.zrange(queue, 0, -1);
    await redis.del(queue, `auditq:open-job:${queue}`, ...ids.map((taskId) => `arq:job:${taskId}`));
  });

  test("keeps bounded memory: beyond the buffer, events are dropped, counted and logged", async () => {
    const logger = collectingLogger();
    const port = await deadPort();
    const client = new AuditClient(`redis://127.0.0.1:${port}/0`, {
      queue: QUEUE,
      logger,
      bufferMaxEvents: 10,
      flushIntervalMs: 60_000, // nothing leaves before close
    });
    for (let i = 0; i < 25; i++) client.captureNowait({ action: "node.overflow" });
    assert.equal(client.stats().dropped, 15);
    const names = logger.lines.map((line) => failurePayload(line).errorName);
    assert.deepEqual(names, Array(15).fill("BufferFull"));
    await client.close(1000);
  });

  test("after close, an event is refused with a failure line", async () => {
    const logger = collectingLogger();
    const client = new AuditClient(REDIS_URL, { queue: QUEUE, logger });
    await client.close();
    assert.equal(await client.capture({ action: "node.late" }), null);
    client.captureNowait({ action: "node.late" });
    assert.deepEqual(
      logger.lines.map((line) => failurePayload(line).errorName),
      ["ClientClosed", "ClientClosed"],
    );
  });
});

describe("captureNowait: a snapshot in the call, redacted at batch time", () => {
  test("a caller that changes its event after captureNowait returns changes nothing queued", async () => {
    // The event is encoded in the call: what the caller does to its object afterwards (a
    // secret put in, fields changed or removed) never reaches Redis.
    const queue = `${QUEUE}-mutated`;
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue });
    const event = {
      action: "node.snapshot",
      actor: { id: "u-7", type: "user" },
      entity: { type: "doc", id: "d-1" },
      metadata: { plan: "pro", tags: ["a"], nested: { n: 1 } },
      changes: [{ field: "plan", old: "free", new: "pro" }],
    };
    client.captureNowait(event);
    event.action = "node.changed";
    event.metadata.password = "hunter2-after";
    event.metadata.plan = "Bearer Zq8vR2kLm4Tn6Wp1Zq8vR2kLm4Tn6Wp1";
    event.metadata.tags.push("AKIAIOSFODNN7REALKEY");
    event.metadata.nested.n = 2;
    event.changes[0].field = "password";
    event.changes[0].new = "hunter3-after";
    event.entity.id = "token=hunter4-after";
    delete event.actor;
    event.id = "01890a5d-ac96-774b-bcce-b302099a8057";
    await client.close();
    const raw = await rawQueued(queue);
    const { events } = await queuedEvents(queue);
    assert.equal(events.length, 1);
    const { id, ts, ...rest } = events[0];
    assert.match(id, UUID7);
    assert.ok(ts);
    assert.deepEqual(rest, {
      action: "node.snapshot",
      actor: { id: "u-7", type: "user" },
      entity: { type: "doc", id: "d-1" },
      metadata: { plan: "pro", tags: ["a"], nested: { n: 1 } },
      changes: [{ field: "plan", old: "free", new: "pro" }],
    });
    for (const secret of ["hunter", "Zq8vR2", "AKIA"]) assert.ok(!raw.includes(secret), secret);
    await dropQueue(queue);
  });

  test("secrets in every planted shape never reach Redis, and close() flushes every event", async () => {
    const queue = `${QUEUE}-planted`;
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue, redactExtraKeys: ["ssn"] });
    const planted = [
      { password: "NODEPLANT-k1" },
      { nested: { Authorization: "Bearer NODEPLANT-k2-abcdefghijklmnop" } },
      { user_ssn: "NODEPLANT-k3" },
      { headers: [["X-Api-Key", "NODEPLANT-v1"], ["Accept", "json"]] },
      { env: { Name: "DB_PASSWORD", Value: "NODEPLANT-v2" } },
      { pair: ["password", "NODEPLANT-v5"] },
      { argv: ["pg_dump", "--password", "NODEPLANT-a1", "prod"] },
      { note: "pg_dump --password NODEPLANT-c1 prod" },
      { note: "callback https://bob:NODEPLANT-u1@example.org/x" },
      { note: "next=https%253A%252F%252Fapp%252F%253Fpassword%253DNODEPLANT-d1" },
      { note: "<soap><wsse:Password>NODEPLANT-p4</wsse:Password></soap>" },
      { note: "credentials:\n  - NODEPLANT-p5a\nuser: ann" },
      { note: '{"value": "NODEPLANT-p3", "name": "client_secret"}' },
      { text: "x", field: "auth", value: "NODEPLANT-f1" },
      { card: "paid with 4111 1111 1111 1111 today", pan: 4111111111111111 },
    ];
    const count = 2000;
    for (let i = 0; i < count; i++) {
      const metadata = planted[i % planted.length];
      client.captureNowait({
        action: "node.planted",
        entity: { type: "item", id: String(i) },
        metadata,
        changes: [{ field: "password", old: "NODEPLANT-o1", new: "NODEPLANT-n1" }],
      });
    }
    await client.close();
    const raw = await rawQueued(queue);
    assert.ok(!raw.includes("NODEPLANT"), raw.slice(raw.indexOf("NODEPLANT") - 200, raw.indexOf("NODEPLANT") + 50));
    for (const card of ["4111 1111 1111 1111", "4111111111111111"]) assert.ok(!raw.includes(card), card);
    const { events } = await queuedEvents(queue);
    assert.equal(events.length, count);
    assert.equal(new Set(events.map((e) => e.entity.id)).size, count);
    assert.equal(client.stats().sent, count);
    const byId = new Map(events.map((e) => [Number(e.entity.id), e]));
    assert.deepEqual(byId.get(0).metadata, { password: "[REDACTED]" });
    assert.deepEqual(byId.get(14).metadata, { card: "paid with **** **** **** 1111 today", pan: "************1111" });
    assert.deepEqual(byId.get(3).changes, [{ field: "password", old: "[REDACTED]", new: "[REDACTED]" }]);
    await dropQueue(queue);
  });

  test("names spelled with Kelvin's K or a Turkish I, escaped separators, quoted keys and symbols before a colon never reach Redis", async () => {
    // Attack (service/redaction.py since 2026-12-07 reads these; the Node client did not):
    // through captureNowait and capture, in text fields, metadata and keys, beside clean events.
    const queue = `${QUEUE}-spellings`;
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue });
    const texts = [
      "to\u212aen=NODEPLANT-k1",
      "SESS\u0130ON_ID=NODEPLANT-k2",
      "credent\u0131als: NODEPLANT-k3",
      "DB_PASSWORD\\=NODEPLANT-e1",
      "api_key\\: NODEPLANT-e2",
      '{"\\"password\\"": "NODEPLANT-e3"}',
      "🔒password🔒: NODEPLANT-s1",
      "token \u279c: NODEPLANT-s2",
      "secret\u26a0\ufe0f: NODEPLANT-s3",
    ];
    const keys = ["to\u212aen", "SESS\u0130ON_ID", "credent\u0131als"];
    const ids = [];
    for (const [i, text] of texts.entries()) {
      const key = keys[i % keys.length];
      const event = {
        action: "node.spelled",
        tenant: text,
        entity: { type: "item", id: String(i), name: text },
        metadata: { note: text, [key]: `NODEPLANT-m${i}`, nested: [{ [key]: `NODEPLANT-n${i}` }] },
      };
      client.captureNowait({ action: "node.clean", metadata: { note: "quarterly flamingo report" } });
      if (i % 2 === 0) client.captureNowait(event);
      else ids.push(await client.capture(event));
    }
    await client.close();
    const raw = await rawQueued(queue);
    assert.ok(!raw.includes("NODEPLANT"), raw.slice(raw.indexOf("NODEPLANT") - 200, raw.indexOf("NODEPLANT") + 50));
    const { events } = await queuedEvents(queue);
    assert.equal(events.length, 2 * texts.length);
    assert.ok(ids.every((id) => events.some((e) => e.id === id)));
    const first = events.find((e) => e.entity?.id === "0");
    assert.deepEqual(first.metadata, {
      note: "to\u212aen=[REDACTED]",
      "to\u212aen": "[REDACTED]",
      nested: [{ "to\u212aen": "[REDACTED]" }],
    });
    await dropQueue(queue);
  });

  test("in a batch, the events around one with a secret are sent as captured", async () => {
    // The pre-check runs over a whole batch: each flagged event is redacted, its neighbours
    // (clean, or flagged by a stem and left as they are by the rules) are sent as captured.
    const queue = `${QUEUE}-mixed`;
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue });
    const count = 1200;
    const clean = (i) => ({ note: `quarterly report ${i}`, tail: "pass" }); // a stem no rule acts on
    for (let i = 0; i < count; i++) {
      const metadata = i % 7 === 3 ? { note: `pg_dump --password NODEPLANT-${i} prod` } : clean(i);
      client.captureNowait({ action: "node.mixed", entity: { type: "item", id: String(i) }, metadata });
    }
    await client.close();
    const raw = await rawQueued(queue);
    assert.ok(!raw.includes("NODEPLANT"));
    const { events } = await queuedEvents(queue);
    assert.equal(events.length, count);
    for (const event of events) {
      const i = Number(event.entity.id);
      const want = i % 7 === 3 ? { note: "pg_dump --password [REDACTED] prod" } : clean(i);
      assert.deepEqual(event.metadata, want, event.entity.id);
    }
    await dropQueue(queue);
  });

  test("an event that fails after the call is logged from its redacted snapshot", async () => {
    // Redis is down: each event fails at batch time. Its failure line names the event as it
    // was captured (not as the caller changed it since), its secrets redacted.
    const logger = collectingLogger();
    const port = await deadPort();
    const client = new AuditClient(`redis://127.0.0.1:${port}/0`, { queue: QUEUE, logger });
    const events = [
      { action: "node.lost", entity: { type: "doc", id: "token=NODEPLANT-e1" }, actor: { id: "u-1", type: "user" } },
      { action: "node.lost", entity: { type: "doc", id: "plain-2" }, request: { id: "Bearer NODEPLANT-e2-abcdefghijklmnop" } },
      { action: "node.lost", entity: { type: "doc", id: "plain-3" }, metadata: { password: "NODEPLANT-e3" } },
      { action: "node.lost", entity: { type: "doc", id: "plain-4" } },
    ];
    for (const event of events) client.captureNowait(event);
    assert.equal(logger.lines.length, 0); // nothing failed in the call
    for (const event of events) {
      event.entity.id = "changed password=NODEPLANT-after";
      event.actor = { id: "NODEPLANT-actor", type: "user" };
    }
    const pending = client.capture({ action: "node.lost", entity: { type: "doc", id: "AKIAIOSFODNN7REALKEY" } });
    assert.equal(await pending, null);
    await client.close(2000);
    assert.equal(logger.lines.length, 5, logger.lines.join("\n"));
    const payloads = logger.lines.map(failurePayload);
    assert.deepEqual(
      payloads.map((p) => [p.entityId, p.userId, p.requestId]).sort(),
      [
        ["[REDACTED]", null, null],
        ["plain-2", null, "Bearer [REDACTED]"],
        ["plain-3", null, null],
        ["plain-4", null, null],
        ["token=[REDACTED]", "u-1", null],
      ],
    );
    assert.ok(!logger.lines.join("\n").includes("NODEPLANT"), logger.lines.join("\n"));
  });

  test("an oversized event fails in the call; one that redaction makes too big fails at batch time", async () => {
    const logger = collectingLogger();
    const queue = `${QUEUE}-sizes`;
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue, logger, maxEventBytes: 400 });
    client.captureNowait({ action: "node.too_big", metadata: { blob: "x".repeat(500), password: "NODEPLANT-s1" } });
    assert.equal(logger.lines.length, 1); // in the call, before captureNowait returned
    assert.equal(failurePayload(logger.lines[0]).errorName, "InvalidEvent");
    // Under the limit as captured; over it once "p" is "[REDACTED]" (as the Python client
    // checks the size of the redacted event).
    const grown = { action: "node.grown", entity: { type: "doc", id: "g-1" }, metadata: { password: "p" } };
    // The id and ts take 76 bytes, `,"pad":""` 9: 398 bytes in all.
    grown.metadata.pad = "y".repeat(400 - Buffer.byteLength(JSON.stringify(grown)) - 87);
    client.captureNowait(grown);
    client.captureNowait({ action: "node.fits", metadata: { password: "NODEPLANT-s2" } });
    assert.equal(logger.lines.length, 1);
    await client.close();
    assert.equal(logger.lines.length, 2, logger.lines.join("\n"));
    const late = failurePayload(logger.lines[1]);
    assert.equal(late.errorName, "InvalidEvent");
    assert.equal(late.entityId, "g-1");
    assert.ok(!logger.lines.join("\n").includes("NODEPLANT"));
    const { events } = await queuedEvents(queue);
    assert.deepEqual(events.map((e) => [e.action, e.metadata.password]), [["node.fits", "[REDACTED]"]]);
    await dropQueue(queue);
  });
});

describe("request context", () => {
  test("Express: request id, client IP behind a trusted proxy, user agent, method, path, actor", async () => {
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue: QUEUE });
    const app = express();
    app.use(auditContext({ trustedProxies: ["127.0.0.1", "10.0.0.0/8"] }));
    app.use((req, _res, next) => {
      if (req.get("X-User")) setActor({ id: req.get("X-User"), type: "user" }); // the app's auth
      next();
    });
    app.put("/projects/:id", async (req, res) => {
      const id = await client.capture({ action: "project.updated", entity: { type: "project", id: req.params.id } });
      setTimeout(() => client.captureNowait({ action: "project.notified" }), 5); // after the response
      res.json({ id });
    });
    const server = app.listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
    const { port } = server.address();
    try {
      const response = await fetch(`http://127.0.0.1:${port}/projects/42?token=s3cr3t`, {
        method: "PUT",
        headers: {
          "X-Request-ID": "ex-1",
          "X-Forwarded-For": "198.51.100.9, 10.0.0.7",
          "User-Agent": "node-test/1",
          "X-User": "ada",
        },
      });
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("x-request-id"), "ex-1");
      const { id } = await response.json();
      assert.match(id, UUID7);
      const spoofed = await fetch(`http://127.0.0.1:${port}/projects/43`, {
        method: "PUT",
        headers: { "X-Request-ID": "x".repeat(129), "X-Real-IP": "203.0.113.1" },
      });
      const newId = spoofed.headers.get("x-request-id");
      assert.match(newId, /^[0-9a-f]{32}$/);
      await new Promise((resolve) => setTimeout(resolve, 50));
      await client.close();
      const request = { id: "ex-1", ip: "198.51.100.9", user_agent: "node-test/1", method: "PUT", path: "/projects/42" };
      const { events } = await queuedEvents(QUEUE);
      const mine = events.filter((e) => e.request?.id === "ex-1");
      assert.deepEqual(
        mine.map((e) => [e.action, e.actor?.id, e.request]).sort(),
        [
          ["project.notified", "ada", request],
          ["project.updated", "ada", request],
        ],
      );
      const other = events.find((e) => e.request?.id === newId);
      // The peer is a trusted proxy and names nobody in X-Forwarded-For: its X-Real-IP holds.
      assert.equal(other.request.ip, "203.0.113.1");
      assert.equal(other.actor, undefined);
      expectStored({ id, action: "project.updated", actor_id: "ada", entity_id: "42", request_id: "ex-1", ip: "198.51.100.9", user_agent: "node-test/1", method: "PUT", path: "/projects/42" });
    } finally {
      server.close();
    }
  });

  test("Express: a peer that is not a trusted proxy cannot choose its recorded IP", async () => {
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue: QUEUE });
    const app = express();
    app.use(auditContext({ trustedProxies: [] }));
    app.get("/", async (_req, res) => res.json({ id: await client.capture({ action: "node.spoofed" }) }));
    const server = app.listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
    try {
      const response = await fetch(`http://127.0.0.1:${server.address().port}/`, {
        headers: { "X-Forwarded-For": "198.51.100.77", "X-Real-IP": "198.51.100.78" },
      });
      const { id } = await response.json();
      await client.close();
      const { events } = await queuedEvents(QUEUE);
      assert.equal(events.find((e) => e.id === id).request.ip, "127.0.0.1");
    } finally {
      server.close();
    }
  });

  test("Fastify: the onRequest hook gives every capture the request's context", async () => {
    const client = new AuditClient(REDIS_URL, { ...LIVE, queue: QUEUE });
    const app = Fastify();
    app.decorateRequest("user", null);
    app.addHook("onRequest", async (request) => {
      request.user = { id: request.headers["x-user"] };
    });
    app.addHook(
      "onRequest",
      fastifyAuditContext({
        trustedProxies: "127.0.0.1",
        actorResolver: (request) => (request.user?.id ? { id: request.user.id, type: "user" } : undefined),
      }),
    );
    app.post("/reports/:id", async (request) => ({
      id: await client.capture({ action: "report.exported", entity: { type: "report", id: request.params.id } }),
    }));
    const response = await app.inject({
      method: "POST",
      url: "/reports/7",
      headers: { "x-request-id": "fy-1", "x-user": "grace", "user-agent": "fastify-test" },
      remoteAddress: "127.0.0.1",
    });
    await app.close();
    await client.close();
    assert.equal(response.statusCode, 200);
    assert.equal(response.headers["x-request-id"], "fy-1");
    const { id } = response.json();
    const { events } = await queuedEvents(QUEUE);
    const event = events.find((e) => e.id === id);
    assert.deepEqual(event.actor, { id: "grace", type: "user" });
    assert.deepEqual(event.request, { id: "fy-1", ip: "127.0.0.1", user_agent: "fastify-test", method: "POST", path: "/reports/7" });
    expectStored({ id, action: "report.exported", actor_id: "grace", request_id: "fy-1", path: "/reports/7" });
  });
});
