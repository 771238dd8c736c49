// Subjects (§9): anonymise a data subject and follow its state; absent routes shown as such.
import { html, useState } from "../lib.js";
import { hasRoute, request } from "../api.js";
import { navigate, seg } from "../router.js";
import {
  ErrorBox, Field, Loading, Notice, Time, actorPath, useAction, useAsync, usePolled,
} from "../ui.js";

const API = "/api/v1/admin/subjects";
const ROUTE = `${API}/{subject_id}/anonymisation`;

function SubjectState({ id, generation }) {
  // Polled while visible: a running erasure reaches "done" on screen without a reload.
  const state = usePolled(async () => {
    try {
      return await request(`${API}/${seg(id)}/anonymisation`);
    } catch (error) {
      if (error.status === 404) return null;
      throw error;
    }
  }, [id, generation]);
  if (state.loading) return html`<${Loading} when=${true} />`;
  if (state.error && !state.data) return html`<${ErrorBox} error=${state.error} />`;
  if (!state.data) return html`<p class="muted">No anonymisation was asked for this subject.</p>`;
  const s = state.data;
  return html`<${ErrorBox} error=${state.error} /><dl class="fields" aria-live="polite">
    <dt>State</dt><dd>${s.state}</dd><dt>Pseudonym</dt><dd class="mono">${s.pseudonym}</dd>
    <dt>Rows</dt><dd>${s.rows}</dd><dt>Dead letters</dt><dd>${s.dead_letters}</dd></dl>`;
}

/** Erasures asked, the latest first (admins only), polled while visible: a running one turns
 * "done" here too. Empty: what erasure does and how to start one. */
function Erasures() {
  const list = usePolled(() => request(API, { query: new URLSearchParams({ limit: "100" }) }), []);
  if (list.loading) return html`<${Loading} when=${true} />`;
  if (list.error && !list.data) return html`<${ErrorBox} error=${list.error} />`;
  const items = list.data.items;
  if (!items.length) {
    return html`<div class="empty" role="status">
      <p><strong>No subject has been anonymised yet.</strong></p>
      <p>Anonymising (erasing) a data subject replaces its id with a pseudonym in every row auditq keeps, removes its names, emails, IP addresses and user agents, and clears text in other rows that mentions it, for good. The record stays whole and verifiable: who did what stays countable, no longer whom it was. Later events of the subject are stored pseudonymised too.</p>
      <p>To start one, give the subject's id above (a user id as producers send it in <code>actor.id</code>, or the id of a <code>user</code> entity) and press Show: the page says how many rows name it before you confirm. From a shell: <code>auditq anonymise SUBJECT_ID</code>.</p></div>`;
  }
  return html`<${ErrorBox} error=${list.error} /><div class="table-wrap"><table>
    <caption class="skip">Erasures, the latest first</caption>
    <thead><tr><th>Pseudonym</th><th>State</th><th class="num">Rows changed</th><th>Asked</th>
      <th class="hide-narrow">Done</th></tr></thead>
    <tbody>${items.map((e) => html`<tr key=${e.pseudonym} data-pseudonym=${e.pseudonym}>
      <td class="mono pseudonym"><a href=${actorPath(e.pseudonym)}>${e.pseudonym}</a></td>
      <td>${e.state}</td><td class="num">${e.rows.toLocaleString()}</td>
      <td><${Time} value=${e.requested_at} /></td>
      <td class="hide-narrow"><${Time} value=${e.finished_at} /></td>
    </tr>`)}</tbody></table></div>`;
}

const LOGS = "/api/v1/admin/audit-logs";

/** How many rows name the subject, asked with count=true before the irreversible step. */
async function previewOf(id) {
  const count = async (filters) => {
    const page = await request(LOGS, { query: new URLSearchParams({ ...filters, limit: "1", count: "true" }) });
    return page.total;
  };
  const [asActor, asEntity] = await Promise.all([
    count({ actor_id: id }), count({ entity_type: "user", entity_id: id }),
  ]);
  return { asActor, asEntity };
}

