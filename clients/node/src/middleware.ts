// Request context for Express and Fastify: request id (X-Request-ID or a new one, echoed
// back), client IP behind trusted proxies only, user agent, method, path, and the actor.
import type { IncomingMessage, ServerResponse } from "node:http";

import { requestContext, storage, trustedNetworks } from "./context.js";
import type { Actor } from "./events.js";

export const REQUEST_ID_HEADER = "X-Request-ID";

export interface ContextOptions<Req> {
  /** Peers whose X-Forwarded-For / X-Real-IP are believed; default AUDITQ_TRUSTED_PROXIES. */
  trustedProxies?: string | string[];
  /** Asked for the actor at the request's first capture (so it sees `req.user` of auth). */
  actorResolver?: (req: Req) => Actor | undefined | null;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(",") : value;
}

function pathOf(url: string | undefined): string | undefined {
  if (url === undefined) return undefined;
  const query = url.indexOf("?");
  return query === -1 ? url : url.slice(0, query);
}

function contextFor<Req extends IncomingMessage>(
  req: Req,
  options: ContextOptions<Req>,
  trusted: ReturnType<typeof trustedNetworks>,
) {
  const resolver = options.actorResolver;
  return requestContext(
    {
      requestId: header(req, "x-request-id"),
      peer: req.socket?.remoteAddress,
      forwardedFor: header(req, "x-forwarded-for"),
      realIp: header(req, "x-real-ip"),
      userAgent: header(req, "user-agent"),
      method: req.method,
      path: pathOf(req.url),
      resolveActor: resolver ? () => resolver(req) ?? undefined : undefined,
    },
    trusted,
  );
}

/** An Express (or Connect, or plain node:http) middleware: `app.use(auditContext())`. */
export function auditContext<Req extends IncomingMessage = IncomingMessage>(
  options: ContextOptions<Req> = {},
): (req: Req, res: ServerResponse, next: (error?: unknown) => void) => void {
  const trusted = trustedNetworks(options.trustedProxies ?? process.env.AUDITQ_TRUSTED_PROXIES ?? "");
  return (req, res, next) => {
    const context = contextFor(req, options, trusted);
    if (!res.headersSent) res.setHeader(REQUEST_ID_HEADER, context.requestId!);
    storage.run(context, next);
  };
}

interface FastifyRequestLike {
  raw: IncomingMessage;
}
interface FastifyReplyLike {
  header(name: string, value: string): unknown;
}

/** A Fastify onRequest hook: `app.addHook("onRequest", fastifyAuditContext())`. */
export function fastifyAuditContext<Req extends FastifyRequestLike = FastifyRequestLike>(
  options: ContextOptions<Req> = {},
): (request: Req, reply: FastifyReplyLike, done: () => void) => void {
  const trusted = trustedNetworks(options.trustedProxies ?? process.env.AUDITQ_TRUSTED_PROXIES ?? "");
  return (request, reply, done) => {
    const resolver = options.actorResolver;
    const context = contextFor(
      request.raw,
      { actorResolver: resolver ? () => resolver(request) : undefined },
      trusted,
    );
    reply.header(REQUEST_ID_HEADER, context.requestId!);
    storage.run(context, done);
  };
}
