// The console: sign-in, the shell (navigation, who is signed in), and one view per path.
import { html, render, useEffect, useRef, useState } from "./lib.js";
import { request, session } from "./api.js";
import { loadMessages } from "./messages.js";
import { useLocation } from "./router.js";
import { ErrorBox, ZoneSwitch } from "./ui.js";
import { ActorView, AuditLogsView, DetailView, EntityView } from "./views/audit.js";
import { DestinationsView } from "./views/destinations.js";
import { IntegrityView } from "./views/integrity.js";
import { LiveView } from "./views/live.js";
import { QueueView } from "./views/queue.js";
import { StatisticsView } from "./views/statistics.js";
import { SubjectsView } from "./views/subjects.js";
import { TaskView, TasksView } from "./views/tasks.js";
import { TokensView } from "./views/tokens.js";

const NAV = [
  ["/console/audit-logs", "Audit log"], ["/console/live", "Live"], ["/console/statistics", "Statistics"],
  ["/console/tasks", "Tasks"], ["/console/queue", "Queue"], ["/console/integrity", "Integrity"],
  ["/console/subjects", "Subjects"], ["/console/tokens", "Tokens"],
  ["/console/destinations", "Destinations"],
];

// Path patterns (segments URL-decoded) -> view and page title.
const ROUTES = [
  [/^\/console\/audit-logs\/?$/, AuditLogsView, "Audit log"],
  [/^\/console\/audit-logs\/([^/]+)$/, DetailView, "Audit log entry"],
  [/^\/console\/entities\/([^/]+)\/(.+)$/, EntityView, "Entity history"],
  [/^\/console\/actors\/(.+)$/, ActorView, "Actor history"],
  [/^\/console\/live\/?$/, LiveView, "Live"],
  [/^\/console\/statistics\/?$/, StatisticsView, "Statistics"],
  [/^\/console\/tasks\/?$/, TasksView, "Tasks"],
  [/^\/console\/tasks\/(.+)$/, TaskView, "Task"],
  [/^\/console\/queue\/?$/, QueueView, "Queue"],
  [/^\/console\/integrity\/?$/, IntegrityView, "Integrity"],
  [/^\/console\/subjects\/?$/, SubjectsView, "Subjects"],
  [/^\/console\/subjects\/(.+)$/, SubjectsView, "Subject"],
  [/^\/console\/tokens\/?$/, TokensView, "Tokens"],
  [/^\/console\/destinations\/?$/, DestinationsView, "Destinations"],
];

function match(path) {
  for (const [pattern, view, title] of ROUTES) {
    const found = pattern.exec(path);
    if (found) {
      try {
        return { view, title, params: found.slice(1).map(decodeURIComponent) };
      } catch {
        return null;
      }
    }
  }
  return null;
}

function SignIn({ reason, onSignIn }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    const token = String(new FormData(event.currentTarget).get("token") || "").trim();
    if (!token) {
      setError(new Error("Paste an API token to sign in."));
      return;
    }
    setBusy(true);
    try {
      const who = await request("/api/v1/admin/whoami", { token });
      session.save(token, who);
      onSignIn(who);
    } catch (exc) {
      setError(exc.status === 403
        ? new Error("This token cannot read the admin API (an ingest token only sends events); use a reader or admin token.")
        : exc);
      setBusy(false);
    }
  };
  return html`<main id="main" class="signin">
    <h1>auditq console</h1>
    ${reason ? html`<p class="notice" role="status">${reason}</p>` : null}
    <form onSubmit=${submit} aria-label="Sign in">
      <label for="token"><span>API token</span>
        <input id="token" name="token" type="password" autocomplete="off" spellcheck="false" required />
      </label>
      <p class="muted">A reader token can look; an admin token can also change things. <code>make run</code> prints one and writes it to <code>.auditq/admin-token</code>. It is kept for this tab only.</p>
      <button class="primary" type="submit" disabled=${busy}>Sign in</button>
    </form>
    <${ErrorBox} error=${error} />
  </main>`;
}

function Shell({ who, location }) {
  const route = match(location.path);
  const firstView = useRef(true);
  useEffect(() => {
    document.title = `${route ? route.title : "Not found"} · auditq console`;
    // After an in-page navigation, a screen reader or keyboard user starts at the new view.
    if (!firstView.current) document.getElementById("main")?.focus({ preventScroll: true });
    firstView.current = false;
  }, [location.path]);
  const View = route ? route.view : null;
  const current = (href) => location.path === href || location.path.startsWith(`${href}/`);
  return html`<a class="skip" href="#main">Skip to the content</a>
    <header class="top">
      <a class="brand" href="/console/audit-logs">auditq</a>
      <nav class="main" aria-label="Views"><ul>${NAV.map(([href, text]) => html`<li>
        <a href=${href} aria-current=${current(href) ? "page" : null}>${text}</a></li>`)}</ul></nav>
      <${ZoneSwitch} />
      <div class="who"><span>${who.name} <span class="muted">(${who.role})</span></span>
        <button type="button" onClick=${() => session.clear("")}>Sign out</button></div>
    </header>
    <main id="main" tabindex="-1">
      ${View ? html`<${View} key=${location.path} location=${location} params=${route.params} who=${who} />`
        : html`<h1>Not found</h1><p>The console has no page at this address. <a href="/console/audit-logs">Go to the audit log</a>.</p>`}
    </main>`;
}

function App() {
  const location = useLocation();
  const [who, setWho] = useState(session.who());
  const [reason, setReason] = useState("");
  useEffect(() => session.onSignOut((why) => {
    setWho(null);
    setReason(why);
  }), []);
  if (!who || !session.token()) return html`<${SignIn} reason=${reason} onSignIn=${setWho} />`;
  return html`<${Shell} who=${who} location=${location} />`;
}

function Failure({ error }) {
  return html`<main class="signin"><h1>auditq console</h1><${ErrorBox} error=${error} /></main>`;
}

// The console's front page is the audit log: say so in the address bar from the start.
if (location.pathname === "/console/" || location.pathname === "/console") {
  history.replaceState(null, "", `/console/audit-logs${location.search}`);
}

loadMessages()
  .then(() => render(html`<${App} />`, document.getElementById("app")))
  .catch((error) => render(html`<${Failure} error=${error} />`, document.getElementById("app")));
