// Integrity (§8): the last seal and verification, and running one; absent routes shown as such.
import { html, useState } from "../lib.js";
import { hasRoute, request } from "../api.js";
import { ErrorBox, Json, Loading, Notice, Time, useAction, useAsync } from "../ui.js";

const API = "/api/v1/admin/integrity";
const POLL_MS = 2000;
const POLL_TIMES = 30;

function Verification({ value }) {
  if (!value) return html`<p class="muted">No verification has run yet.</p>`;
  const entries = Object.entries(value);
  return html`<dl class="fields">${entries.map(([k, v]) => html`<dt>${k.replaceAll("_", " ")}</dt>
    <dd>${typeof v === "string" && /^\d{4}-\d\d-\d\dT/.test(v) ? html`<${Time} value=${v} />`
      : typeof v === "object" && v !== null ? html`<${Json} value=${v} />` : String(v)}</dd>`)}</dl>`;
}

export function IntegrityView({ who }) {
  const [generation, setGeneration] = useState(0);
  const state = useAsync(async () => {
    if (!(await hasRoute(API))) return { available: false };
    return { available: true, integrity: await request(API) };
  }, [generation]);
  const action = useAction();
  const verify = () => action.run("Run a verification of every checkpoint now? It reads every stored row.", async () => {
    const before = JSON.stringify(state.data.integrity.last_verification);
    await request(`${API}/verify`, { method: "POST" });
    for (let i = 0; i < POLL_TIMES; i += 1) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      const now = await request(API);
      if (JSON.stringify(now.last_verification) !== before) break;
    }
    setGeneration((n) => n + 1);
    return "Verification requested; its result is shown below once it has finished.";
  }, { confirmLabel: "Verify" });
  if (state.loading && !state.data) return html`<h1>Integrity</h1><${Loading} when=${true} />`;
  if (state.error) return html`<h1>Integrity</h1><${ErrorBox} error=${state.error} />`;
  if (!state.data.available) {
    return html`<h1>Integrity</h1><p class="notice" role="status">Integrity checks are not available on this server: it has no ${API} route yet.</p>`;
  }
  const { integrity } = state.data;
  return html`<h1>Integrity</h1>
    <${ErrorBox} error=${action.error} /><${Notice} text=${action.notice} />
    <div class="cards">
      <div class="card"><div class="label">Last sealed</div><div class="value"><${Time} value=${integrity.last_sealed_at} /></div></div>
      <div class="card"><div class="label">Rows not sealed yet</div><div class="value">${Number(integrity.unsealed_rows ?? 0).toLocaleString()}</div></div>
    </div>
    ${who.role === "admin" ? html`<div class="toolbar"><button type="button" class="primary" onClick=${verify} disabled=${action.busy}>${action.busy ? "Verifying…" : "Verify now"}</button></div>` : null}
    <section aria-labelledby="h-verification"><h2 id="h-verification">Last verification</h2><${Verification} value=${integrity.last_verification} /></section>`;
}
