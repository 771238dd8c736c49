// The audit event (wire format v1, contract §4), as producers write it.

export interface Actor {
  id: string;
  type: "user" | "service" | "system" | "api_token";
  name?: string;
  email?: string;
}

export interface Entity {
  type: string;
  id: string;
  name?: string;
}

export interface RequestInfo {
  id?: string;
  ip?: string;
  user_agent?: string;
  method?: string;
  path?: string;
  status?: number;
  duration_ms?: number;
}

export interface Change {
  field: string;
  old?: unknown;
  new?: unknown;
}

export interface AuditEvent {
  action: string;
  id?: string;
  ts?: string;
  category?: string;
  severity?: "info" | "notice" | "warning" | "critical";
  outcome?: "success" | "failure";
  actor?: Actor;
  entity?: Entity;
  tenant?: string;
  request?: RequestInfo;
  changes?: Change[];
  metadata?: Record<string, unknown>;
  presentation?: { code: string; params?: Record<string, unknown> };
  source?: string;
}

export const ACTION_PATTERN = /^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,7}$/;
export const ACTION_MAX_CHARS = 128;
