// The request context: what capture fills into an event that lacks it (request, client IP,
// actor), kept per request in an AsyncLocalStorage. The rules are those of the Python
// middlewares (service/producer/context.py): request id, client IP behind trusted proxies.
import { AsyncLocalStorage } from "node:async_hooks";
import { randomUUID } from "node:crypto";
import { BlockList, isIP } from "node:net";

import type { Actor } from "./events.js";

export const REQUEST_ID_MAX_CHARS = 128;
const USER_AGENT_MAX_CHARS = 4096;
const METHOD_MAX_CHARS = 16;
const PATH_MAX_CHARS = 4096;

/** The audit context of one request (or task). `setActor` changes its actor. */
export interface AuditContext {
  requestId?: string;
  ip?: string;
  userAgent?: string;
  method?: string;
  path?: string;
  actor?: Actor;
  /** Asked for the actor at the request's first capture (see `actorResolver`). */
  resolveActor?: () => Actor | undefined;
}

export const storage = new AsyncLocalStorage<AuditContext>();

/** The current request's context, if any. */
export function currentContext(): AuditContext | undefined {
  return storage.getStore();
}

/** Run `fn` with `context` as the audit context of everything it starts. */
export function runWithContext<T>(context: AuditContext, fn: () => T): T {
  return storage.run(context, fn);
}

/** Set the actor of the current request (or task) for the events captured after this. */
export function setActor(actor: Actor): void {
  const context = storage.getStore();
  if (context === undefined) {
    storage.enterWith({ actor });
  } else {
    context.actor = actor;
    context.resolveActor = undefined;
  }
}

/** The context's actor, asking its resolver once; a failing resolver costs the actor only. */
export function contextActor(context: AuditContext): Actor | undefined {
  const resolve = context.resolveActor;
  if (resolve !== undefined) {
    context.resolveActor = undefined;
    try {
      context.actor ??= resolve() ?? undefined;
    } catch (error) {
      console.warn("auditq: the actor resolver failed; the request has no actor:", error);
    }
  }
  return context.actor;
}

/** Parse trusted proxies (addresses or CIDR networks, a list or a comma-separated string). */
export function trustedNetworks(proxies: string | Iterable<string> = []): BlockList {
  const list = new BlockList();
  const items = typeof proxies === "string" ? proxies.split(",") : [...proxies];
  for (const item of items) {
    const text = item.trim();
    if (!text) continue;
    const [address, bits] = text.split("/");
    const family = isIP(address!);
    if (family === 0) throw new Error(`not an IP address or network: ${JSON.stringify(text)}`);
    const type = family === 4 ? "ipv4" : "ipv6";
    if (bits === undefined) {
      list.addAddress(address!, type);
    } else {
      const prefix = Number(bits);
      if (!Number.isInteger(prefix) || prefix < 0 || prefix > (family === 4 ? 32 : 128)) {
        throw new Error(`not an IP address or network: ${JSON.stringify(text)}`);
      }
      list.addSubnet(address!, prefix, type);
    }
  }
  return list;
}

/** Parse an address as proxies write it (maybe with a port); undefined when it is not one. */
export function parseIp(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  const candidates = [text];
  if (text.startsWith("[") && text.includes("]")) {
    candidates.push(text.slice(1, text.indexOf("]"))); // [v6]:port
  } else if (text.split(":").length === 2) {
    candidates.push(text.split(":")[0]!); // v4:port
  }
  for (const candidate of candidates) {
    const family = isIP(candidate);
    if (family === 4) return candidate;
    if (family === 6) {
      const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(candidate);
      return mapped ? mapped[1] : candidate.toLowerCase();
    }
  }
  return undefined;
}

function isTrusted(address: string, trusted: BlockList): boolean {
  return trusted.check(address, isIP(address) === 4 ? "ipv4" : "ipv6");
}

/** The client's address: the peer, or what a trusted proxy peer says it forwarded. */
export function clientIp(
  peer: string | undefined,
  forwardedFor: string | undefined,
  realIp: string | undefined,
  trusted: BlockList,
): string | undefined {
  const peerAddress = parseIp(peer);
  if (peerAddress === undefined || !isTrusted(peerAddress, trusted)) return peerAddress;
  if (forwardedFor) {
    // Proxies append, so walk from the right: the first untrusted hop is the client.
    const hops = forwardedFor.split(",");
    for (let i = hops.length - 1; i >= 0; i--) {
      const address = parseIp(hops[i]);
      if (address === undefined) break; // a malformed hop: nothing left of it can be believed
      if (!isTrusted(address, trusted)) return address;
    }
  }
  return parseIp(realIp) ?? peerAddress;
}

/** The header's request id when it is short printable ASCII, else undefined. */
export function saneRequestId(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  if (!text || text.length > REQUEST_ID_MAX_CHARS || !/^[\x20-\x7e]+$/.test(text)) return undefined;
  return text;
}

function clip(value: string | undefined, limit: number): string | undefined {
  return value ? value.slice(0, limit) : undefined;
}

export interface RequestFacts {
  requestId?: string;
  peer?: string;
  forwardedFor?: string;
  realIp?: string;
  userAgent?: string;
  method?: string;
  path?: string; // without its query string: query strings often carry tokens
  resolveActor?: () => Actor | undefined;
}

/** Build the context of one HTTP request, by the same rules for every framework. */
export function requestContext(facts: RequestFacts, trusted: BlockList): AuditContext {
  return {
    requestId: saneRequestId(facts.requestId) ?? randomUUID().replaceAll("-", ""),
    ip: clientIp(facts.peer, facts.forwardedFor, facts.realIp, trusted),
    userAgent: clip(facts.userAgent, USER_AGENT_MAX_CHARS),
    method: clip(facts.method, METHOD_MAX_CHARS),
    path: clip(facts.path, PATH_MAX_CHARS),
    resolveActor: facts.resolveActor,
  };
}
