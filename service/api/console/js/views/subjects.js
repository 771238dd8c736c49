// Subjects (§9): anonymise a data subject and follow its state; absent routes shown as such.
import { html, useState } from "../lib.js";
import { hasRoute, request } from "../api.js";
import { navigate, seg } from "../router.js";
import { ErrorBox, Field, Loading, Notice, useAction, useAsync, usePolled } from "../ui.js";

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

export function SubjectsView({ params, who }) {
  const id = params[0] || "";
  const available = useAsync(() => hasRoute(ROUTE), []);
  const [generation, setGeneration] = useState(0);
  const action = useAction();
  const lookUp = (event) => {
    event.preventDefault();
    const subject = String(new FormData(event.currentTarget).get("subject") || "").trim();
    if (subject) navigate(`/console/subjects/${seg(subject)}`);
  };
  const anonymise = (event) => {
    event.preventDefault();
    const reason = String(new FormData(event.currentTarget).get("reason") || "").trim();
    action.run(`Anonymise subject ${id} everywhere auditq keeps data? Names, emails, IPs and user agents of the subject are removed for good.`, async () => {
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
      <${SubjectState} id=${id} generation=${generation} />
      <${ErrorBox} error=${action.error} /><${Notice} text=${action.notice} />
      ${who.role === "admin" ? html`<form class="inline" onSubmit=${anonymise} aria-label="Anonymise">
        <${Field} label="Reason (optional)" name="reason" />
        <button type="submit" class="danger" disabled=${action.busy}>Anonymise</button>
      </form>` : null}
    </section>` : null}`;
}
