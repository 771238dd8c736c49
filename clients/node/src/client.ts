// The producer: capture audit events and enqueue them in batches, never throwing to the caller.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";

import { Redis } from "ioredis";

import { contextActor, currentContext, type AuditContext } from "./context.js";
import { ACTION_MAX_CHARS, ACTION_PATTERN, type AuditEvent } from "./events.js";
import { failureLine } from "./failures.js";
import { Redactor } from "./redaction.js";

export const ENQUEUE_FUNCTION = "auditq_enqueue";
const ENQUEUE_SCRIPT = readFileSync(new URL("./enqueue.lua", import.meta.url), "utf8");
const SEND_TIMEOUT_FACTOR = 4; // capture timeouts per send: connect, a reconnect, the reply
const BATCH_MAX_BYTES = 1024 * 1024; // one enqueue call's payload at most (under AUDITQ_MAX_JOB_BYTES)
const VALID_ACTIONS_KEPT = 4096; // distinct actions remembered as valid
const CONNECT_TIMEOUT_MS = 10_000; // a connection attempt; sends are bounded apart
const LATE_TIMER_GRACES = 3; // send bounds granted again when the process was too busy to wait

export interface Logger {
  error(message: string): void;
}

export interface ClientOptions {
  /** The arq queue; default AUDITQ_QUEUE or "audit-logs". */
  queue?: string;
  /** `capture` resolves within this; default 250 ms. */
  captureTimeoutMs?: number;
  /** Events buffered at most; beyond, an event is dropped (and its failure line written). */
  bufferMaxEvents?: number;
  /** A batch leaves at most this long after its first event; default 5 ms. */
  flushIntervalMs?: number;
  /** Events per batch at most; default 500. */
  flushMaxEvents?: number;
  /** An encoded event's limit; default 64 KiB. */
  maxEventBytes?: number;
  /** Keys redacted besides auditq's rules (AUDITQ_REDACT_EXTRA_KEYS). */
  redactExtraKeys?: string[];
  /** Where failure lines go; default console.error. */
  logger?: Logger;
}

/** What the client counted since it started. */
export interface ClientStats {
  sent: number;
  failed: number;
  dropped: number;
}

class AuditqError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}
export class InvalidEvent extends AuditqError {}
export class BufferFull extends AuditqError {}
export class ClientClosed extends AuditqError {}
export class CaptureTimeout extends AuditqError {}
/** The event's batch was sent and no answer came in time: it may still be stored. */
export class DeliveryUncertain extends AuditqError {}

const QUEUED = 0;
const SENT = 1;
const DONE = 2;

interface Waiter {
  resolve(id: string | null): void;
  timer: NodeJS.Timeout | undefined;
}

interface Item {
  json: string; // the event as captured, encoded; redacted when its batch is sent
  redacted: boolean;
  id: string;
  madeId: boolean; // the id was made at capture (else the event brings it)
  ts: string | undefined; // the time of capture, when the event brings no ts
  state: number;
  waiter: Waiter | undefined;
}

const ID_HEAD_CHARS = 44; // "id":"<36 characters>",
const TS_HEAD_CHARS = 8; // "ts":"",

/** The characters of the id and ts written in front of an item's event. */
function headChars(item: Item): number {
  return (item.madeId ? ID_HEAD_CHARS : 0) + (item.ts === undefined ? 0 : TS_HEAD_CHARS + item.ts.length);
}

const validActions = new Set<string>();

// The random ends of the ids ("-7xxx-Vxxx-xxxxxxxxxxxx": version 7, the variant, 74 random
// bits), made from the system's random bytes a pool at a time (one getrandom call per id cost
// more than the rest of a capture on a loaded machine): an id is then its millisecond and a
// slice of the pool.
const ID_TAIL_CHARS = 23;
const ID_TAILS_PER_POOL = 512;
const VARIANT = "89ab"; // the variant's bits (10) and two random bits
let idTails = "";
let idTailOffset = 0;

