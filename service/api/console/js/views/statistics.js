// Statistics: events per day, by severity and outcome, top actors and actions.
import { html, useMemo } from "../lib.js";
import { request } from "../api.js";
import { navigate, seg } from "../router.js";
import { TimeChart } from "../chart.js";
import { ErrorBox, Field, Loading, TimeField, actorPath, fromLocalInput, useAsync } from "../ui.js";

function Bars({ title, rows }) {
  const max = Math.max(1, ...rows.map((r) => r.count));
  return html`<section aria-label=${title}><h2>${title}</h2>
    ${rows.length ? html`<ul class="bars">${rows.map((r) => html`<li>
      <span class="name" title=${r.name}>${r.link ? html`<a href=${r.link}>${r.name}</a>` : r.name}</span>
      <meter min="0" max=${max} value=${r.count} aria-label=${`${r.name}: ${r.count}`}></meter>
      <span class="num">${r.count.toLocaleString()}</span>
    </li>`)}</ul>` : html`<p class="muted">Nothing in this window.</p>`}
  </section>`;
}

export function StatisticsView({ location }) {
  const query = location.query;
  const params = new URLSearchParams();
  for (const name of ["since", "until", "tenant"]) if (query.get(name)) params.set(name, query.get(name));
  const key = params.toString();
  const { data, error, loading } = useAsync(
    () => request("/api/v1/admin/audit-logs/statistics", { query: params }), [key]);
  const perDay = useMemo(() => data && [
    data.per_day.map((d) => Date.parse(`${d.day}T00:00:00Z`) / 1000),
    data.per_day.map((d) => d.count),
  ], [data]);
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
    navigate(`/console/statistics${next.toString() ? `?${next}` : ""}`);
  };
  const total = data ? data.per_day.reduce((sum, d) => sum + d.count, 0) : 0;
  const tenantFilter = params.get("tenant") ? `&tenant=${seg(params.get("tenant"))}` : "";
  return html`<h1>Statistics</h1>
    <form class="filters" aria-label="Window" onSubmit=${submit} key=${key}>
      <${TimeField} label="Since" name="since" value=${query.get("since")} />
      <${TimeField} label="Until" name="until" value=${query.get("until")} />
      <${Field} label="Tenant" name="tenant" value=${query.get("tenant") || ""} />
      <div class="actions"><button class="primary" type="submit">Show</button></div>
      <p class="muted">Empty fields: the last 30 days, every tenant.</p>
    </form>
    <${ErrorBox} error=${error} /><${Loading} when=${loading} />
    ${data ? html`
      <div class="cards">
        <div class="card"><div class="label">Events in the window</div><div class="value">${total.toLocaleString()}</div></div>
        <div class="card"><div class="label">Critical</div><div class="value">${(data.by_severity.critical || 0).toLocaleString()}</div></div>
        <div class="card"><div class="label">Failures</div><div class="value">${(data.by_outcome.failure || 0).toLocaleString()}</div></div>
      </div>
      <section aria-labelledby="h-per-day"><h2 id="h-per-day">Events per day</h2>
        <${TimeChart} data=${perDay} label="Events per day" bars=${true} />
      </section>
      <div class="grid2">
        <${Bars} title="Top actors" rows=${data.top_actors.map((a) => ({ name: a.actor_id, count: a.count, link: actorPath(a.actor_id) }))} />
        <${Bars} title="Top actions" rows=${data.top_actions.map((a) => ({ name: a.action, count: a.count, link: `/console/audit-logs?action=${seg(a.action)}${tenantFilter}` }))} />
        <${Bars} title="By severity" rows=${Object.entries(data.by_severity).map(([k, v]) => ({ name: k, count: v, link: `/console/audit-logs?severity=${seg(k)}${tenantFilter}` }))} />
        <${Bars} title="By outcome" rows=${Object.entries(data.by_outcome).map(([k, v]) => ({ name: k, count: v, link: `/console/audit-logs?outcome=${seg(k)}${tenantFilter}` }))} />
      </div>` : null}`;
}
