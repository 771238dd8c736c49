// Tasks: tabs per status with counts, detail with payload and failure, retry, bulk retry, cleanup.
import { html, useEffect, useRef, useState } from "../lib.js";
import { apiDocument, request } from "../api.js";
import { navigate, seg } from "../router.js";
import {
  ErrorBox, Field, Json, Loading, Notice, Select, Time, TimeField, fromLocalInput, plainReason, useAction,
  usePolled, useVisibleInterval, REFRESH_MS,
} from "../ui.js";

const API = "/api/v1/admin/tasks";
const STATUSES = [
  ["queued", "Queued"], ["in_progress", "In progress"], ["retrying", "Retrying"],
  ["failed", "Failed"], ["complete", "Complete"],
];
const taskPath = (id) => `/console/tasks/${seg(id)}`;

function Tabs({ status, counts }) {
  const tab = (value, text) => {
    const href = value ? `/console/tasks?status=${value}` : "/console/tasks";
    const count = value && counts ? ` (${counts[value].toLocaleString()})` : "";
    return html`<a href=${href} aria-current=${status === value ? "page" : null}>${text}${count}</a>`;
  };
  return html`<nav class="tabs" aria-label="Task status">${tab("", "All")}${STATUSES.map(([v, t]) => tab(v, t))}</nav>`;
}

function TaskTable({ items }) {
  if (!items.length) return html`<p class="muted">No tasks here.</p>`;
  return html`<div class="table-wrap"><table>
    <caption class="skip">Tasks</caption>
    <thead><tr><th>Task</th><th>Status</th><th class="num">Attempts</th><th class="num">Events</th>
      <th class="hide-narrow">Enqueued</th><th>Failure</th></tr></thead>
    <tbody>${items.map((t) => html`<tr key=${t.id} data-id=${t.id}>
      <td><a href=${taskPath(t.id)}><span class="mono">${t.id}</span></a><div class="muted">${t.presentation.title}</div></td>
      <td>${t.status}</td>
      <td class="num">${t.attempts} / ${t.max_attempts}</td>
      <td class="num">${t.event_count}</td>
      <td class="hide-narrow"><${Time} value=${t.enqueued_at} /></td>
      <td class="wrap">${t.failure ? `${t.failure.error_name}: ${plainReason(t.failure.message)}` : ""}</td>
    </tr>`)}</tbody></table></div>`;
}

function RetryFailed({ onDone }) {
  const action = useAction();
  const submit = async (event) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    const filter = {};
    for (const name of ["classification", "error_name"]) {
      const v = String(form.get(name) || "").trim();
      if (v) filter[name] = v;
    }
    for (const name of ["older_than", "newer_than"]) {
      const v = fromLocalInput(String(form.get(name) || ""));
      if (v) filter[name] = v;
    }
    const described = Object.keys(filter).length
      ? Object.entries(filter).map(([k, v]) => `${k} ${v}`).join(", ") : "no filter: every failed task";
    // The count first: the confirmation says how many tasks the action takes.
    let matching = "(uncounted: the server did not answer the count)";
    try {
      matching = (await request(`${API}/count-failed`, { method: "POST", body: filter })).matching;
    } catch {
      // The action itself still asks first and reports its own error.
    }
    const discard = event.submitter?.value === "discard";
    const question = discard
      ? `Discard the ${matching} failed task(s) matching (${described})? Their events are dropped for good. The discard is audited.`
      : `Retry the ${matching} failed task(s) matching (${described})?`;
    const result = await action.run(question, async () => {
      if (discard) {
        const done = await request(`${API}/discard-failed`, { method: "POST", body: filter });
        return `${done.discarded} failed task(s) discarded.`;
      }
      const done = await request(`${API}/retry-failed`, { method: "POST", body: filter });
      return `${done.retried} failed task(s) queued again.`;
    }, discard ? { confirmLabel: "Discard them", danger: true } : { confirmLabel: "Retry them" });
    if (result) onDone();
  };
  return html`<details><summary>Retry every failed task matching a filter, or discard them</summary>
    <form class="inline" onSubmit=${submit} aria-label="Retry failed tasks">
      <${Select} label="Classification" name="classification" value=""
        options=${[["", "any"], ["data", "data"], ["unknown", "unknown"], ["invalid", "invalid"]]} />
      <${Field} label="Error name" name="error_name" />
      <${TimeField} label="Failed before" name="older_than" />
      <${TimeField} label="Failed after" name="newer_than" />
      <button type="submit" class="primary" value="retry" disabled=${action.busy}>Retry matching</button>
      <button type="submit" class="danger" value="discard" disabled=${action.busy}>Discard matching</button>
    </form>
    <${ErrorBox} error=${action.error} /><${Notice} text=${action.notice} />
  </details>`;
}

