// Shared pieces of the views. Every stored value goes in as text, never as markup.
import { html, useCallback, useEffect, useRef, useState } from "./lib.js";
import { present } from "./messages.js";
import { seg } from "./router.js";

const pad = (n) => String(n).padStart(2, "0");

// One time convention: UTC by default (as exports, the API and the CLI), local on request.
const ZONE_KEY = "auditq.console.zone";
let zone = localStorage.getItem(ZONE_KEY) === "local" ? "local" : "utc";
const zoneListeners = new Set();

export const timeZone = () => zone;

/** Show times in "utc" or "local" (kept in this browser; it is no secret). */
export function setTimeZone(next) {
  zone = next === "local" ? "local" : "utc";
  localStorage.setItem(ZONE_KEY, zone);
  for (const listener of zoneListeners) listener();
}

/** The zone times are shown in; the component re-renders when it is switched. */
export function useTimeZone() {
  const [, setTick] = useState(0);
  useEffect(() => {
    const listener = () => setTick((n) => n + 1);
    zoneListeners.add(listener);
    return () => zoneListeners.delete(listener);
  }, []);
  return zone;
}

/** The shown zone's name: "UTC", or the browser's offset from UTC at that time ("UTC-05:00"). */
export function zoneLabel(d = new Date()) {
  if (zone === "utc") return "UTC";
  const minutes = -d.getTimezoneOffset();
  const sign = minutes < 0 ? "-" : "+";
  return `UTC${sign}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
}

/** The calendar fields of a date in the shown zone. */
export function fields(d) {
  return zone === "utc"
    ? [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds()]
    : [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds()];
}

/** A timestamp as YYYY-MM-DD HH:MM:SS (24 h) in the shown zone, without the zone's name. */
export function localTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const [y, mo, da, h, mi, se] = fields(d);
  return `${y}-${pad(mo)}-${pad(da)} ${pad(h)}:${pad(mi)}:${pad(se)}`;
}

/** The text of a time input for an RFC 3339 time (ISO, in the shown zone), "" when none. */
export function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return localTime(iso);
}

const TYPED = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?$/;

/**
 * RFC 3339 (UTC) of what was typed in a time input: an ISO date or date-time, read in the
 * shown zone unless it names its own (Z or an offset). Anything else goes to the API as it
 * is, whose 400 names the field.
 */
export function fromLocalInput(value) {
  const text = String(value || "").trim();
  if (!text) return "";
  const typed = TYPED.exec(text);
  if (!typed) return text;
  const [, y, mo, da, h = "0", mi = "0", se = "0"] = typed;
  const parts = [Number(y), Number(mo) - 1, Number(da), Number(h), Number(mi), Number(se)];
  const d = zone === "utc" ? new Date(Date.UTC(...parts)) : new Date(...parts);
  return Number.isNaN(d.getTime()) ? text : d.toISOString().replace(".000Z", "Z");
}

/** A labelled time field: ISO text in the shown zone (no locale's mm/dd/yyyy, no cut AM/PM). */
export function TimeField({ label, name, value }) {
  useTimeZone();
  const id = `f-${name}`;
  return html`<label for=${id}><span>${label} (${zoneLabel()})</span>
    <input id=${id} name=${name} type="text" inputmode="numeric" defaultValue=${toLocalInput(value)}
      placeholder="YYYY-MM-DD HH:MM" autocomplete="off" spellcheck="false" /></label>`;
}

export function Time({ value }) {
  useTimeZone();
  if (!value) return html`<span class="muted">—</span>`;
  const d = new Date(value);
  return html`<time datetime=${value} title=${value}>${localTime(value)} <span class="zone">${zoneLabel(d)}</span></time>`;
}

/** The labelled switch between UTC and local times (in the page header). */
export function ZoneSwitch() {
  const current = useTimeZone();
  return html`<label class="zone-switch" for="zone-switch"><span>Times in</span>
    <select id="zone-switch" onChange=${(e) => setTimeZone(e.currentTarget.value)}>
      <option value="utc" selected=${current === "utc"}>UTC</option>
      <option value="local" selected=${current === "local"}>local time (${zone === "local" ? zoneLabel() : "browser"})</option>
    </select></label>`;
}

export function ago(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  return seconds < 90 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 1) return "0 s";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** Any JSON value as text (strings as they are). */
export function asText(value) {
  if (value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

export function Json({ value, label }) {
  return html`<pre aria-label=${label || null}>${JSON.stringify(value, null, 2)}</pre>`;
}

export function ErrorBox({ error }) {
  if (!error) return null;
  return html`<div class="alert" role="alert">${error.message || String(error)}</div>`;
}

export function Notice({ text }) {
  return text ? html`<p class="notice" role="status">${text}</p>` : null;
}

export function Severity({ value }) {
  return html`<span class=${`sev sev-${value}`}>${value}</span>`;
}

export function Outcome({ value }) {
  return html`<span class=${value === "failure" ? "outcome-failure" : ""}>${value}</span>`;
}

export function Presentation({ item }) {
  const { text, code, params, known } = present(item);
  if (known) return html`<span>${text}</span>`;
  // No catalogue entry: the fallback sentence, with the params it could not place.
  const shown = Object.keys(params).length ? ` ${JSON.stringify(params)}` : "";
  return html`<span title=${code}>${text}<span class="muted">${shown}</span></span>`;
}

export const entityPath = (entity) => `/console/entities/${seg(entity.type)}/${seg(entity.id)}`;
export const actorPath = (actorId) => `/console/actors/${seg(actorId)}`;
export const logPath = (id) => `/console/audit-logs/${seg(id)}`;

export function Actor({ actor }) {
  if (!actor) return html`<span class="muted">—</span>`;
  return html`<a href=${actorPath(actor.id)} title=${`${actor.type} ${actor.id}`}>${actor.name || actor.id}</a>`;
}

export function EntityLink({ entity }) {
  if (!entity || entity.type === undefined || entity.id === undefined) {
    return html`<span class="muted">—</span>`;
  }
  return html`<a href=${entityPath(entity)}>${entity.type} ${entity.name || entity.id}</a>`;
}

/** Load data when `deps` change; {data, error, loading, reload}. */
export function useAsync(load, deps) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const generation = useRef(0);
  const run = useCallback(async () => {
    const mine = ++generation.current;
    setState((s) => ({ ...s, loading: true, error: null }));
    try {
      const data = await load();
      if (mine === generation.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (error.name === "AbortError") return;
      if (mine === generation.current) setState({ data: null, error, loading: false });
    }
  }, deps);
  useEffect(() => {
    run();
  }, [run]);
  return { ...state, reload: run };
}

/** Run `fn` every `ms` while the tab is visible (and once at once, and when `deps` change). */
export function useVisibleInterval(fn, ms, deps = []) {
  const saved = useRef(fn);
  saved.current = fn;
  useEffect(() => {
    let timer = null;
    const tick = () => saved.current();
    const sync = () => {
      clearInterval(timer);
      timer = null;
      if (!document.hidden) {
        tick();
        timer = setInterval(tick, ms);
      }
    };
    sync();
    document.addEventListener("visibilitychange", sync);
    return () => {
      clearInterval(timer);
      document.removeEventListener("visibilitychange", sync);
    };
  }, [ms, ...deps]);
}

function button(text, className) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  if (className) element.className = className;
  return element;
}

/** Ask before a change: a modal dialog; resolves true only on the confirm button. */
export function confirmAction(message, { confirmLabel = "Confirm", danger = false } = {}) {
  return new Promise((resolve) => {
    const dialog = document.createElement("dialog");
    const id = `confirm-${Date.now()}`;
    dialog.setAttribute("aria-labelledby", id);
    const text = document.createElement("p");
    text.id = id;
    text.textContent = message;
    const bar = document.createElement("div");
    bar.className = "toolbar";
    const cancel = button("Cancel");
    const ok = button(confirmLabel, danger ? "danger" : "primary");
    bar.append(cancel, ok);
    dialog.append(text, bar);
    cancel.addEventListener("click", () => dialog.close("cancel"));
    ok.addEventListener("click", () => dialog.close("ok"));
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "ok");
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** A mutation behind a confirmation: {run, busy, error, notice}. */
export function useAction() {
  const [state, setState] = useState({ busy: false, error: null, notice: "" });
  const run = useCallback(async (question, act, options) => {
    if (!(await confirmAction(question, options))) return null;
    setState({ busy: true, error: null, notice: "" });
    try {
      const result = await act();
      const notice = typeof result === "string" ? result : "";
      setState({ busy: false, error: null, notice });
      return result;
    } catch (error) {
      setState({ busy: false, error, notice: "" });
      return null;
    }
  }, []);
  return { ...state, run };
}

export function Field({ label, name, value, type = "text", list, placeholder, min, required, onInput }) {
  const id = `f-${name}`;
  return html`<label for=${id}><span>${label}</span>
    <input id=${id} name=${name} type=${type} defaultValue=${value ?? ""} list=${list || null}
      placeholder=${placeholder || null} min=${min ?? null} required=${required || null}
      autocomplete="off" onInput=${onInput || null} /></label>`;
}

/** A labelled select; `options` are [value, text] pairs ("" is "any"). */
export function Select({ label, name, value, options }) {
  const id = `f-${name}`;
  return html`<label for=${id}><span>${label}</span>
    <select id=${id} name=${name}>
      ${options.map(([v, text]) => html`<option value=${v} selected=${v === (value || "")}>${text}</option>`)}
    </select></label>`;
}

export function Loading({ when }) {
  return when ? html`<p class="muted" role="status">Loading…</p>` : null;
}

// What a field whose form is fixed by a pattern must look like, in words (contract §4).
const FORMS = {
  action: "lowercase words joined by dots, such as auth.login",
  ip: "an IPv4 or IPv6 address",
};

/** A failure reason in plain words: a validator's pattern source becomes what the field needs. */
export function plainReason(message) {
  return String(message ?? "").replace(
    /Expected `str` matching regex .* - at `\$\.?([^`]*)`/g,
    (whole, path) => {
      const leaf = path.split(/[.[\]]+/).filter(Boolean).pop() || path;
      const form = FORMS[leaf];
      return `the field ${path} is not in the form it must have${form ? ` (${form})` : ""}`;
    },
  );
}

export const REFRESH_MS = 3000; // how often a view showing changeable state asks again

/**
 * Load data when `deps` change and again every `ms` while the tab is visible (stopped while
 * hidden, as the Queue view): {data, error, loading, reload}. A refresh keeps what is shown
 * until its answer arrives, so nothing flickers.
 */
export function usePolled(load, deps, ms = REFRESH_MS) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const generation = useRef(0);
  const run = useCallback(async () => {
    const mine = generation.current;
    try {
      const data = await load();
      if (mine === generation.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (error.name === "AbortError") return;
      if (mine === generation.current) setState((s) => ({ ...s, error, loading: false }));
    }
  }, deps);
  const mounted = useRef(false);
  useEffect(() => {
    // New deps: forget what was shown and ask at once (the interval asked already on mount).
    if (!mounted.current) {
      mounted.current = true;
      return;
    }
    generation.current += 1;
    setState({ data: null, error: null, loading: true });
    run();
  }, [run]);
  useVisibleInterval(run, ms);
  return { ...state, reload: run };
}
