// The audit log: filters reflected in the URL, keyset paging, detail, histories, export.
import { html, useEffect, useState } from "../lib.js";
import { download, request } from "../api.js";
import { navigate, seg } from "../router.js";
import {
  Actor, EntityLink, ErrorBox, Field, Json, Loading, Notice, Outcome, Presentation, Select,
  Severity, Time, TimeField, actorPath, asText, entityPath, fromLocalInput, logPath, useAsync,
} from "../ui.js";

const API = "/api/v1/admin/audit-logs";
const PAGE_SIZE = 50;
// The §7 filters, as the API names them; `action` may repeat.
export const FILTERS = [
  "action", "action_prefix", "category", "severity", "outcome", "actor_id", "actor_name", "entity_type",
  "entity_id", "tenant", "request_id", "ip", "since", "until", "q", "metadata", "change_field",
];
// Filters that repeat: the form takes several, separated (action, change_field by commas;
// metadata conditions by semicolons, since a value may hold a comma).
const SEPARATORS = { action: ",", change_field: ",", metadata: ";" };
// Time presets: the window ends now (no until), since is that long ago.
export const PRESETS = [
  ["Last 15 min", 15 * 60], ["Last hour", 3600], ["Last 24 h", 86400], ["Last 7 days", 7 * 86400],
];
const SEVERITIES = ["info", "notice", "warning", "critical"];

/** The filters of a query string, in a fresh URLSearchParams (unknown names dropped). */
export function filtersOf(query) {
  const kept = new URLSearchParams();
  for (const name of FILTERS) for (const value of query.getAll(name)) if (value) kept.append(name, value);
  return kept;
}

let suggestions = null;

/** Actions, actors and their names seen in the last 30 days, for the fields' suggestions
 * (best effort). */
function useSuggestions() {
  const [found, setFound] = useState(suggestions || { actions: [], actors: [], names: [] });
  useEffect(() => {
    if (suggestions) return;
    request(`${API}/statistics`)
      .then((stats) => {
        suggestions = {
          actions: stats.top_actions.map((a) => a.action),
          actors: stats.top_actors.map((a) => a.actor_id),
          names: [...new Set(stats.top_actors.map((a) => a.actor_name).filter(Boolean))],
        };
        setFound(suggestions);
      })
      .catch(() => {});
  }, []);
  return found;
}

/** Stored values of one filter starting with what is typed (the suggestions route), a
 * moment after typing stops; [] while `ready` is false (an entity id needs its type). */
function useStoredValues(field, prefix, entityType, ready = true) {
  const [values, setValues] = useState([]);
  useEffect(() => {
    if (!ready) { setValues([]); return undefined; }
    let current = true;
    const timer = setTimeout(() => {
      const q = new URLSearchParams({ field, prefix, limit: "20" });
      if (entityType) q.set("entity_type", entityType);
      request(`${API}/suggestions`, { query: q })
        .then((found) => { if (current) setValues(found.values); })
        .catch(() => {});
    }, 150);
    return () => { current = false; clearTimeout(timer); };
  }, [field, prefix, entityType, ready]);
  return values;
}

