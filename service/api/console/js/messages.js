// Presentation: a message catalogue turns an event's code and params into a sentence.
let catalogue = {};

export async function loadMessages() {
  try {
    const response = await fetch("/console/assets/messages.json", { cache: "no-store" });
    if (response.ok) catalogue = await response.json();
  } catch {
    catalogue = {};
  }
}

function asText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** "document.viewed" -> "document viewed": an action's own words, for a code with no entry. */
export function actionWords(action) {
  return String(action || "").split(/[._]+/).filter(Boolean).join(" ");
}

function fill(template, item, params) {
  const fromEvent = {
    actor: item.actor ? item.actor.name || item.actor.id : undefined,
    entity: item.entity ? item.entity.name || item.entity.id : undefined,
    action: item.action,
    tenant: item.tenant,
  };
  return template.replace(/\{([A-Za-z0-9_.-]+)\}/g, (whole, key) => {
    const value = Object.hasOwn(params, key)
      ? params[key]
      : fromEvent[key] ?? (item.metadata ? item.metadata[key] : undefined);
    return value === undefined || value === null ? "—" : asText(value);
  });
}

/** The sentence when the catalogue has none: the action's words, who, on what, and how it ended. */
function fallback(item) {
  const who = item.actor ? item.actor.name || item.actor.id : "Someone unnamed";
  const on = item.entity ? ` on ${item.entity.type} ${item.entity.name || item.entity.id}` : "";
  const ended = item.outcome === "failure" ? " (it failed)" : "";
  return `${who}: ${actionWords(item.action)}${on}${ended}`;
}

/**
 * {text, code, params, known}: the sentence for an event. A failed event uses the entry
 * "<code>:failure" when the catalogue has one, else the success sentence is never shown as
 * it is: it says that the attempt failed. A code with no entry gets a fallback sentence.
 */
export function present(item) {
  const presentation = item.presentation || {};
  const code = presentation.code || `audit.${item.action}`;
  const params = presentation.params || {};
  const failed = item.outcome === "failure";
  const own = failed ? catalogue[`${code}:failure`] : undefined;
  if (typeof own === "string") return { text: fill(own, item, params), code, params, known: true };
  const template = catalogue[code];
  if (typeof template !== "string") return { text: fallback(item), code, params, known: false };
  const text = fill(template, item, params);
  return { text: failed ? `Failed attempt: ${text}` : text, code, params, known: true };
}