function Cleanup({ onDone }) {
  const action = useAction();
  const [defaults, setDefaults] = useState(null);
  useEffect(() => {
    apiDocument().then((doc) => {
      const props = doc.components?.schemas?.CleanupPolicy?.properties || {};
      setDefaults({
        complete_older_than_days: props.complete_older_than_days?.default ?? 365,
        failed_older_than_days: props.failed_older_than_days?.default ?? 90,
        keep_recent_failed: props.keep_recent_failed?.default ?? 100,
      });
    });
  }, []);
  if (!defaults) return null;
  const submit = async (event) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    const policy = {};
    for (const name of Object.keys(defaults)) policy[name] = Number(form.get(name));
    const result = await action.run(
      `Delete complete tasks older than ${policy.complete_older_than_days} days and failed tasks older than ${policy.failed_older_than_days} days, keeping the ${policy.keep_recent_failed} most recent failures?`,
      async () => {
        const done = await request(`${API}/cleanup`, { method: "POST", body: policy });
        return `Deleted ${done.deleted.complete} complete and ${done.deleted.failed} failed task(s).`;
      }, { confirmLabel: "Delete", danger: true });
    if (result) onDone();
  };
  return html`<details><summary>Clean up old tasks</summary>
    <p class="muted">Policy defaults: complete tasks kept ${defaults.complete_older_than_days} days, failed ones ${defaults.failed_older_than_days} days, the ${defaults.keep_recent_failed} most recent failures always kept.</p>
    <form class="inline" onSubmit=${submit} aria-label="Clean up tasks">
      <${Field} label="Complete older than (days)" name="complete_older_than_days" type="number" min="0" value=${defaults.complete_older_than_days} required=${true} />
      <${Field} label="Failed older than (days)" name="failed_older_than_days" type="number" min="0" value=${defaults.failed_older_than_days} required=${true} />
      <${Field} label="Keep recent failed" name="keep_recent_failed" type="number" min="0" value=${defaults.keep_recent_failed} required=${true} />
      <button type="submit" class="danger" disabled=${action.busy}>Clean up</button>
    </form>
    <${ErrorBox} error=${action.error} /><${Notice} text=${action.notice} />
  </details>`;
}

/** Each task once, in the order first seen (a task that moves while pages load stays once). */
export function uniqueTasks(items) {
  const seen = new Set();
  return items.filter((t) => !seen.has(t.id) && seen.add(t.id));
}

export function TasksView({ location, who }) {
  const status = location.query.get("status") || "";
  const kind = location.query.get("kind") || "";
  const [generation, setGeneration] = useState(0);
  const [pages, setPages] = useState({ items: [], cursor: null, more: false, loading: true, error: null });
  const shown = useRef(pages);
  shown.current = pages;
  const query = (cursor) => {
    const q = new URLSearchParams();
    if (status) q.set("status", status);
    if (kind) q.set("kind", kind);
    if (cursor) q.set("cursor", cursor);
    return q;
  };
  const more = async () => {
    setPages((p) => ({ ...p, loading: true, error: null }));
    try {
      const page = await request(API, { query: query(pages.cursor) });
      setPages((p) => ({ items: uniqueTasks([...p.items, ...page.items]), cursor: page.next_cursor, more: true, loading: false, error: null }));
    } catch (error) {
      setPages((p) => ({ ...p, loading: false, error }));
    }
  };
  useEffect(() => setPages({ items: [], cursor: null, more: false, loading: true, error: null }), [status, kind, generation]);
  // While visible: the counts and the first page again (as the Queue view); once "More" was
  // used, only the counts, so the rows a user is reading do not move under them.
  const counts = usePolled(() => request("/api/v1/admin/queue/stats").then((st) => st.counts), [generation]);
  useVisibleInterval(async () => {
    if (shown.current.more) return;
    try {
      const page = await request(API, { query: query(null) });
      setPages((p) => (p.more ? p : { items: uniqueTasks(page.items), cursor: page.next_cursor, more: false, loading: false, error: null }));
    } catch (error) {
      setPages((p) => ({ ...p, loading: false, error }));
    }
  }, REFRESH_MS, [status, kind, generation]);
  const refresh = () => setGeneration((n) => n + 1);
  const admin = who.role === "admin";
  return html`<h1>Tasks</h1>
    <${Tabs} status=${status} counts=${counts.data} />
    <${ErrorBox} error=${counts.error} />
    ${admin ? html`<div class="panels">${status === "failed" || status === "" ? html`<${RetryFailed} onDone=${refresh} />` : null}<${Cleanup} onDone=${refresh} /></div>` : null}
    <${ErrorBox} error=${pages.error} /><${Loading} when=${pages.loading && !pages.items.length} />
    <${TaskTable} items=${pages.items} />
    ${pages.cursor ? html`<div class="toolbar"><button type="button" onClick=${more} disabled=${pages.loading}>More</button></div>` : null}`;
}

