// The stable failure line, byte for byte the Python client's (service/producer/failures.py):
//   [AuditLog] Failed to queue audit event: {"action": …, "entityType": …, "entityId": …,
//   "userId": …, "requestId": …, "errorName": …, "errorMessage": …}
// one JSON object (Python's separators and ASCII escapes), every value redacted, no stack.
import { contextActor, type AuditContext } from "./context.js";
import type { Redactor } from "./redaction.js";

export const FAILURE_PREFIX = "[AuditLog] Failed to queue audit event: ";
const FIELD_MAX_CHARS = 256; // a hostile value must not flood the log
const MESSAGE_MAX_CHARS = 1024;

function get(value: unknown, name: string): unknown {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    ? (value as Record<string, unknown>)[name]
    : undefined;
}

function text(value: unknown): string | null {
  if (typeof value === "string") return value.slice(0, FIELD_MAX_CHARS);
  if (typeof value === "number" && Number.isInteger(value)) return String(value);
  return null;
}

/** JSON as Python's json.dumps writes it: ", " and ": " separators, non-ASCII escaped. */
export function pythonJson(payload: Record<string, string | null>): string {
  const escape = (value: string | null) =>
    JSON.stringify(value).replace(
      /[^\x20-\x7e]/g,
      (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`,
    );
  return `{${Object.entries(payload)
    .map(([key, value]) => `${escape(key)}: ${escape(value)}`)
    .join(", ")}}`;
}

/** The failure line of `event`, which failed with `error`. */
export function failureLine(
  event: unknown,
  error: unknown,
  context: AuditContext | undefined,
  redactor: Redactor,
): string {
  const entity = get(event, "entity");
  let userId = text(get(get(event, "actor"), "id"));
  let requestId = text(get(get(event, "request"), "id"));
  if (context !== undefined) {
    if (userId === null) {
      const actor = contextActor(context);
      if (actor !== undefined) userId = text(actor.id);
    }
    requestId ??= text(context.requestId);
  }
  const fields: Record<string, string | null> = {
    action: text(get(event, "action")),
    entityType: text(get(entity, "type")),
    entityId: text(get(entity, "id")),
    userId,
    requestId,
  };
  const payload: Record<string, string | null> = {};
  for (const [name, value] of Object.entries(fields)) {
    payload[name] = value === null ? null : redactor.redactText(value);
  }
  const name = error instanceof Error ? error.name : typeof error;
  let message: string;
  try {
    message = redactor.redactText(error instanceof Error ? error.message : String(error));
  } catch {
    message = "[message withheld: it could not be redacted]";
  }
  payload.errorName = name;
  payload.errorMessage = message.slice(0, MESSAGE_MAX_CHARS);
  return FAILURE_PREFIX + pythonJson(payload);
}