/** The filter form; submitting it navigates to `base` with the filters as the query string. */
export function FilterForm({ base, query }) {
  const { actions, actors, names } = useSuggestions();
  const value = (name) => query.get(name) || "";
  // What is typed, for the stored values that start with it (the last of several actions).
  const [typed, setTyped] = useState({
    action: "", entity_type: value("entity_type"), entity_id: value("entity_id"),
  });
  useEffect(() => {
    setTyped({ action: "", entity_type: value("entity_type"), entity_id: value("entity_id") });
  }, [query.toString()]);
  const typing = (name) => (event) => {
    const text = event.currentTarget.value;
    setTyped((t) => ({ ...t, [name]: name === "action" ? text.split(",").pop().trim() : text.trim() }));
  };
  const storedActions = useStoredValues("action", typed.action);
  const entityTypes = useStoredValues("entity_type", typed.entity_type);
  const entityIds = useStoredValues("entity_id", typed.entity_id, typed.entity_type, Boolean(typed.entity_type));
  const submit = (event) => {
    event.preventDefault();
    const data = new FormData(event.currentTarget);
    const next = new URLSearchParams();
    for (const name of FILTERS) {
      let raw = String(data.get(name) || "").trim();
      if (!raw) continue;
      if (SEPARATORS[name]) {
        for (const one of raw.split(SEPARATORS[name]).map((a) => a.trim()).filter(Boolean)) next.append(name, one);
        continue;
      }
      if (name === "since" || name === "until") raw = fromLocalInput(raw);
      next.append(name, raw);
    }
    const qs = next.toString();
    navigate(qs ? `${base}?${qs}` : base);
  };
  // A preset keeps the other filters and replaces the window: since that long ago, until now.
  const preset = (seconds) => {
    const next = new URLSearchParams(query);
    next.delete("until");
    next.set("since", new Date(Date.now() - seconds * 1000).toISOString().replace(/\.\d{3}Z$/, "Z"));
    navigate(`${base}?${next}`);
  };
  // Open on a wide screen or when filters are set; on a phone the results come first.
  const set = [...query.keys()].length;
  const open = set > 0 || window.matchMedia("(min-width: 601px)").matches;
  return html`<details class="filter-box" open=${open} key=${query.toString()}>
    <summary>Filters${set ? ` (${set} set)` : ""}</summary>
    <form class="filters" role="search" aria-label="Filters" onSubmit=${submit}>
    <${Field} label="Actions" name="action" value=${query.getAll("action").join(", ")} list="action-suggestions" placeholder="auth.login, …" onInput=${typing("action")} />
    <datalist id="action-suggestions">${[...new Set([...storedActions, ...actions])].map((a) => html`<option value=${a} />`)}</datalist>
    <${Field} label="Action prefix" name="action_prefix" value=${value("action_prefix")} placeholder="auth." />
    <${Field} label="Category" name="category" value=${value("category")} />
    <${Field} label="Actor id" name="actor_id" value=${value("actor_id")} list="actor-suggestions" />
    <datalist id="actor-suggestions">${actors.map((a) => html`<option value=${a} />`)}</datalist>
    <${Field} label="Actor name starts with" name="actor_name" value=${value("actor_name")} list="actor-name-suggestions" placeholder="Ada" />
    <datalist id="actor-name-suggestions">${names.map((a) => html`<option value=${a} />`)}</datalist>
    <${Field} label="Entity type" name="entity_type" value=${value("entity_type")} list="entity-type-suggestions" onInput=${typing("entity_type")} />
    <datalist id="entity-type-suggestions">${entityTypes.map((a) => html`<option value=${a} />`)}</datalist>
    <${Field} label="Entity id" name="entity_id" value=${value("entity_id")} list="entity-id-suggestions" placeholder=${typed.entity_type ? "" : "an entity type first"} onInput=${typing("entity_id")} />
    <datalist id="entity-id-suggestions">${entityIds.map((a) => html`<option value=${a} />`)}</datalist>
    <${Field} label="Tenant" name="tenant" value=${value("tenant")} />
    <${Select} label="Severity" name="severity" value=${value("severity")}
      options=${[["", "any"], ...SEVERITIES.map((s) => [s, s])]} />
    <${Select} label="Outcome" name="outcome" value=${value("outcome")}
      options=${[["", "any"], ["success", "success"], ["failure", "failure"]]} />
    <${Field} label="IP or network" name="ip" value=${value("ip")} placeholder="10.0.0.0/8" />
    <${Field} label="Request id" name="request_id" value=${value("request_id")} />
    <${TimeField} label="Since" name="since" value=${value("since")} />
    <${TimeField} label="Until" name="until" value=${value("until")} />
    <${Field} label="Full text" name="q" value=${value("q")} />
    <${Field} label="Metadata key=value" name="metadata" value=${query.getAll("metadata").join("; ")} placeholder="plan=pro; geo.country=FR" />
    <${Field} label="Changed field" name="change_field" value=${query.getAll("change_field").join(", ")} placeholder="visibility, …" />
    <div class="actions">
      <button class="primary" type="submit">Search</button>
      <a class="button" href=${base}>Clear</a>
    </div>
  </form>
  <div class="toolbar presets" role="group" aria-label="Time presets">
    ${PRESETS.map(([text, seconds]) => html`<button type="button" onClick=${() => preset(seconds)}>${text}</button>`)}
  </div></details>`;
}