export function TaskView({ params, who }) {
  const [id] = params;
  const [discarded, setDiscarded] = useState(null);
  if (discarded) {
    return html`<h1>Task <span class="mono">${id}</span></h1>
      <p class="notice" role="status">Task ${id} was discarded: its ${discarded.event_count} event(s) are dropped for good. The audit log records the discard (<a href="/console/audit-logs?action=task.discarded">task.discarded</a>).</p>
      <p><a href="/console/tasks?status=failed">Failed tasks</a></p>`;
  }
  return html`<${TaskDetail} id=${id} who=${who} onDiscarded=${setDiscarded} />`;
}

function TaskDetail({ id, who, onDiscarded }) {
  // Polled while visible: after a retry the page follows the task to its real final state.
  const { data: task, error, loading, reload } = usePolled(() => request(`${API}/${seg(id)}`), [id]);
  const action = useAction();
  const retry = () => action.run(`Retry task ${id}? Its ${task.event_count} event(s) are queued again under the same id.`, async () => {
    await request(`${API}/${seg(id)}/retry`, { method: "POST" });
    reload();
    return "Retry requested: the task was queued again. Its state below follows it as it runs.";
  }, { confirmLabel: "Retry" });
  const discard = () => action.run(`Discard task ${id}? Its ${task.event_count} event(s) are dropped for good: do this only for a task that can never succeed (an invalid payload). The discard is audited.`, async () => {
    const done = await request(`${API}/${seg(id)}/discard`, { method: "POST" });
    onDiscarded(done.task);
    return "";
  }, { confirmLabel: "Discard", danger: true });
  return html`<h1>Task <span class="mono">${id}</span></h1>
    <p><a href="/console/tasks">All tasks</a> · <a href=${`/console/tasks?status=failed`}>Failed tasks</a></p>
    <${ErrorBox} error=${error} /><${Loading} when=${loading} />
    <${ErrorBox} error=${action.error} /><${Notice} text=${action.notice} />
    ${task ? html`
      <p aria-live="polite"><strong>${task.presentation.title}</strong> — ${task.presentation.status_message}</p>
      <p class="muted">${plainReason(task.presentation.detail_message)}</p>
      ${who.role === "admin" && task.status === "failed"
        ? html`<div class="toolbar"><button type="button" class="primary" onClick=${retry} disabled=${action.busy}>Retry this task</button>
            <button type="button" class="danger" onClick=${discard} disabled=${action.busy}>Discard this task</button></div>` : null}
      <div class="grid2">
        <section aria-labelledby="h-task"><h2 id="h-task">Task</h2>
          <dl class="fields">
            <dt>Status</dt><dd>${task.status}</dd>
            <dt>Kind</dt><dd>${task.kind}</dd>
            <dt>Attempts</dt><dd>${task.attempts} of ${task.max_attempts}</dd>
            <dt>Events</dt><dd>${task.event_count}</dd>
            <dt>Enqueued</dt><dd><${Time} value=${task.enqueued_at} /></dd>
            <dt>Started</dt><dd><${Time} value=${task.started_at} /></dd>
            <dt>Finished</dt><dd><${Time} value=${task.finished_at} /></dd>
            <dt>Next attempt</dt><dd><${Time} value=${task.next_attempt_at} /></dd>
          </dl>
        </section>
        <section aria-labelledby="h-failure"><h2 id="h-failure">Failure</h2>
          ${task.failure ? html`<dl class="fields">
            <dt>Error</dt><dd><code>${task.failure.error_name}</code></dd>
            <dt>Classification</dt><dd>${task.failure.classification}</dd>
            <dt>Message</dt><dd>${plainReason(task.failure.message)}</dd>
          </dl>` : html`<p class="muted">None.</p>`}
        </section>
      </div>
      ${task.failures && task.failures.length ? html`<section aria-labelledby="h-attempts"><h2 id="h-attempts">Failed runs</h2>
        <p class="muted">Every failure of this task, oldest first, kept across retries.</p>
        <ol class="runs">${task.failures.map((f) => html`<li>
          <${Time} value=${f.failed_at} /> — <code>${f.error_name}</code> (${f.classification}), attempt ${f.attempts}</li>`)}</ol>
        </section>` : null}
      <section aria-labelledby="h-payload"><h2 id="h-payload">Payload (redacted)</h2><${Json} value=${task.payload} label="Payload" /></section>` : null}`;
}
