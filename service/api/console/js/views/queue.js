// Queue health: counts, oldest wait, throughput over the last 15 minutes, workers and breakers.
import { html, useState } from "../lib.js";
import { hasRoute, request } from "../api.js";
import { TimeChart } from "../chart.js";
import { ErrorBox, Time, ago, duration, useVisibleInterval } from "../ui.js";
import { troubled } from "./destinations.js";

const POLL_MS = 3000;
const THROUGHPUT = "/api/v1/admin/queue/throughput";
const DESTINATIONS = "/api/v1/admin/destinations";
export const OLDEST_WAIT_WARNING_S = 60; // a queued task older than this means workers lag

export function QueueView() {
  const [stats, setStats] = useState(null);
  const [series, setSeries] = useState(null);
  const [error, setError] = useState(null);
  const [destinations, setDestinations] = useState([]);
  useVisibleInterval(async () => {
    try {
      const [next, recent, streams] = await Promise.all([
        request("/api/v1/admin/queue/stats"),
        // An older server has no series: the chart is left out.
        hasRoute(THROUGHPUT).then((has) => (has ? request(THROUGHPUT) : null)),
        hasRoute(DESTINATIONS).then((has) => (has ? request(DESTINATIONS) : null)),
      ]);
      setDestinations(streams ? troubled(streams.items) : []);
      setStats(next);
      setSeries(recent && [
        recent.per_minute.map((m) => Date.parse(m.until) / 1000),
        recent.per_minute.map((m) => m.events_per_s),
      ]);
      setError(null);
    } catch (exc) {
      setError(exc);
    }
  }, POLL_MS);
  if (!stats) return html`<h1>Queue</h1><${ErrorBox} error=${error} /><p class="muted" role="status">Loading…</p>`;
  const open = stats.workers.filter((w) => w.breaker_open);
  const warnings = [];
  if (open.length) warnings.push(`The breaker is open on ${open.length} worker(s): PostgreSQL is failing and they have stopped taking work.`);
  if (stats.oldest_queued_age_s > OLDEST_WAIT_WARNING_S) warnings.push(`The oldest queued task has waited ${duration(stats.oldest_queued_age_s)} (more than ${OLDEST_WAIT_WARNING_S} s).`);
  if (!stats.workers.length) warnings.push("No worker has sent a heartbeat: nothing is taking tasks off the queue.");
  for (const d of destinations) {
    warnings.push(`Destination ${d.name} is ${d.state === "failing" ? "failing" : "behind"}: ${d.lag_events.toLocaleString()} events waiting for ${duration(d.lag_s)} (see Destinations).`);
  }
  const card = (label, value) => html`<div class="card"><div class="label">${label}</div><div class="value">${value}</div></div>`;
  return html`<h1>Queue <span class="muted mono">${stats.queue}</span></h1>
    <${ErrorBox} error=${error} />
    ${warnings.map((w) => html`<p class="warning" role="alert">${w}</p>`)}
    <div class="cards">
      ${card("Queued", stats.counts.queued.toLocaleString())}
      ${card("In progress", stats.counts.in_progress.toLocaleString())}
      ${card("Retrying", stats.counts.retrying.toLocaleString())}
      ${card("Failed", stats.counts.failed.toLocaleString())}
      ${card("Complete", stats.counts.complete.toLocaleString())}
      ${card("Oldest wait", duration(stats.oldest_queued_age_s))}
      ${card("Events/s (1 min)", stats.events_per_s_1m.toFixed(1))}
    </div>
    ${series ? html`<section aria-labelledby="h-rate"><h2 id="h-rate">Events per second, last 15 minutes</h2>
      <p class="muted">Each point: the average over the minute that ends there.</p>
      <${TimeChart} data=${series} label="Events stored per second, per minute, last 15 minutes" height=${180} />
    </section>` : null}
    <section aria-labelledby="h-workers"><h2 id="h-workers">Workers</h2>
      ${stats.workers.length ? html`<div class="table-wrap"><table>
        <caption class="skip">Workers</caption>
        <thead><tr><th>Worker</th><th>Heartbeat</th><th class="num">Running</th><th class="num">Done</th>
          <th class="num">Failed</th><th class="num">Events stored</th><th class="num hide-narrow">Dead-lettered</th><th>Breaker</th></tr></thead>
        <tbody>${stats.workers.map((w) => html`<tr>
          <td><span class="mono">${w.id}</span><div class="muted">${w.host} pid ${w.pid}, since <${Time} value=${w.started_at} /></div></td>
          <td>${ago(w.last_seen)}</td>
          <td class="num">${w.jobs_running}</td><td class="num">${w.jobs_done.toLocaleString()}</td>
          <td class="num">${w.jobs_failed.toLocaleString()}</td><td class="num">${w.events_stored.toLocaleString()}</td>
          <td class="num hide-narrow">${w.events_dead_lettered.toLocaleString()}</td>
          <td>${w.breaker_open ? html`<strong class="outcome-failure">open</strong>` : "closed"}</td>
        </tr>`)}</tbody></table></div>` : html`<p class="muted">No worker is alive.</p>`}
    </section>`;
}