/** Changes inline, one line per field: "field: old → new" (an entity's history shows them). */
function InlineChanges({ changes }) {
  if (!changes || !changes.length) return null;
  return html`<ul class="inline-changes">${changes.map((c) => html`<li>
    <code>${c.field}</code>: <del class="old">${asText(c.old)}</del> → <ins class="new">${asText(c.new)}</ins></li>`)}</ul>`;
}

export function LogTable({ items, caption, diffs = false }) {
  if (!items.length) return html`<p class="muted">No audit logs match.</p>`;
  return html`<div class="table-wrap"><table>
    <caption class="skip">${caption}</caption>
    <thead><tr><th>Time</th><th>Action</th><th>What happened</th><th>Actor</th><th>Entity</th>
      <th>Severity</th><th class="hide-narrow">Outcome</th><th class="hide-narrow">Tenant</th></tr></thead>
    <tbody>${items.map((item) => html`<tr key=${item.id} data-id=${item.id}>
      <td><a href=${logPath(item.id)}><${Time} value=${item.ts} /></a></td>
      <td><code>${item.action}</code></td>
      <td class="wrap"><${Presentation} item=${item} />${diffs ? html`<${InlineChanges} changes=${item.changes} />` : null}</td>
      <td><${Actor} actor=${item.actor} /></td>
      <td><${EntityLink} entity=${item.entity} /></td>
      <td><${Severity} value=${item.severity} /></td>
      <td class="hide-narrow"><${Outcome} value=${item.outcome} /></td>
      <td class="hide-narrow">${item.tenant || ""}</td>
    </tr>`)}</tbody>
  </table></div>`;
}

/** "50 shown of 1,234 matching" — or "of about …" when the server could only estimate. */
function shownText({ items, cursor, total }) {
  if (!total) return `${items.length} shown${cursor ? ", more available" : ""}.`;
  const all = total.count.toLocaleString();
  return total.exact
    ? `${items.length.toLocaleString()} shown of ${all} matching.`
    : `${items.length.toLocaleString()} shown of about ${all} matching (an estimate: counting them all would take too long).`;
}

/** Pages of one endpoint with "More": keyset cursors, so nothing repeats or goes missing. */
function PagedLogs({ endpoint, query, caption, diffs = false }) {
  const [pages, setPages] = useState({ items: [], cursor: null, loading: true, error: null });
  const key = `${endpoint}?${query.toString()}`;
  const load = async (cursor) => {
    const q = new URLSearchParams(query);
    q.set("limit", String(PAGE_SIZE));
    if (cursor) q.set("cursor", cursor);
    else q.set("count", "true"); // the first page also asks how many match in all
    setPages((p) => ({ ...p, loading: true, error: null }));
    try {
      const page = await request(endpoint, { query: q });
      setPages((p) => ({
        items: cursor ? [...p.items, ...page.items] : page.items,
        cursor: page.next_cursor,
        total: cursor ? p.total : page.total,
        loading: false,
        error: null,
      }));
    } catch (error) {
      setPages((p) => ({ ...p, loading: false, error }));
    }
  };
  useEffect(() => {
    setPages({ items: [], cursor: null, loading: true, error: null });
    load(null);
  }, [key]);
  // A refused search shows only why: "no audit logs match" would be a claim nobody checked.
  if (pages.error && !pages.items.length) return html`<${ErrorBox} error=${pages.error} />`;
  return html`<${ErrorBox} error=${pages.error} />
    <p class="muted" role="status" aria-live="polite">${pages.loading ? "Loading…" : shownText(pages)}</p>
    ${pages.items.length || !pages.loading ? html`<${LogTable} items=${pages.items} caption=${caption} diffs=${diffs} />` : null}
    ${pages.cursor ? html`<div class="toolbar"><button type="button" onClick=${() => load(pages.cursor)} disabled=${pages.loading}>More</button></div>` : null}`;
}

