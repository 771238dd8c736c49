// auditq-client: capture audit events into auditq from Node.js (contract §5).
export {
  AuditClient,
  BufferFull,
  CaptureTimeout,
  ClientClosed,
  DeliveryUncertain,
  ENQUEUE_FUNCTION,
  InvalidEvent,
  type ClientOptions,
  type ClientStats,
  type Logger,
} from "./client.js";
export {
  currentContext,
  runWithContext,
  setActor,
  type AuditContext,
} from "./context.js";
export type { Actor, AuditEvent, Change, Entity, RequestInfo } from "./events.js";
export { FAILURE_PREFIX } from "./failures.js";
export {
  REQUEST_ID_HEADER,
  auditContext,
  fastifyAuditContext,
  type ContextOptions,
} from "./middleware.js";
export { REDACTED, Redactor } from "./redaction.js";