function fillIdTails(): void {
  const hex = randomBytes(ID_TAILS_PER_POOL * 10).toString("hex"); // 20 digits a tail
  const tails = new Array<string>(ID_TAILS_PER_POOL);
  for (let i = 0, o = 0; i < ID_TAILS_PER_POOL; i++, o += 20) {
    const variant = VARIANT[parseInt(hex[o + 3]!, 16) & 3]!;
    tails[i] = `-7${hex.slice(o, o + 3)}-${variant}${hex.slice(o + 4, o + 7)}-${hex.slice(o + 7, o + 19)}`;
  }
  idTails = tails.join("");
  idTailOffset = 0;
}

// The time of capture, made once per millisecond (events come many a millisecond): RFC 3339
// for `ts`, and the 48-bit millisecond count that opens a UUIDv7 ("xxxxxxxx-xxxx").
let lastMs = 0;
let lastIso = "";
let lastIdTime = "";

function tick(): void {
  const now = Date.now();
  if (now !== lastMs) {
    lastMs = now;
    lastIso = new Date(now).toISOString();
    const hex = now.toString(16).padStart(12, "0");
    lastIdTime = `${hex.slice(0, 8)}-${hex.slice(8)}`;
  }
}

/** A new UUIDv7 (RFC 9562) of the current millisecond (call `tick` first). */
function newId(): string {
  if (idTailOffset === idTails.length) fillIdTails();
  const tail = idTails.slice(idTailOffset, idTailOffset + ID_TAIL_CHARS);
  idTailOffset += ID_TAIL_CHARS;
  return lastIdTime + tail;
}

function envList(name: string): string[] {
  return (process.env[name] ?? "").split(",").map((s) => s.trim()).filter(Boolean);
}

