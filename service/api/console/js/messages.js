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

/** {text, code, params}: text is null when the catalogue has no entry for the code. */
export function present(item) {
  const presentation = item.presentation || {};
  const code = presentation.code || `audit.${item.action}`;
  const params = presentation.params || {};
  const template = catalogue[code];
  if (typeof template !== "string") return { text: null, code, params };
  const fromEvent = {
    actor: item.actor ? item.actor.name || item.actor.id : undefined,
    entity: item.entity ? item.entity.name || item.entity.id : undefined,
    action: item.action,
    tenant: item.tenant,
  };
  const text = template.replace(/\{([A-Za-z0-9_.-]+)\}/g, (whole, key) => {
    const value = Object.hasOwn(params, key)
      ? params[key]
      : fromEvent[key] ?? (item.metadata ? item.metadata[key] : undefined);
    return value === undefined || value === null ? "—" : asText(value);
  });
  return { text, code, params };
}