const counted = (total) => `${total.exact ? "" : "about "}${total.count.toLocaleString()}`;

function Preview({ preview }) {
  if (!preview) return null;
  const { asActor, asEntity } = preview;
  return html`<p class="preview" role="status">Before you anonymise: ${counted(asActor)} row(s) name this subject as their actor and ${counted(asEntity)} as their entity (type <code>user</code>)${asActor.exact && asEntity.exact ? "" : " (estimates)"}. Text in other rows that mentions the subject is cleared too and is not counted here.</p>`;
}

export function SubjectsView({ params, who }) {
  const id = params[0] || "";
  const available = useAsync(() => hasRoute(ROUTE), []);
  const [generation, setGeneration] = useState(0);
  const preview = useAsync(() => (id && who.role === "admin" ? previewOf(id) : null), [id, generation]);
  const action = useAction();
  const lookUp = (event) => {
    event.preventDefault();
    const subject = String(new FormData(event.currentTarget).get("subject") || "").trim();
    if (subject) navigate(`/console/subjects/${seg(subject)}`);
  };
  const anonymise = (event) => {
    event.preventDefault();
    const reason = String(new FormData(event.currentTarget).get("reason") || "").trim();
    const rows = preview.data ? ` It changes ${counted(preview.data.asActor)} row(s) as actor and ${counted(preview.data.asEntity)} as entity, and clears mentions elsewhere.` : "";
    action.run(`Anonymise subject ${id} everywhere auditq keeps data? Names, emails, IPs and user agents of the subject are removed for good.${rows}`, async () => {
      const done = await request(`${API}/${seg(id)}/anonymise`, { method: "POST", body: reason ? { reason } : {} });
      setGeneration((n) => n + 1);
      return `Anonymisation started; the subject is now ${done.pseudonym}.`;
    }, { confirmLabel: "Anonymise", danger: true });
  };
  if (available.loading) return html`<h1>Subjects</h1><${Loading} when=${true} />`;
  if (!available.data) {
    return html`<h1>Subjects</h1><p class="notice" role="status">Anonymisation is not available on this server: it has no ${API} routes yet.</p>`;
  }
  return html`<h1>Subjects</h1>
    <form class="inline" onSubmit=${lookUp} aria-label="Find a subject" key=${id}>
      <${Field} label="Subject id" name="subject" value=${id} />
      <button type="submit">Show</button>
    </form>
    ${id ? html`<section aria-labelledby="h-subject"><h2 id="h-subject">Subject <span class="mono">${id}</span></h2>
      ${who.role === "admin" ? html`<${SubjectState} id=${id} generation=${generation} />`
        : html`<p class="muted">An erasure's state and pseudonym are shown to admins only.</p>`}
      <${ErrorBox} error=${action.error} /><${Notice} text=${action.notice} />
      ${who.role === "admin" ? html`<${Preview} preview=${preview.data} /><form class="inline" onSubmit=${anonymise} aria-label="Anonymise">
        <${Field} label="Reason (optional)" name="reason" />
        <button type="submit" class="danger" disabled=${action.busy}>Anonymise</button>
      </form>` : null}
    </section>` : null}
    ${id ? null : html`<p class="muted">Give the id of a data subject (a user id as producers send it in <code>actor.id</code>, or in <code>entity.id</code> of a <code>user</code> entity) to see whether it was anonymised${who.role === "admin" ? ", how many rows name it, and to anonymise it: its id becomes a pseudonym in every row, its names, emails, IPs and user agents are removed, and text elsewhere that mentions it is cleared, for good" : ""}.</p>`}
    <section aria-labelledby="h-erasures"><h2 id="h-erasures">Erasures</h2>
      ${who.role === "admin" ? html`<${Erasures} />`
        : html`<p class="muted">The list of erasures is shown to admins only.</p>`}
    </section>`;
}
