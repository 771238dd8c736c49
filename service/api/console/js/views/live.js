// The live tail: Server-Sent Events read with fetch (EventSource cannot send the Bearer header).
import { html, useEffect, useRef, useState } from "../lib.js";
import { request } from "../api.js";
import { ErrorBox } from "../ui.js";
import { FilterForm, LogTable, filtersOf } from "./audit.js";

const KEPT = 200; // rows on screen; older ones fall off
const RECONNECT_MS = 2000;

/** Parse an SSE body into {id, data} messages, calling `onMessage` for each. */
async function readEvents(response, onMessage) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") id = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onMessage({ id, data: data.join("\n") });
    }
  }
}

export function LiveView({ location }) {
  const filters = filtersOf(location.query);
  const key = filters.toString();
  const [items, setItems] = useState([]);
  const [paused, setPaused] = useState(false);
  const [hidden, setHidden] = useState(document.hidden);
  const [status, setStatus] = useState("Connecting…");
  const [error, setError] = useState(null);
  const lastId = useRef(null);

  useEffect(() => {
    const sync = () => setHidden(document.hidden);
    document.addEventListener("visibilitychange", sync);
    return () => document.removeEventListener("visibilitychange", sync);
  }, []);

  useEffect(() => {
    lastId.current = null; // new filters: start from now
    setItems([]);
  }, [key]);

  useEffect(() => {
    if (paused || hidden) {
      setStatus(paused ? "Paused." : "Paused while this tab is hidden.");
      return undefined;
    }
    const abort = new AbortController();
    let timer = null;
    const connect = async () => {
      setStatus("Connecting…");
      try {
        const headers = lastId.current ? { "Last-Event-ID": lastId.current } : {};
        const response = await request("/api/v1/admin/audit-logs/stream", {
          query: filters, raw: true, signal: abort.signal,
          headers: { ...headers, Accept: "text/event-stream" },
        });
        setError(null);
        setStatus("Live: new rows appear as they are stored.");
        await readEvents(response, (message) => {
          if (message.id) lastId.current = message.id;
          const item = JSON.parse(message.data);
          setItems((shown) => [item, ...shown].slice(0, KEPT));
        });
        throw new Error("the stream ended");
      } catch (exc) {
        if (abort.signal.aborted) return;
        if (exc.status) setError(exc);
        if (exc.status === 400 || exc.status === 401 || exc.status === 403) {
          setStatus("Stopped.");
          return;
        }
        setStatus("Reconnecting…");
        timer = setTimeout(connect, RECONNECT_MS);
      }
    };
    connect();
    return () => {
      abort.abort();
      clearTimeout(timer);
    };
  }, [paused, hidden, key]);

  return html`<h1>Live</h1>
    <${FilterForm} base="/console/live" query=${filters} />
    <div class="toolbar">
      <button type="button" class=${paused ? "primary" : ""} onClick=${() => setPaused(!paused)} aria-pressed=${paused}>
        ${paused ? "Resume" : "Pause"}
      </button>
      <span class="live-status" role="status" aria-live="polite">${status}</span>
      <span class="muted">${items.length} shown (at most ${KEPT}).</span>
    </div>
    <${ErrorBox} error=${error} />
    ${items.length ? html`<${LogTable} items=${items} caption="Rows stored since this page opened" />`
      : html`<p class="muted">Waiting for new rows…</p>`}`;
}
