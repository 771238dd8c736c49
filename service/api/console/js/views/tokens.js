// API tokens: list, create (the token shown once, with a copy button), revoke.
import { html, useRef, useState } from "../lib.js";
import { request, session } from "../api.js";
import { seg } from "../router.js";
import { ErrorBox, Field, Loading, Notice, Select, Time, useAction, useAsync } from "../ui.js";

const API = "/api/v1/admin/tokens";

function NewToken({ created, onDismiss }) {
  const field = useRef(null);
  const [copied, setCopied] = useState("");
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(created.token);
      setCopied("Copied to the clipboard.");
    } catch {
      field.current.select();
      setCopied(document.execCommand("copy") ? "Copied to the clipboard." : "Copy it by hand: the text is selected.");
    }
  };
  return html`<section class="notice" aria-labelledby="h-new-token">
    <h2 id="h-new-token">Token ${created.name} (${created.role}) created</h2>
    <p>It is shown this once: store it now. Only its hash is kept.</p>
    <div class="secret">
      <label for="new-token" class="skip">New token</label>
      <input id="new-token" ref=${field} readonly value=${created.token} onFocus=${(e) => e.currentTarget.select()} />
      <button type="button" onClick=${copy}>Copy</button>
      <button type="button" onClick=${onDismiss}>Done</button>
    </div>
    <p role="status">${copied}</p>
  </section>`;
}

export function TokensView({ who }) {
  const [generation, setGeneration] = useState(0);
  const list = useAsync(() => request(API), [generation]);
  const [created, setCreated] = useState(null);
  const action = useAction();
  const admin = who.role === "admin";
  const create = async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const data = new FormData(form);
    const body = { name: String(data.get("name") || "").trim(), role: String(data.get("role")) };
    const made = await action.run(`Create a ${body.role} token named ${body.name}?`, () =>
      request(API, { method: "POST", body }), { confirmLabel: "Create" });
    if (made) {
      setCreated(made);
      form.reset();
      setGeneration((n) => n + 1);
    }
  };
  const revoke = async (name) => {
    const own = name === who.name;
    const question = own
      ? `Revoke token ${name}? It is the token you are signed in with: you will be signed out.`
      : `Revoke token ${name}? Whoever uses it is refused from now on.`;
    const done = await action.run(question, async () => {
      await request(`${API}/${seg(name)}/revoke`, { method: "POST" });
      return `Token ${name} revoked.`;
    }, { confirmLabel: "Revoke", danger: true });
    if (done) {
      if (own) session.clear("You revoked the token you were signed in with.");
      else setGeneration((n) => n + 1);
    }
  };
  const items = list.data ? list.data.items : [];
  return html`<h1>API tokens</h1>
    ${created ? html`<${NewToken} created=${created} onDismiss=${() => setCreated(null)} />` : null}
    <${ErrorBox} error=${action.error} /><${Notice} text=${created ? "" : action.notice} />
    ${admin ? html`<form class="inline" onSubmit=${create} aria-label="Create a token">
      <${Field} label="Name" name="name" required=${true} />
      <${Select} label="Role" name="role" value="reader"
        options=${[["reader", "reader (read only)"], ["admin", "admin (everything)"], ["ingest", "ingest (send events)"]]} />
      <button type="submit" class="primary" disabled=${action.busy}>Create token</button>
    </form>` : null}
    <${ErrorBox} error=${list.error} /><${Loading} when=${list.loading} />
    <div class="table-wrap"><table>
      <caption class="skip">API tokens</caption>
      <thead><tr><th>Name</th><th>Role</th><th>Created</th><th>Last used</th><th>Revoked</th>${admin ? html`<th><span class="skip">Actions</span></th>` : null}</tr></thead>
      <tbody>${items.map((t) => html`<tr key=${`${t.name}-${t.created_at}`}>
        <td>${t.name}${t.name === who.name && !t.revoked_at ? html` <span class="muted">(you)</span>` : null}</td>
        <td>${t.role}</td><td><${Time} value=${t.created_at} /></td>
        <td><${Time} value=${t.last_used_at} /></td><td><${Time} value=${t.revoked_at} /></td>
        ${admin ? html`<td>${t.revoked_at ? null : html`<button type="button" class="danger" onClick=${() => revoke(t.name)} aria-label=${`Revoke ${t.name}`}>Revoke</button>`}</td>` : null}
      </tr>`)}</tbody></table></div>`;
}
