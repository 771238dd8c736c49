// Statistics: events per day or hour, by severity and outcome, top actors (named) and actions.
import { html, useMemo } from "../lib.js";
import { request } from "../api.js";
import { navigate, seg } from "../router.js";
import { TimeChart } from "../chart.js";
import {
  ErrorBox, Field, Loading, Select, Time, TimeField, actorPath, fromLocalInput, useAsync,
} from "../ui.js";

/** The chart's counts as a table (folded): each bucket's start and count, readable and
 * copyable where a chart is not. */
function CountsTable({ buckets, per }) {
  return html`<details class="counts"><summary>The counts per ${per} as a table</summary>
    <div class="table-wrap"><table><caption class="skip">Events per ${per}</caption>
      <thead><tr><th>${per === "hour" ? "Hour from" : "Day"}</th><th class="num">Events</th></tr></thead>
      <tbody>${buckets.map((b) => html`<tr key=${b.at}>
        <td>${per === "hour" ? html`<${Time} value=${b.at} />` : b.at}</td>
        <td class="num">${b.count.toLocaleString()}</td></tr>`)}</tbody>
    </table></div></details>`;
}

function Bars({ title, rows }) {
  const max = Math.max(1, ...rows.map((r) => r.count));
  return html`<section aria-label=${title}><h2>${title}</h2>
    ${rows.length ? html`<ul class="bars">${rows.map((r) => html`<li>
      <span class="name" title=${r.sub ? `${r.name} (${r.sub})` : r.name}>${r.link ? html`<a href=${r.link}>${r.name}</a>` : r.name}${r.sub ? html`<small class="sub muted">${r.sub}</small>` : null}</span>
      <meter min="0" max=${max} value=${r.count} aria-label=${`${r.name}: ${r.count}`}></meter>
      <span class="num">${r.count.toLocaleString()}</span>
    </li>`)}</ul>` : html`<p class="muted">Nothing in this window.</p>`}
  </section>`;
}

export function StatisticsView({ location }) {
  const query = location.query;
  const params = new URLSearchParams();
  for (const name of ["since", "until", "tenant"]) if (query.get(name)) params.set(name, query.get(name));
  const hourly = query.get("bucket") === "hour";
  if (hourly) params.set("bucket", "hour");
  const key = params.toString();
  const { data, error, loading } = useAsync(
    () => request("/api/v1/admin/audit-logs/statistics", { query: params }), [key]);
  const series = useMemo(() => data && (hourly && data.per_hour
    ? [data.per_hour.map((h) => Date.parse(h.hour) / 1000), data.per_hour.map((h) => h.count)]
    : [data.per_day.map((d) => Date.parse(`${d.day}T00:00:00Z`) / 1000), data.per_day.map((d) => d.count)]),
  [data, hourly]);
  const submit = (event) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    const next = new URLSearchParams();
    for (const name of ["since", "until"]) {
      const value = fromLocalInput(String(form.get(name) || ""));
      if (value) next.set(name, value);
    }
    const tenant = String(form.get("tenant") || "").trim();
    if (tenant) next.set("tenant", tenant);
    if (form.get("bucket") === "hour") next.set("bucket", "hour");
    navigate(`/console/statistics${next.toString() ? `?${next}` : ""}`);
  };
  const total = data ? (hourly && data.per_hour ? data.per_hour : data.per_day).reduce((sum, d) => sum + d.count, 0) : 0;
  const per = hourly ? "hour" : "day";
  const tenantFilter = params.get("tenant") ? `&tenant=${seg(params.get("tenant"))}` : "";
  return html`<h1>Statistics</h1>
    <form class="filters" aria-label="Window" onSubmit=${submit} key=${key}>
      <${TimeField} label="Since" name="since" value=${query.get("since")} />
      <${TimeField} label="Until" name="until" value=${query.get("until")} />
      <${Field} label="Tenant" name="tenant" value=${query.get("tenant") || ""} />
      <${Select} label="Count per" name="bucket" value=${hourly ? "hour" : "day"}
        options=${[["day", "day (up to 10 years)"], ["hour", "hour (up to 7 days)"]]} />
      <div class="actions"><button class="primary" type="submit">Show</button></div>
      <p class="muted">Empty fields: the last ${hourly ? "24 hours" : "30 days"}, every tenant.</p>
    </form>
    <${ErrorBox} error=${error} /><${Loading} when=${loading} />
    ${data ? html`
      <div class="cards">
        <div class="card"><div class="label">Events in the window</div><div class="value">${total.toLocaleString()}</div></div>
        <div class="card"><div class="label">Critical</div><div class="value">${(data.by_severity.critical || 0).toLocaleString()}</div></div>
        <div class="card"><div class="label">Failures</div><div class="value">${(data.by_outcome.failure || 0).toLocaleString()}</div></div>
      </div>
      <section aria-labelledby="h-per-day"><h2 id="h-per-day">Events per ${per}</h2>
        <${TimeChart} data=${series} label=${`Events per ${per}`} bars=${true} step=${hourly ? 3600 : 86400} />
        <${CountsTable} per=${per} buckets=${hourly && data.per_hour
          ? data.per_hour.map((h) => ({ at: h.hour, count: h.count }))
          : data.per_day.map((d) => ({ at: d.day, count: d.count }))} />
      </section>
      <div class="grid2">
        <${Bars} title="Top actors" rows=${data.top_actors.map((a) => ({ name: a.actor_name || a.actor_id, sub: a.actor_name ? a.actor_id : null, count: a.count, link: actorPath(a.actor_id) }))} />
        <${Bars} title="Top actions" rows=${data.top_actions.map((a) => ({ name: a.action, count: a.count, link: `/console/audit-logs?action=${seg(a.action)}${tenantFilter}` }))} />
        <${Bars} title="By severity" rows=${Object.entries(data.by_severity).map(([k, v]) => ({ name: k, count: v, link: `/console/audit-logs?severity=${seg(k)}${tenantFilter}` }))} />
        <${Bars} title="By outcome" rows=${Object.entries(data.by_outcome).map(([k, v]) => ({ name: k, count: v, link: `/console/audit-logs?outcome=${seg(k)}${tenantFilter}` }))} />
      </div>` : null}`;
}