/** Enqueue audit events into auditq's Redis queue in batches; never throw to the caller. */
export class AuditClient {
  readonly queue: string;
  private readonly redis: Redis;
  private readonly redactor: Redactor;
  private readonly logger: Logger;
  private readonly captureTimeoutMs: number;
  private readonly bufferMaxEvents: number;
  private readonly flushIntervalMs: number;
  private readonly flushMaxEvents: number;
  private readonly maxEventBytes: number;
  private readonly sendTimeoutMs: number;
  private buffer: Item[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushSoon = false; // a drain is set for the end of this turn
  private sending: Promise<void> | undefined;
  private closing = false;
  private functions = true; // FCALL, else EVAL of the shipped script (a Redis before 7)
  private readonly counts: ClientStats = { sent: 0, failed: 0, dropped: 0 };

  /** Make a client of the Redis at `redisUrl` (no I/O until the first event). */
  constructor(redisUrl: string, options: ClientOptions = {}) {
    this.queue = options.queue ?? (process.env.AUDITQ_QUEUE || "audit-logs");
    this.captureTimeoutMs = options.captureTimeoutMs ?? 250;
    this.bufferMaxEvents = options.bufferMaxEvents ?? 100_000;
    this.flushIntervalMs = options.flushIntervalMs ?? 5;
    this.flushMaxEvents = options.flushMaxEvents ?? 500;
    this.maxEventBytes = options.maxEventBytes ?? 64 * 1024;
    this.logger = options.logger ?? console;
    this.redactor = new Redactor(options.redactExtraKeys ?? envList("AUDITQ_REDACT_EXTRA_KEYS"));
    for (const [name, value] of Object.entries({
      captureTimeoutMs: this.captureTimeoutMs,
      bufferMaxEvents: this.bufferMaxEvents,
      flushIntervalMs: this.flushIntervalMs,
      flushMaxEvents: this.flushMaxEvents,
      maxEventBytes: this.maxEventBytes,
    })) {
      if (!(value > 0)) throw new RangeError(`${name} must be positive, not ${value}`);
    }
    if (!this.queue) throw new RangeError("queue must not be empty");
    this.sendTimeoutMs = this.captureTimeoutMs * SEND_TIMEOUT_FACTOR;
    this.redis = new Redis(redisUrl, {
      lazyConnect: true,
      // No commandTimeout: its timer counts time this process spent busy as Redis's (see
      // `enqueue`, which bounds each send itself).
      connectTimeout: CONNECT_TIMEOUT_MS,
      // No INFO at connect: the producer user may run FCALL and little else, and ioredis
      // would print a warning of the refused INFO on every start.
      enableReadyCheck: false,
      maxRetriesPerRequest: 1,
      retryStrategy: (times) => Math.min(times * 50, 1000),
    });
    // Connection errors surface per batch, as failure lines; without a listener ioredis
    // would print each reconnect attempt.
    this.redis.on("error", () => undefined);
  }

  /** Enqueue one event; resolve to its id, or null (failure line written). Never rejects. */
  capture(event: AuditEvent): Promise<string | null> {
    let item: Item;
    try {
      item = this.prepare(event);
    } catch (error) {
      this.fail(event, error, currentContext());
      return Promise.resolve(null);
    }
    return new Promise((resolve) => {
      const waiter: Waiter = { resolve, timer: undefined };
      item.waiter = waiter;
      waiter.timer = setTimeout(() => setImmediate(() => this.expire(item)), this.captureTimeoutMs);
      this.push(item);
    });
  }

  /** Buffer one event for the next batch; return at once. Never throws. */
  captureNowait(event: AuditEvent): void {
    try {
      this.push(this.prepare(event));
    } catch (error) {
      this.fail(event, error, currentContext());
    }
  }

  /** Send what is buffered (waiting at most `timeoutMs`), then close the connection. */
  async close(timeoutMs = 5000): Promise<void> {
    this.closing = true;
    try {
      const flushed = (async () => {
        while (this.buffer.length > 0 || this.sending) await this.drain();
      })();
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      });
      await Promise.race([flushed, late]);
      clearTimeout(timer);
      for (const item of this.buffer.splice(0)) {
        this.settle(item, null, new ClientClosed("the audit client closed before sending it"));
      }
    } catch {
      // close never rejects
    } finally {
      clearTimeout(this.timer);
      this.redis.disconnect();
    }
  }

  /** Counts since the client started: events sent, failed (logged) and dropped. */
  stats(): ClientStats {
    return { ...this.counts };
  }

  // Preparing an event, in the caller's turn: checked and encoded once. The encoding is a
  // snapshot (what the caller does to its object afterwards changes nothing sent) whose size
  // is checked here; the redaction runs when its batch is sent (see `redactBatch`), over the
  // encoded events, before anything leaves the process.

  private prepare(event: AuditEvent): Item {
    if (this.closing) throw new ClientClosed("the audit client is closed");
    if (event === null || typeof event !== "object" || Array.isArray(event)) {
      throw new InvalidEvent(`expected an event object, not ${event === null ? "null" : typeof event}`);
    }
    const action = event.action;
    if (!validActions.has(action)) {
      if (typeof action !== "string" || action.length > ACTION_MAX_CHARS || !ACTION_PATTERN.test(action)) {
        throw new InvalidEvent(`\`action\` must match ${ACTION_PATTERN.source}, not ${JSON.stringify(action)?.slice(0, 200)}`);
      }
      if (validActions.size < VALID_ACTIONS_KEPT) validActions.add(action);
    }
    const context = currentContext();
    let json: string;
    try {
      json = JSON.stringify(context === undefined ? event : withContext(event, context));
    } catch (error) {
      throw new InvalidEvent(`cannot encode the event: ${(error as Error).message}`);
    }
    if (typeof json !== "string" || json.charCodeAt(0) !== 0x7b) {
      throw new InvalidEvent("the event does not encode as a JSON object (its toJSON)");
    }
    // The id and ts, when made here, are written in front when the batch is sent.
    tick();
    const madeId = event.id === undefined;
    const item: Item = {
      json,
      redacted: false,
      id: event.id ?? newId(),
      madeId,
      ts: event.ts === undefined ? lastIso : undefined,
      state: QUEUED,
      waiter: undefined,
    };
    this.checkSize(item);
    return item;
  }

  /** Throw InvalidEvent when the item's payload is over the size limit. */
  private checkSize(item: Item): void {
    const head = headChars(item);
    if ((item.json.length + head) * 3 <= this.maxEventBytes) return; // 3 bytes a character at most
    const bytes = Buffer.byteLength(item.json) + head;
    if (bytes > this.maxEventBytes) {
      throw new InvalidEvent(`event is ${bytes} bytes encoded, more than the limit of ${this.maxEventBytes}`);
    }
  }

  /** Redact the item's event (once): the pre-check over its JSON, and where it finds
   * anything, the rules over the event decoded from it (as service/events.py finalize). */
  private redact(item: Item): void {
    if (item.redacted) return;
    item.redacted = true;
    if (this.redactor.encodedMayHoldSecret(item.json)) {
      item.json = JSON.stringify(this.redactor.redactEvent(JSON.parse(item.json) as object));
      this.checkSize(item); // a redacted value may be longer than the secret it replaced
    }
  }

  /** What the batch carries of an item: its event, the id and ts made at capture in front
   * (no copy of the event is made for them). */
  private payload(item: Item): string {
    const { json, ts } = item;
    if (!item.madeId) return ts === undefined ? json : `{"ts":"${ts}",${json.slice(1)}`;
    return ts === undefined ? `{"id":"${item.id}",${json.slice(1)}` : `{"id":"${item.id}","ts":"${ts}",${json.slice(1)}`;
  }

  // Buffering and sending.

  private push(item: Item): void {
    if (this.buffer.length >= this.bufferMaxEvents) {
      this.counts.dropped += 1;
      this.settle(item, null, new BufferFull(`the buffer holds ${this.bufferMaxEvents} events: dropped`));
      return;
    }
    this.buffer.push(item);
    if (this.sending) return; // the sender takes it after its batch in flight
    if (this.buffer.length >= this.flushMaxEvents) {
      // A full batch leaves once the caller's turn is over, with whatever else that turn
      // captured: the send (the batch's encoding and the socket write) is never paid by
      // the one call that happened to fill it.
      if (!this.flushSoon) {
        this.flushSoon = true;
        clearTimeout(this.timer);
        this.timer = undefined;
        setImmediate(() => {
          this.flushSoon = false;
          void this.drain();
        });
      }
    } else if (this.timer === undefined) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.drain();
      }, this.flushIntervalMs);
    }
  }

  private drain(): Promise<void> {
    if (this.sending === undefined) {
      this.sending = (async () => {
        try {
          while (this.buffer.length > 0) await this.send(this.take());
        } finally {
          this.sending = undefined;
        }
      })();
    }
    return this.sending;
  }

  private take(): Item[] {
    let count = 0;
    let bytes = 2;
    const limit = Math.min(this.buffer.length, this.flushMaxEvents);
    while (count < limit) {
      const item = this.buffer[count]!;
      bytes += item.json.length + headChars(item) + 1;
      if (count > 0 && bytes > BATCH_MAX_BYTES) break;
      count += 1;
    }
    if (count === this.buffer.length) {
      const batch = this.buffer;
      this.buffer = [];
      return batch;
    }
    return this.buffer.splice(0, count);
  }

  private async send(batch: Item[]): Promise<void> {
    let live = batch.filter((item) => item.state === QUEUED);
    if (live.length === 0) return;
    let payload = this.redactBatch(live);
    if (payload === undefined) {
      // Events the redaction changed: written anew, without those that failed on the way.
      live = live.filter((item) => item.state === QUEUED);
      if (live.length === 0) return;
      payload = `[${live.map((item) => this.payload(item)).join(",")}]`;
    }
    for (const item of live) item.state = SENT;
    try {
      await this.enqueue(payload);
    } catch (error) {
      for (const item of live) this.settle(item, null, error);
      return;
    }
    this.counts.sent += live.length;
    for (const item of live) this.settle(item, item.id, undefined);
  }

  /** The batch of `items` as one JSON array, when the redaction changed none of them (the
   * pre-check over all of it, then the rules over each event it flagged); else undefined,
   * each flagged event redacted (or, when that failed, settled with its failure line). */
  private redactBatch(items: Item[]): string | undefined {
    const payloads = new Array<string>(items.length);
    const starts = new Array<number>(items.length);
    let at = 1; // after "["
    for (let i = 0; i < items.length; i++) {
      const payload = this.payload(items[i]!);
      payloads[i] = payload;
      starts[i] = at;
      at += payload.length + 1; // and its ","
    }
    // One flat string (`+=` would leave a rope of the batch to flatten at the write).
    const batch = `[${payloads.join(",")}]`;
    let flagged: number[];
    try {
      flagged = this.redactor.encodedNeedingRules(batch, starts);
    } catch {
      flagged = items.map((_, i) => i); // each event its own pre-check: a sender never throws
    }
    for (const item of items) item.redacted = true;
    let changed = false;
    for (const i of flagged) {
      const item = items[i]!;
      const json = item.json;
      item.redacted = false;
      try {
        this.redact(item);
      } catch (error) {
        this.settle(item, null, error instanceof InvalidEvent ? error : new InvalidEvent("cannot redact the event"));
      }
      changed ||= item.json !== json || item.state !== QUEUED;
    }
    return changed ? undefined : batch;
  }

  private async enqueue(payload: string): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const bound = this.sendTimeoutMs;
    const late = new Promise<never>((_, reject) => {
      let due = performance.now() + bound;
      let grace = LATE_TIMER_GRACES;
      const expire = () => {
        // A timer that fires far past its time says this process was busy (a long
        // synchronous stretch), not that Redis was slow: the command may not even have been
        // written. Give Redis the bound again, a few times at most.
        if (performance.now() - due > bound / 2 && grace-- > 0) {
          due = performance.now() + bound;
          timer = setTimeout(expire, bound);
          return;
        }
        // Rejected in the check phase, after the poll phase read what Redis already sent.
        setImmediate(() =>
          reject(new DeliveryUncertain(`no answer from Redis within ${bound} ms`)),
        );
      };
      timer = setTimeout(expire, bound);
    });
    try {
      await Promise.race([this.call(payload), late]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async call(payload: string): Promise<unknown> {
    if (this.functions) {
      try {
        return await this.redis.call("FCALL", ENQUEUE_FUNCTION, "1", this.queue, payload);
      } catch (error) {
        const message = String((error as Error).message).toLowerCase();
        if (message.includes("unknown command") && message.includes("fcall")) {
          this.functions = false; // before Redis 7: the same script, as EVAL
        } else if (!message.includes("function not found")) {
          throw error;
        }
        // The library not loaded yet (a fresh Redis before `auditq migrate` or a worker
        // loaded it): the same script, as EVAL, this time.
      }
    }
    return await this.redis.call("EVAL", ENQUEUE_SCRIPT, "1", this.queue, payload);
  }

  /** The capture bound passed (checked after the poll phase, see `enqueue`). */
  private expire(item: Item): void {
    if (item.state === QUEUED) {
      item.state = DONE; // the sender skips it
      this.settle(item, null, new CaptureTimeout(`not sent within ${this.captureTimeoutMs} ms`));
    } else if (item.state === SENT) {
      this.settle(
        item,
        null,
        new DeliveryUncertain(
          `sent, and no answer within ${this.captureTimeoutMs} ms: it may still be stored; resend with the same id`,
        ),
      );
    }
  }

  private settle(item: Item, id: string | null, error: unknown): void {
    const waiter = item.waiter;
    const answered = item.state === DONE && waiter === undefined;
    item.state = DONE;
    item.waiter = undefined;
    if (waiter !== undefined) {
      clearTimeout(waiter.timer);
      waiter.resolve(id);
    }
    if (error !== undefined && !answered) this.fail(this.snapshot(item), error, undefined);
  }

  /** The event of an item's failure line: as captured (not the caller's object, which may
   * have changed since; the context is in it), redacted. */
  private snapshot(item: Item): unknown {
    try {
      this.redact(item);
    } catch {
      // The line's own fields are redacted apart (failureLine), as the Python client does.
    }
    return JSON.parse(item.json);
  }

  /** Write the failure line of `event` (`context`: the request's, for a failure in the call). */
  private fail(event: unknown, error: unknown, context: AuditContext | undefined): void {
    this.counts.failed += 1;
    try {
      this.logger.error(failureLine(event, error, context, this.redactor));
    } catch {
      // a broken logger must not break the caller either
    }
  }
}

/** Fill the request and actor an event lacks from the current context. */
function withContext(event: AuditEvent, context: AuditContext): AuditEvent {
  const actor = event.actor ?? contextActor(context);
  const known = {
    id: context.requestId,
    ip: context.ip,
    user_agent: context.userAgent,
    method: context.method,
    path: context.path,
  };
  let request = event.request;
  for (const [name, value] of Object.entries(known)) {
    if (value !== undefined && (request === undefined || request[name as keyof typeof known] === undefined)) {
      request = { ...request, [name]: value };
    }
  }
  return { ...event, ...(actor ? { actor } : {}), ...(request ? { request } : {}) };
}
