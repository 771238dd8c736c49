// Integrity (§8): the last seal and verification, and running one; absent routes shown as such.
import { html, useState } from "../lib.js";
import { hasRoute, request } from "../api.js";
import { ErrorBox, Loading, Notice, Time, useAction, usePolled } from "../ui.js";

const API = "/api/v1/admin/integrity";

/** The verdict of the last verification in one sentence, then its counts and findings. */
export function Verdict({ value, running }) {
  if (!value) {
    return html`<p class="verdict verdict-none" role="status">${running ? "A first verification is running." : "Not verified yet: nothing says whether the record is intact. Run a verification."}</p>`;
  }
  const when = html`<${Time} value=${value.finished_at || value.started_at} />`;
  const intact = value.intact && !value.findings;
  const lines = value.lines || [];
  return html`
    <p class=${`verdict ${intact ? "verdict-ok" : "verdict-bad"}`} role="status">
      ${intact
        ? html`<strong>Intact.</strong> The verification finished ${when} found no row or checkpoint altered, missing or unsealed.`
        : html`<strong>Not intact: ${value.findings.toLocaleString()} finding${value.findings === 1 ? "" : "s"}.</strong> The verification finished ${when} found what is listed below.`}
      ${running ? " A newer verification is running." : ""}
    </p>
    <dl class="fields">
      <dt>Rows checked</dt><dd>${value.rows.toLocaleString()}</dd>
      <dt>Checkpoints checked</dt><dd>${value.checkpoints.toLocaleString()}</dd>
      <dt>Removed by retention</dt><dd>${value.removed_by_retention.toLocaleString()} <span class="muted">(kept as hashes; not findings)</span></dd>
      <dt>Anonymised</dt><dd>${value.anonymised.toLocaleString()} <span class="muted">(kept as hashes; not findings)</span></dd>
      <dt>Awaiting their seal</dt><dd>${value.awaiting_seal.toLocaleString()}</dd>
      <dt>Started</dt><dd><${Time} value=${value.started_at} /></dd>
      <dt>Summary</dt><dd>${value.summary}</dd>
    </dl>
    ${lines.length ? html`<h3>${intact ? "Notes" : "Findings"}</h3><ul class="findings">${lines.map((l) => html`<li class="mono">${l}</li>`)}</ul>` : null}`;
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
  // Polled while visible: a verification's result and the seal state appear without a reload.
  const state = usePolled(async () => {
    if (!(await hasRoute(API))) return { available: false };
    return { available: true, integrity: await request(API) };
  }, [generation]);
  const action = useAction();
  const verify = () => action.run("Run a verification of every checkpoint now? It reads every stored row.", async () => {
    await request(`${API}/verify`, { method: "POST" });
    setGeneration((n) => n + 1);
    return "Verification started; this page shows its verdict when it has finished.";
  }, { confirmLabel: "Verify" });
  if (state.loading && !state.data) return html`<h1>Integrity</h1><${Loading} when=${true} />`;
  if (state.error && !state.data) return html`<h1>Integrity</h1><${ErrorBox} error=${state.error} />`;
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
    <section aria-labelledby="h-verification"><h2 id="h-verification">Last verification</h2><${Verdict} value=${integrity.last_verification} running=${integrity.verification_running} /></section>`;
}