function ExportButtons({ filters }) {
  const [state, setState] = useState({ busy: false, error: null, notice: "" });
  const run = async (format) => {
    setState({ busy: true, error: null, notice: "" });
    try {
      const q = new URLSearchParams(filters);
      q.set("format", format);
      const response = await request(`${API}/export`, { query: q, raw: true });
      const stamp = new Date().toISOString().replace(/[:.]/g, "-");
      const bytes = await download(response, `audit-logs-${stamp}.${format}`);
      setState({ busy: false, error: null, notice: `Exported ${bytes.toLocaleString()} bytes as ${format.toUpperCase()}.` });
    } catch (error) {
      setState({ busy: false, error, notice: "" });
    }
  };
  return html`<div class="toolbar" aria-label="Export">
      <span class="muted">Export these filters:</span>
      <button type="button" onClick=${() => run("csv")} disabled=${state.busy}>Export CSV</button>
      <button type="button" onClick=${() => run("jsonl")} disabled=${state.busy}>Export JSONL</button>
    </div>
    <${ErrorBox} error=${state.error} /><${Notice} text=${state.notice} />`;
}

export function AuditLogsView({ location }) {
  const filters = filtersOf(location.query);
  return html`<h1>Audit log</h1>
    <${FilterForm} base="/console/audit-logs" query=${filters} />
    <${ExportButtons} filters=${filters} />
    <${PagedLogs} endpoint=${API} query=${filters} caption="Audit logs matching the filters" />`;
}

export function EntityView({ params }) {
  const [type, id] = params;
  return html`<h1>History of ${type} <span class="mono">${id}</span></h1>
    <p class="muted">Oldest first, each change inline. <a href=${`/console/audit-logs?entity_type=${seg(type)}&entity_id=${seg(id)}`}>Search with filters</a></p>
    <${PagedLogs} endpoint=${`${API}/entity/${seg(type)}/${seg(id)}`} query=${new URLSearchParams()} caption="The entity's history" diffs=${true} />`;
}

export function ActorView({ params }) {
  const [id] = params;
  return html`<h1>Actions of <span class="mono">${id}</span></h1>
    <p class="muted">Newest first. <a href=${`/console/audit-logs?actor_id=${seg(id)}`}>Search with filters</a></p>
    <${PagedLogs} endpoint=${`${API}/user/${seg(id)}`} query=${new URLSearchParams()} caption="The actor's actions" />`;
}

function Fields({ entries }) {
  const shown = entries.filter(([, v]) => v !== null && v !== undefined && v !== "");
  if (!shown.length) return html`<p class="muted">None.</p>`;
  return html`<dl class="fields">${shown.map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>`;
}

function Changes({ changes }) {
  if (!changes || !changes.length) return html`<p class="muted">No field-level changes.</p>`;
  return html`<div class="table-wrap"><table>
    <caption class="skip">Changes, old to new</caption>
    <thead><tr><th>Field</th><th>Old</th><th></th><th>New</th></tr></thead>
    <tbody>${changes.map((c) => html`<tr>
      <td><code>${c.field}</code></td>
      <td class="wrap"><del class="old">${asText(c.old)}</del></td>
      <td aria-hidden="true">→</td>
      <td class="wrap"><ins class="new">${asText(c.new)}</ins></td>
    </tr>`)}</tbody></table></div>`;
}

// The event's receipt (§8): its inclusion proof and the signed checkpoint, as a JSON file
// anyone can check offline (`auditq verify-receipt`). 409 while the row awaits a checkpoint.
function ReceiptButton({ id }) {
  const [state, setState] = useState({ busy: false, error: null, notice: "" });
  const run = async () => {
    setState({ busy: true, error: null, notice: "" });
    try {
      const response = await request(`${API}/${seg(id)}/proof`, { raw: true });
      await download(response, `receipt-${id}.json`);
      setState({ busy: false, error: null, notice: "Receipt downloaded: check it anywhere with auditq verify-receipt." });
    } catch (error) {
      const waiting = error && error.status === 409;
      setState({ busy: false, error: waiting ? null : error, notice: waiting ? "This event awaits its first checkpoint: try again in a few seconds." : "" });
    }
  };
  return html`<section aria-labelledby="h-receipt"><h2 id="h-receipt">Receipt</h2>
    <${ErrorBox} error=${state.error} /><${Notice} text=${state.notice} />
    <div class="toolbar"><button type="button" onClick=${run} disabled=${state.busy}>${state.busy ? "Preparing…" : "Download receipt"}</button></div>
  </section>`;
}

