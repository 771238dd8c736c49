// Calls to the admin API: the token of this tab's session as a Bearer header, errors as sentences.
const TOKEN_KEY = "auditq.console.token";
const WHO_KEY = "auditq.console.whoami";
const signOutListeners = new Set();

export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  who: () => {
    try {
      return JSON.parse(sessionStorage.getItem(WHO_KEY) || "null");
    } catch {
      return null;
    }
  },
  save(token, who) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(WHO_KEY, JSON.stringify(who));
  },
  clear(reason = "") {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(WHO_KEY);
    for (const listener of signOutListeners) listener(reason);
  },
  onSignOut(listener) {
    signOutListeners.add(listener);
    return () => signOutListeners.delete(listener);
  },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function asSentence(text) {
  const trimmed = String(text || "").trim();
  if (!trimmed) return "";
  const first = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(first) ? first : `${first}.`;
}

const STATUS_TEXT = {
  400: "The server did not accept the request",
  401: "The server does not know this token (unknown or revoked)",
  403: "This token's role may not do this",
  404: "The server has no such thing",
  409: "That conflicts with the current state",
  413: "The request is too large",
  503: "A dependency of the server (Redis or PostgreSQL) is not answering; try again shortly",
};

/** Turn an error response into an ApiError whose message is a sentence. */
async function errorOf(response) {
  let code = "http_error";
  let message = "";
  try {
    const body = await response.json();
    code = body.error.code || code;
    message = body.error.message || "";
  } catch {
    // Not our envelope (a proxy's page, say): the status alone must do.
  }
  const base = STATUS_TEXT[response.status] || `The server answered ${response.status}`;
  const text = message ? `${base}: ${message}` : base;
  return new ApiError(response.status, code, asSentence(text));
}

export const NETWORK_ERROR =
  "The server did not answer; check that auditq is running and try again.";

/** Fetch an admin route; JSON back unless `raw`. A 401 ends the session (token unknown now). */
export async function request(path, { method = "GET", body, query, token, raw, signal, headers } = {}) {
  const qs = query ? (typeof query === "string" ? query : query.toString()) : "";
  const url = qs ? `${path}?${qs}` : path;
  const bearer = token ?? session.token();
  const sent = { Accept: "application/json", ...(headers || {}) };
  if (bearer) sent.Authorization = `Bearer ${bearer}`;
  const init = { method, headers: sent, cache: "no-store", credentials: "omit", signal };
  if (body !== undefined) {
    sent["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, "network", NETWORK_ERROR);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && token === undefined && session.token()) {
      session.clear("Your token is no longer accepted (unknown or revoked); sign in again.");
    }
    throw error;
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

let openapi = null;

/** The server's OpenAPI document (cached): which optional routes it has, and their defaults. */
export function apiDocument() {
  openapi ??= fetch("/api/v1/openapi.json", { cache: "no-store", credentials: "omit" })
    .then((r) => (r.ok ? r.json() : { paths: {}, components: { schemas: {} } }))
    .catch(() => {
      openapi = null;
      return { paths: {}, components: { schemas: {} } };
    });
  return openapi;
}

const shape = (path) => path.replace(/\{[^}]*\}/g, "{}");

/** Whether the server has `method path` (path parameters matched whatever their names). */
export async function hasRoute(path, method = "get") {
  const doc = await apiDocument();
  const wanted = shape(path);
  return Object.entries(doc.paths || {}).some(([p, ops]) => shape(p) === wanted && ops[method]);
}

/** Download a response body as a file (the Bearer header rules out a plain link). */
export async function download(response, filename) {
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return blob.size;
}
