// Client-side routing over the history API: every view has its own /console/... path.
import { useEffect, useState } from "./lib.js";

const listeners = new Set();

function notify() {
  for (const listener of listeners) listener();
}

/** Go to a console path (with its query string) without reloading the page. */
export function navigate(to, { replace = false } = {}) {
  if (to !== location.pathname + location.search) {
    history[replace ? "replaceState" : "pushState"](null, "", to);
    if (!replace) window.scrollTo(0, 0);
  }
  notify();
}

window.addEventListener("popstate", notify);

// Plain links to console paths navigate in place; modified clicks keep the browser's behaviour.
document.addEventListener("click", (event) => {
  const link = event.target.closest ? event.target.closest("a[href]") : null;
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  if (link.target || link.hasAttribute("download")) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/console/")) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

/** The current location; the component re-renders when it changes. */
export function useLocation() {
  const [, setTick] = useState(0);
  useEffect(() => {
    const listener = () => setTick((n) => n + 1);
    listeners.add(listener);
    return () => listeners.delete(listener);
  }, []);
  return { path: location.pathname, search: location.search, query: new URLSearchParams(location.search) };
}

/** Encode each segment of a console or API path. */
export const seg = (value) => encodeURIComponent(String(value));