/** The item exactly as the API gives it (what a receipt hashes), with a copy button. */
function RawJson({ item }) {
  const [copied, setCopied] = useState("");
  const text = JSON.stringify(item, null, 2);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setCopied("Copied to the clipboard.");
    } catch {
      setCopied("The clipboard refused: select the text and copy it by hand.");
    }
  };
  return html`<section aria-labelledby="h-raw"><details><summary><h2 id="h-raw" class="inline-heading">Raw JSON</h2></summary>
    <div class="toolbar"><button type="button" onClick=${copy}>Copy JSON</button><span role="status">${copied}</span></div>
    <pre aria-label="The event as JSON" tabindex="0">${text}</pre>
  </details></section>`;
}

export function DetailView({ params }) {
  const [id] = params;
  const { data: item, error, loading } = useAsync(() => request(`${API}/${seg(id)}`), [id]);
  if (loading) return html`<h1>Audit log</h1><${Loading} when=${true} />`;
  if (error) return html`<h1>Audit log</h1><${ErrorBox} error=${error} />`;
  const req = item.request || {};
  return html`<h1><code>${item.action}</code></h1>
    <p class="lead"><${Presentation} item=${item} /></p>
    <div class="grid2">
      <section aria-labelledby="h-event"><h2 id="h-event">Event</h2>
        <${Fields} entries=${[
          ["Id", html`<span class="mono">${item.id}</span>`],
          ["Time", html`<${Time} value=${item.ts} />`],
          ["Severity", html`<${Severity} value=${item.severity} />`],
          ["Outcome", html`<${Outcome} value=${item.outcome} />`],
          ["Category", item.category],
          ["Tenant", item.tenant],
          ["Source", item.source],
          ["Presentation code", item.presentation ? html`<code>${item.presentation.code}</code>` : null],
        ]} />
      </section>
      <section aria-labelledby="h-who"><h2 id="h-who">Who and what</h2>
        <${Fields} entries=${[
          ["Actor", item.actor ? html`<a href=${actorPath(item.actor.id)}>${item.actor.name || item.actor.id}</a> <span class="muted">(${item.actor.type}, ${item.actor.id})</span>` : null],
          ["Actor email", item.actor ? item.actor.email : null],
          ["Entity", item.entity ? html`<a href=${entityPath(item.entity)}>${item.entity.type} ${item.entity.id}</a>` : null],
          ["Entity name", item.entity ? item.entity.name : null],
        ]} />
        <div class="toolbar">
          ${item.entity ? html`<a class="button" href=${entityPath(item.entity)}>History of this entity</a>` : null}
          ${item.actor ? html`<a class="button" href=${actorPath(item.actor.id)}>Actions of this actor</a>` : null}
        </div>
      </section>
    </div>
    <section aria-labelledby="h-changes"><h2 id="h-changes">Changes</h2><${Changes} changes=${item.changes} /></section>
    <div class="grid2">
      <section aria-labelledby="h-request"><h2 id="h-request">Request context</h2>
        <${Fields} entries=${[
          ["Request id", req.id ? html`<a href=${`/console/audit-logs?request_id=${seg(req.id)}`}>${req.id}</a>` : null],
          ["Client IP", req.ip], ["User agent", req.user_agent], ["Method", req.method],
          ["Path", req.path], ["Status", req.status], ["Duration", req.duration_ms != null ? `${req.duration_ms} ms` : null],
        ]} />
      </section>
      <section aria-labelledby="h-provenance"><h2 id="h-provenance">Provenance</h2>
        <${Fields} entries=${[
          ["Received at", item.received_at ? html`<${Time} value=${item.received_at} />` : null],
          ["Received via", item.received_via],
        ]} />
      </section>
    </div>
    <section aria-labelledby="h-meta"><h2 id="h-meta">Metadata</h2>
      ${item.metadata && Object.keys(item.metadata).length ? html`<${Json} value=${item.metadata} label="Metadata" />` : html`<p class="muted">None.</p>`}
    </section>
    <${RawJson} item=${item} />
    ${item.presentation && Object.keys(item.presentation.params || {}).length
      ? html`<section aria-labelledby="h-params"><h2 id="h-params">Presentation parameters</h2><${Json} value=${item.presentation.params} label="Presentation parameters" /></section>`
      : null}
    <${ReceiptButton} id=${item.id} />`;
}
