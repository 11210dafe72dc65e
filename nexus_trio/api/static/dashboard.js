// The Nexus dashboard: renders the fleet and the live request feed from /ws.
//
// Every name on this page (backends, models, errors) comes from the network, and
// mDNS names are chosen by whoever announces them: data is only ever rendered with
// textContent and createElement, never as HTML. The server's CSP (script-src 'self',
// style-src 'self') backs this up, so there are no inline scripts or styles either.
"use strict";

(() => {
  const FEED_MAX = 100; // request rows kept on the page
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const CLOSE_GOING_AWAY = 1001; // Nexus is shutting down
  const CLOSE_TRY_AGAIN_LATER = 1013; // this page fell behind the feed

  const PHASES = { mid_stream: "mid-stream", before_first_byte: "before first byte" };
  const number = new Intl.NumberFormat("en-US");

  const $ = (id) => document.getElementById(id);
  const dom = {
    version: $("version"),
    draining: $("draining"),
    uptime: $("uptime"),
    connection: $("connection"),
    connectionText: $("connection-text"),
    totals: {
      requests: $("total-requests"),
      failed: $("total-failed"),
      failovers: $("total-failovers"),
      tokens: $("total-tokens"),
      inFlight: $("total-in-flight"),
      queued: $("total-queued"),
      backends: $("total-backends"),
    },
    backendsBody: $("backends-body"),
    backendsEmpty: $("backends-empty"),
    backendsCount: $("backends-count"),
    modelsBody: $("models-body"),
    modelsEmpty: $("models-empty"),
    modelsCount: $("models-count"),
    requestsBody: $("requests-body"),
    requestsEmpty: $("requests-empty"),
  };

  // What the page shows; replaced whole by each Snapshot.
  const state = {
    backends: new Map(), // name -> backend view
    models: [],
    feed: new Map(), // request_id -> its row, for the requests on the page
    totals: { requests: 0, failed: 0, failovers: 0, tokens: 0 },
    queued: 0, // requests waiting in Nexus's queue for a backend with room
    uptimeSeconds: 0,
    uptimeAt: 0, // performance.now() when uptimeSeconds was true
  };

  // ---- small DOM helpers: text only ------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function cell(content, className) {
    const td = el("td", className);
    if (content === null || content === undefined || content === "") {
      td.appendChild(el("span", "muted", "—"));
    } else if (content instanceof Node) {
      td.appendChild(content);
    } else {
      td.textContent = String(content);
    }
    return td;
  }

  function chips(names, chipClass) {
    const wrap = el("span", "chips");
    for (const name of names) {
      const chip = el("span", typeof chipClass === "function" ? chipClass(name) : chipClass, name);
      chip.title = name; // a long one is cut short on screen
      wrap.appendChild(chip);
    }
    return wrap;
  }

  function badge(text, kind) {
    return el("span", `badge badge-${kind}`, text);
  }

  function fmtNumber(value) {
    return value === null || value === undefined ? null : number.format(value);
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return null;
    if (ms < 10) return `${ms.toFixed(1)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }

  function fmtTime(unixSeconds) {
    const d = new Date(unixSeconds * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtDuration(seconds) {
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s % 60}s`;
    return `${s}s`;
  }

  // ---- backends ----------------------------------------------------------------------

  function statusKind(backend) {
    if (backend.status === "unhealthy") return "bad";
    if (backend.status === "ejected") return "warn"; // a request failed: out for a while
    if (!backend.routable) return "idle"; // every source said goodbye
    return backend.status === "healthy" ? "good" : "idle";
  }

  // An ejected backend says how many seconds from now it returns; the page turns that
  // into deadlines on its own clocks when the message arrives, so the server's clock
  // never has to agree with this one.
  // The same for the models a server holds: each says in how many seconds it unloads.
  function received(backend) {
    if (typeof backend.ejected_seconds === "number") {
      backend.returnsAt = performance.now() + backend.ejected_seconds * 1000;
      backend.returnsAtTime = Date.now() / 1000 + backend.ejected_seconds;
    }
    const loaded = backend.engine && Array.isArray(backend.engine.loaded) ? backend.engine.loaded : [];
    for (const m of loaded) {
      if (typeof m.expires_in_seconds === "number") {
        m.expiresAt = performance.now() + m.expires_in_seconds * 1000;
        m.expiresAtTime = Date.now() / 1000 + m.expires_in_seconds;
      }
    }
    return backend;
  }

  function fmtReturn(returnsAt, returnsAtTime) {
    const left = Math.ceil((returnsAt - performance.now()) / 1000);
    if (left <= 0) return "back any moment";
    return `back in ${fmtDuration(left)} (at ${fmtTime(returnsAtTime)})`;
  }

  function renderReturns() {
    for (const node of dom.backendsBody.querySelectorAll("[data-returns-at]")) {
      const at = Number(node.getAttribute("data-returns-at"));
      node.textContent = fmtReturn(at, Number(node.getAttribute("data-returns-at-time")));
    }
    for (const node of dom.backendsBody.querySelectorAll("[data-expires-at]")) {
      const at = Number(node.getAttribute("data-expires-at"));
      node.title = fmtExpiry(node.textContent, at, Number(node.getAttribute("data-expires-at-time")));
    }
  }

  // ---- engine load: what each server says of itself ------------------------------------

  // "3 running · 2 waiting · KV 45%" (vLLM, llama.cpp's /metrics), "1/2 slots busy"
  // (llama.cpp's /slots); only what the server said. Empty when it said none of these.
  function engineLoadParts(e) {
    const parts = [];
    const known = (v) => typeof v === "number";
    if (known(e.slots) && known(e.running)) {
      parts.push(`${fmtNumber(e.running)}/${fmtNumber(e.slots)} slots busy`);
      if (e.waiting) parts.push(`${fmtNumber(e.waiting)} waiting`);
    } else {
      if (known(e.running)) parts.push(`${fmtNumber(e.running)} running`);
      if (known(e.waiting)) parts.push(`${fmtNumber(e.waiting)} waiting`);
    }
    if (known(e.kv_cache_usage)) parts.push(`KV ${Math.round(e.kv_cache_usage * 100)}%`);
    return parts;
  }

  function fmtExpiry(model, expiresAt, expiresAtTime) {
    const left = Math.ceil((expiresAt - performance.now()) / 1000);
    if (left <= 0) return `${model}: loaded, unloads any moment`;
    const inTime = left < 60 ? `${left} s` : `${Math.round(left / 60)} min`;
    return `${model}: loaded until ${fmtTime(expiresAtTime)} (${inTime} left if unused)`;
  }

  function engineCell(b) {
    const e = b.engine;
    if (!e) return cell(null); // the server tells nothing of its load, or was not read
    const wrap = el("div", "engine");
    const parts = engineLoadParts(e);
    if (parts.length) {
      // Each part whole on a line; a narrow column breaks between them.
      const text = el("span", "engine-load");
      text.setAttribute("data-field", "engine-load");
      parts.forEach((part, i) => {
        if (i) text.appendChild(document.createTextNode(" · "));
        text.appendChild(el("span", "engine-part", part));
      });
      wrap.appendChild(text);
    }
    if (Array.isArray(e.loaded)) {
      if (e.loaded.length === 0) {
        wrap.appendChild(el("span", "muted", "no model loaded"));
      } else {
        const warm = el("span", "chips");
        warm.setAttribute("data-field", "loaded");
        for (const m of e.loaded) {
          const chip = el("span", "chip chip-warm", m.model);
          chip.setAttribute("data-loaded-model", "");
          if (m.expiresAt !== undefined) {
            chip.setAttribute("data-expires-at", String(m.expiresAt));
            chip.setAttribute("data-expires-at-time", String(m.expiresAtTime));
            chip.title = fmtExpiry(m.model, m.expiresAt, m.expiresAtTime);
          } else {
            chip.title = `${m.model}: loaded`;
          }
          warm.appendChild(chip);
        }
        wrap.appendChild(warm);
      }
    }
    const td = cell(wrap.childNodes.length ? wrap : null);
    td.setAttribute("data-field", "engine");
    return td;
  }

  function backendRow(b) {
    const tr = el("tr");
    tr.setAttribute("data-backend-row", "");
    tr.setAttribute("data-name", b.name);
    tr.setAttribute("data-status", b.status);

    tr.appendChild(cell(el("span", "name", b.name), "col-name"));

    const status = el("div", "status");
    const out = b.status === "unhealthy" || b.status === "ejected";
    const label = out || b.routable ? b.status : "gone"; // else every source said goodbye
    status.appendChild(badge(label, statusKind(b)));
    if (b.returnsAt !== undefined) {
      const back = el("span", "returns", fmtReturn(b.returnsAt, b.returnsAtTime));
      back.setAttribute("data-field", "returns");
      back.setAttribute("data-returns-at", String(b.returnsAt));
      back.setAttribute("data-returns-at-time", String(b.returnsAtTime));
      if (b.ejections > 1) back.title = `ejected ${b.ejections} times in a row`;
      status.appendChild(back);
    }
    if (b.detail) {
      status.appendChild(el("span", "detail", b.detail));
      status.title = b.detail;
    }
    const statusCell = cell(status);
    statusCell.setAttribute("data-field", "status");
    tr.appendChild(statusCell);

    tr.appendChild(cell(b.type));
    const others = (b.sources || []).filter((s) => s !== b.source);
    const source = el("span", "", b.source || "—");
    if (others.length) source.appendChild(el("span", "muted", ` +${others.join(", ")}`));
    tr.appendChild(cell(source));
    tr.appendChild(cell(b.models && b.models.length ? chips(b.models, "chip") : null));
    tr.appendChild(engineCell(b));
    tr.appendChild(cell(fmtNumber(b.in_flight), "num"));
    tr.appendChild(cell(fmtMs(b.latency_ms), "num"));
    return tr;
  }

  function renderBackends() {
    const names = [...state.backends.keys()].sort();
    const rows = names.map((name) => backendRow(state.backends.get(name)));
    dom.backendsBody.replaceChildren(...rows);
    dom.backendsEmpty.hidden = rows.length > 0;
    dom.backendsCount.textContent = rows.length ? String(rows.length) : "";
  }

  // ---- models ------------------------------------------------------------------------

  function backendChipClass(name) {
    const backend = state.backends.get(name);
    return `chip chip-${backend ? statusKind(backend) : "idle"}`;
  }

  function modelRow(m) {
    const tr = el("tr");
    tr.setAttribute("data-model-row", "");
    tr.setAttribute("data-name", m.id);
    if (!m.available) tr.className = "is-unavailable";

    const id = el("span", "name", m.id);
    if (m.alias_for) {
      id.appendChild(el("span", "tag", "alias"));
      id.appendChild(el("span", "muted", ` → ${m.alias_for}`));
    }
    tr.appendChild(cell(id, "col-name"));
    tr.appendChild(cell(chips(m.backends || [], backendChipClass)));
    tr.appendChild(cell(m.available ? badge("yes", "good") : badge("no", "bad")));
    tr.appendChild(cell(fmtNumber(m.context_length), "num"));
    const caps = m.capabilities || [];
    tr.appendChild(cell(caps.length ? chips(caps, "chip chip-cap") : null));
    return tr;
  }

  function renderModels() {
    const rows = state.models.map(modelRow);
    dom.modelsBody.replaceChildren(...rows);
    dom.modelsEmpty.hidden = rows.length > 0;
    dom.modelsCount.textContent = rows.length ? String(rows.length) : "";
  }

  // ---- requests ----------------------------------------------------------------------

  // As the server's Stats counts it; a client that left (499) is counted apart.
  function succeeded(r) {
    return r.status >= 200 && r.status < 400 && (r.error === null || r.error === undefined);
  }

  function requestRow(r) {
    const tr = el("tr");
    tr.setAttribute("data-request-row", "");
    tr.setAttribute("data-request-id", r.request_id);
    const failed = r.status !== 499 && !succeeded(r);
    const classes = [];
    if (failed) classes.push("is-error");
    if (r.failovers && r.failovers.length) classes.push("has-failover");
    tr.className = classes.join(" ");

    tr.appendChild(cell(fmtTime(r.time), "col-time"));

    const model = el("span", "name", r.model || "—");
    if (r.served_model && r.served_model !== r.model) {
      model.appendChild(el("span", "muted", ` → ${r.served_model}`));
    }
    if (r.fallback_from) model.appendChild(el("span", "tag", "fallback"));
    tr.appendChild(cell(model, "col-name"));

    const backend = el("div", "backend");
    backend.appendChild(el("span", "", r.backend || "—"));
    for (const f of r.failovers || []) {
      const phase = PHASES[f.phase] || f.phase;
      // No "to": nothing took the request over (the last candidate failed).
      const b = f.to
        ? badge(`failover ${f.from} → ${f.to} (${phase})`, "warn")
        : badge(`${f.from} failed (${phase})`, "bad");
      b.setAttribute("data-failover", "");
      backend.appendChild(b);
    }
    if (r.hedges_started) {
      backend.appendChild(badge(r.hedges_won ? "hedge won" : "hedged", "info"));
    }
    tr.appendChild(cell(backend));

    const status = el("div", "status");
    if (r.status === 499) status.appendChild(badge("499 client gone", "idle"));
    else status.appendChild(badge(String(r.status), failed ? "bad" : "good"));
    if (r.error) status.appendChild(el("span", "detail error", r.error));
    const statusCell = cell(status);
    statusCell.setAttribute("data-field", "status");
    tr.appendChild(statusCell);

    tr.appendChild(cell(r.stream === null || r.stream === undefined ? null : r.stream ? "stream" : "json"));
    tr.appendChild(cell(fmtMs(r.latency_ms), "num"));
    tr.appendChild(cell(fmtMs(r.ttft_ms), "num"));
    const tokens =
      r.prompt_tokens === null && r.completion_tokens === null
        ? null
        : `${fmtNumber(r.prompt_tokens) ?? "—"} → ${fmtNumber(r.completion_tokens) ?? "—"}`;
    tr.appendChild(cell(tokens, "num"));
    return tr;
  }

  function addRequest(record) {
    // A request may end between our subscription and the snapshot: it is then in both.
    if (state.feed.has(record.request_id)) return false;
    const row = requestRow(record);
    state.feed.set(record.request_id, row);
    dom.requestsBody.prepend(row);
    while (state.feed.size > FEED_MAX) {
      const [oldest, oldRow] = state.feed.entries().next().value;
      state.feed.delete(oldest);
      oldRow.remove();
    }
    dom.requestsEmpty.hidden = true;
    return true;
  }

  function countRequest(r) {
    // The same rules as the server's Stats.add, so the totals agree with /v1/stats.
    const t = state.totals;
    t.requests += 1;
    if (r.status !== 499 && !succeeded(r)) t.failed += 1;
    t.failovers += (r.failovers || []).length;
    t.tokens += (r.prompt_tokens || 0) + (r.completion_tokens || 0);
  }

  // ---- totals and header -------------------------------------------------------------

  function renderTotals() {
    const t = state.totals;
    dom.totals.requests.textContent = number.format(t.requests);
    dom.totals.failed.textContent = number.format(t.failed);
    dom.totals.failed.classList.toggle("is-bad", t.failed > 0);
    dom.totals.failovers.textContent = number.format(t.failovers);
    dom.totals.failovers.classList.toggle("is-warn", t.failovers > 0);
    dom.totals.tokens.textContent = number.format(t.tokens);
    let inFlight = 0;
    let up = 0;
    for (const b of state.backends.values()) {
      inFlight += b.in_flight || 0;
      if (b.routable) up += 1;
    }
    dom.totals.inFlight.textContent = number.format(inFlight);
    dom.totals.queued.textContent = number.format(state.queued);
    dom.totals.queued.classList.toggle("is-warn", state.queued > 0);
    dom.totals.backends.textContent = `${up} / ${state.backends.size}`;
    dom.totals.backends.classList.toggle("is-bad", up < state.backends.size);
  }

  function renderUptime() {
    if (!state.uptimeAt || conn.socket === null) return;
    const seconds = state.uptimeSeconds + (performance.now() - state.uptimeAt) / 1000;
    dom.uptime.textContent = `up ${fmtDuration(seconds)}`;
  }

  // ---- messages ----------------------------------------------------------------------

  function applySnapshot(data) {
    dom.version.textContent = data.version ? `v${data.version}` : "";
    dom.draining.hidden = !data.draining;
    state.uptimeSeconds = data.uptime_seconds || 0;
    state.uptimeAt = performance.now();
    renderUptime();

    state.backends = new Map((data.backends || []).map((b) => [b.name, received(b)]));
    state.models = data.models || [];
    renderBackends();
    renderModels();

    // A fresh start: the previous connection's rows and counts are replaced, not added to.
    state.feed = new Map();
    dom.requestsBody.replaceChildren();
    for (const record of (data.requests || []).slice(-FEED_MAX)) addRequest(record);
    dom.requestsEmpty.hidden = state.feed.size > 0;

    const stats = data.stats || {};
    const tokens = stats.tokens || {};
    const failovers = stats.failovers || {};
    state.totals = {
      requests: stats.requests || 0,
      failed: stats.failed || 0,
      failovers: (failovers.before_first_byte || 0) + (failovers.mid_stream || 0),
      tokens: (tokens.prompt || 0) + (tokens.completion || 0),
    };
    state.queued = data.queue_depth || 0;
    renderTotals();
  }

  function applyBackendStatus(data) {
    if (data.removed) state.backends.delete(data.name);
    else state.backends.set(data.name, received(data));
    renderBackends();
    renderModels(); // its chips there show its status
    renderTotals();
  }

  function applyMessage(message) {
    const data = message.data;
    switch (message.update_type) {
      case "Snapshot":
        applySnapshot(data);
        break;
      case "BackendStatus":
        applyBackendStatus(data);
        break;
      case "ModelChange":
        state.models = data.models || [];
        renderModels();
        break;
      case "QueueDepth":
        state.queued = data.depth || 0;
        renderTotals();
        break;
      case "RequestComplete":
        if (addRequest(data)) {
          countRequest(data);
          renderTotals();
        }
        break;
      default:
        break; // a newer server's message: ignored, not an error
    }
  }

  // ---- connection --------------------------------------------------------------------

  const conn = {
    socket: null,
    failures: 0, // connections in a row that ended before a snapshot
    retryTimer: 0,
    countdownTimer: 0,
  };

  function setConnection(stateName, text) {
    dom.connection.setAttribute("data-state", stateName);
    dom.connectionText.textContent = text;
    document.body.classList.toggle("is-offline", stateName === "disconnected");
  }

  function feedUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  // With keys on, the page is opened as /#key=nx-…: the key stays in this tab (never in a
  // URL sent anywhere) and is offered as a WebSocket subprotocol, which browsers allow.
  const KEY_STORE = "nexus-key";
  function feedKey() {
    const match = /(?:^#|&)key=([A-Za-z0-9_-]+)/.exec(location.hash);
    if (match) {
      sessionStorage.setItem(KEY_STORE, match[1]);
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(KEY_STORE);
  }

  function connect() {
    clearTimeout(conn.retryTimer);
    clearInterval(conn.countdownTimer);
    if (conn.failures === 0) setConnection("connecting", "connecting…");
    else setConnection("disconnected", "disconnected — reconnecting…");
    let socket;
    try {
      const key = feedKey();
      socket = key ? new WebSocket(feedUrl(), ["nexus-key", key]) : new WebSocket(feedUrl());
    } catch (err) {
      console.error("dashboard: cannot open the feed", err);
      reconnectLater(null);
      return;
    }
    conn.socket = socket;
    socket.addEventListener("message", (event) => {
      if (socket !== conn.socket) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        console.error("dashboard: a message that is not JSON", err);
        return;
      }
      try {
        applyMessage(message);
      } catch (err) {
        // One message we cannot show must not stop the ones after it.
        console.error("dashboard: cannot apply", message.update_type, err);
      }
      if (message.update_type === "Snapshot") {
        conn.failures = 0;
        setConnection("connected", "live");
      }
    });
    socket.addEventListener("close", (event) => {
      if (socket !== conn.socket) return;
      conn.socket = null;
      reconnectLater(event);
    });
  }

  function reconnectLater(event) {
    // Exponential backoff with jitter, so that many pages do not all come back at
    // the same instant after a restart.
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** conn.failures);
    const delay = Math.min(BACKOFF_MAX_MS, base * (0.75 + Math.random() * 0.5));
    conn.failures += 1;
    let why = "disconnected";
    if (event && event.code === CLOSE_GOING_AWAY) why = "disconnected: Nexus stopped";
    else if (event && event.code === CLOSE_TRY_AGAIN_LATER) why = "disconnected: fell behind";
    const due = performance.now() + delay;
    const tick = () => {
      const left = Math.max(0, Math.ceil((due - performance.now()) / 1000));
      setConnection("disconnected", `${why} — reconnecting in ${left} s`);
    };
    tick();
    conn.countdownTimer = setInterval(tick, 250);
    conn.retryTimer = setTimeout(connect, delay);
  }

  setInterval(renderUptime, 1000);
  setInterval(renderReturns, 1000);
  connect();
})();
