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

// The transparency log: whether sealing stopped and why, the latest checkpoint, the witnesses.
function Log({ integrity }) {
  const witnesses = integrity.witnesses || [];
  return html`<section aria-labelledby="h-log"><h2 id="h-log">Transparency log</h2>
    ${integrity.sealing_stopped
      ? html`<p class="notice danger" role="alert" data-testid="sealing-stopped"><strong>Sealing stopped.</strong> ${integrity.sealing_stopped}</p>`
      : html`<p class="muted" data-testid="sealing-running">Sealing runs: every new checkpoint extends the last one signed.</p>`}
    <div class="cards">
      <div class="card"><div class="label">Leaves in the log</div><div class="value">${Number(integrity.tree_size ?? 0).toLocaleString()}</div></div>
    </div>
    <h3>Latest checkpoint</h3>
    ${integrity.checkpoint ? html`<pre class="mono wrap" data-testid="checkpoint">${integrity.checkpoint}</pre>` : html`<p class="muted">No checkpoint has been signed yet.</p>`}
    <h3>Witnesses</h3>
    ${witnesses.length
      ? html`<table><thead><tr><th scope="col">Witness</th><th scope="col">Last cosigned size</th><th scope="col">Last error</th></tr></thead>
        <tbody>${witnesses.map((w) => html`<tr key=${w.url}><td class="mono">${w.url}</td>
          <td>${w.last_cosigned_size == null ? "never" : Number(w.last_cosigned_size).toLocaleString()}</td>
          <td>${w.last_error || "none"}</td></tr>`)}</tbody></table>`
      : html`<p class="muted">No witness has been asked yet (AUDITQ_WITNESS_URLS).</p>`}
  </section>`;
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
    <${Log} integrity=${integrity} />
    ${who.role === "admin" ? html`<div class="toolbar"><button type="button" class="primary" onClick=${verify} disabled=${action.busy}>${action.busy ? "Verifying…" : "Verify now"}</button></div>` : null}
    <section aria-labelledby="h-verification"><h2 id="h-verification">Last verification</h2><${Verification} value=${integrity.last_verification} /></section>`;
}
