// Destinations: each one's health and lag, refreshed while the tab is visible; admins add,
// test (the receiver's reply is shown), pause, resume and remove. A reader sees no control.
import { html, useState } from "../lib.js";
import { request } from "../api.js";
import { seg } from "../router.js";
import { ErrorBox, Field, Notice, Select, Time, duration, useAction, useVisibleInterval } from "../ui.js";

const API = "/api/v1/admin/destinations";
const POLL_MS = 3000;
export const DESTINATION_LAG_WARNING_S = 60; // a destination this far behind needs a look

/** The destinations that fail or lag: what the queue view warns about. */
export function troubled(items) {
  return items.filter((d) => d.state === "failing" || d.lag_s > DESTINATION_LAG_WARNING_S);
}

function TestReply({ result }) {
  if (!result) return null;
  const status = result.status === null ? "no HTTP status (syslog)" : `HTTP ${result.status}`;
  return html`<section class=${result.delivered ? "notice" : "warning"} aria-labelledby="h-test" aria-live="polite">
    <h2 id="h-test">Test of ${result.name}: ${result.delivered ? "delivered" : "not delivered"}</h2>
    <p>Event <span class="mono">${result.event_id}</span>, ${status}.${result.error ? ` ${result.error}` : ""}</p>
    ${result.reply ? html`<pre class="json" aria-label="The receiver's reply">${result.reply}</pre>` : null}
  </section>`;
}

function AddForm({ action, onAdded }) {
  const add = async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const data = new FormData(form);
    const body = {
      name: String(data.get("name") || "").trim(),
      type: String(data.get("type")),
      url: String(data.get("url") || "").trim(),
      format: String(data.get("format")),
      filter: String(data.get("filter") || "").trim(),
      allow_private: data.get("allow_private") === "on",
    };
    const secret = String(data.get("secret") || "");
    if (secret) body.secret = secret;
    const made = await action.run(`Add destination ${body.name} (${body.type})?`, async () => {
      await request(API, { method: "POST", body });
      return `Destination ${body.name} added: it gets every event stored from now on.`;
    }, { confirmLabel: "Add" });
    if (made) {
      form.reset();
      onAdded();
    }
  };
  return html`<details><summary>Add a destination</summary>
    <form class="inline" onSubmit=${add} aria-label="Add a destination">
      <${Field} label="Name" name="name" required=${true} />
      <${Select} label="Type" name="type" value="webhook"
        options=${[["webhook", "webhook"], ["syslog", "syslog"], ["splunk-hec", "Splunk HEC"], ["elasticsearch", "Elasticsearch"]]} />
      <${Field} label="URL" name="url" required=${true} placeholder="https://… or tls://host:6514" />
      <${Select} label="Format" name="format" value="json" options=${[["json", "item JSON"], ["ocsf", "OCSF"], ["cef", "CEF (syslog)"]]} />
      <${Field} label="Filter" name="filter" placeholder="action_prefix=auth." />
      <${Field} label="Secret" name="secret" type="password" />
      <label for="f-allow_private"><span>Private addresses</span>
        <input id="f-allow_private" name="allow_private" type="checkbox" /></label>
      <button type="submit" class="primary" disabled=${action.busy}>Add</button>
    </form></details>`;
}

export function DestinationsView({ who }) {
  const [items, setItems] = useState(null);
  const [error, setError] = useState(null);
  const [tested, setTested] = useState(null);
  const [tick, setTick] = useState(0);
  const action = useAction();
  const admin = who.role === "admin";
  const load = async () => {
    try {
      setItems((await request(API)).items);
      setError(null);
    } catch (exc) {
      setError(exc);
    }
  };
  useVisibleInterval(load, POLL_MS);
  const refresh = () => {
    setTick(tick + 1);
    load();
  };
  const test = async (name) => {
    const result = await action.run(`Send a synthetic test event to ${name}?`, () =>
      request(`${API}/${seg(name)}/test`, { method: "POST" }), { confirmLabel: "Send" });
    if (result) setTested({ ...result, name });
    refresh();
  };
  const pause = async (d) => {
    const paused = d.state !== "paused";
    const verb = paused ? "Pause" : "Resume";
    await action.run(`${verb} ${d.name}?${paused ? " Events wait for it; none is lost." : ""}`, async () => {
      await request(`${API}/${seg(d.name)}`, { method: "PATCH", body: { paused } });
      return `${d.name} ${paused ? "paused" : "resumed"}.`;
    }, { confirmLabel: verb });
    refresh();
  };
  const remove = async (name) => {
    await action.run(`Remove destination ${name}? Its position and secret go too.`, async () => {
      await request(`${API}/${seg(name)}`, { method: "DELETE" });
      return `${name} removed.`;
    }, { confirmLabel: "Remove", danger: true });
    refresh();
  };
  const list = items || [];
  const warnings = troubled(list);
  return html`<h1>Destinations</h1>
    <p class="muted">Every stored event is streamed to each destination at least once, in stored order; deduplicate by event id.</p>
    <${ErrorBox} error=${error} /><${ErrorBox} error=${action.error} /><${Notice} text=${action.notice} />
    ${warnings.map((d) => html`<p class="warning" role="alert">${d.name} is ${d.state === "failing" ? "failing" : "behind"}:
      ${d.lag_events.toLocaleString()} events waiting for ${duration(d.lag_s)}.${d.last_error ? ` Last error: ${d.last_error}` : ""}</p>`)}
    <${TestReply} result=${tested} />
    ${admin ? html`<${AddForm} action=${action} onAdded=${refresh} />` : null}
    ${items === null ? html`<p class="muted" role="status">Loading…</p>` : null}
    ${items && !list.length ? html`<p class="muted">No destinations yet.</p>` : null}
    ${list.length ? html`<div class="table-wrap"><table>
      <caption class="skip">Destinations and their health</caption>
      <thead><tr><th>Name</th><th>Type</th><th>State</th><th class="num">Lag (events)</th><th class="num">Lag</th>
        <th>Last delivered</th><th class="num">Delivered</th><th class="num">Failed attempts</th><th>Last error</th>
        ${admin ? html`<th><span class="skip">Actions</span></th>` : null}</tr></thead>
      <tbody>${list.map((d) => html`<tr key=${d.name}>
        <td>${d.name}<div class="muted mono">${d.url}</div></td>
        <td>${d.type} <span class="muted">${d.format}</span></td>
        <td>${d.state === "failing" ? html`<strong class="outcome-failure">failing</strong>` : d.state}</td>
        <td class="num">${d.lag_events.toLocaleString()}</td><td class="num">${duration(d.lag_s)}</td>
        <td><${Time} value=${d.last_delivered_at} /></td>
        <td class="num">${d.delivered_total.toLocaleString()}</td><td class="num">${d.failed_attempts_total.toLocaleString()}</td>
        <td>${d.last_error || html`<span class="muted">none</span>`}</td>
        ${admin ? html`<td class="actions">
          <button type="button" onClick=${() => test(d.name)} aria-label=${`Test ${d.name}`} disabled=${action.busy}>Test</button>
          <button type="button" onClick=${() => pause(d)} aria-label=${`${d.state === "paused" ? "Resume" : "Pause"} ${d.name}`} disabled=${action.busy}>${d.state === "paused" ? "Resume" : "Pause"}</button>
          <button type="button" class="danger" onClick=${() => remove(d.name)} aria-label=${`Remove ${d.name}`} disabled=${action.busy}>Remove</button>
        </td>` : null}
      </tr>`)}</tbody></table></div>` : null}`;
}
