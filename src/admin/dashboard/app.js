// The dashboard: one page per hash (#overview, #clients, #topics, #plugins, #config), each
// reading the admin API with the token from session storage in an Authorization header.
// Everything that comes from the broker is inserted as text nodes, never as HTML: topic
// names, client ids and payloads are written by devices.

import { drawLines } from "./charts.js";

const TOKEN_KEY = "mqtt-broker-admin-token";
const HISTORY = 180; // overview samples kept: 3 minutes at one per second
const PAGE = 25;

// ---------- small helpers ----------

// Builds an element: h("td", {class: "n"}, "text", child, ...). Strings become text nodes.
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const $ = (id) => document.getElementById(id);

function fmtNum(n) {
  if (n == null) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 });
}

function fmtBytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toLocaleString("en-US", { maximumFractionDigits: i ? 1 : 0 })} ${units[i]}`;
}

function fmtTime(ms) {
  if (!ms) return "–";
  return new Date(ms).toLocaleString();
}

function fmtDuration(secs) {
  const d = Math.floor(secs / 86400);
  const hh = Math.floor((secs % 86400) / 3600);
  const mm = Math.floor((secs % 3600) / 60);
  const ss = secs % 60;
  return (d ? `${d}d ` : "") + `${hh}h ${mm}m ${ss}s`;
}

function b64ToBytes(b64) {
  const bin = atob(b64 || "");
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// A classic hex dump: offset, 16 bytes in hex, the printable ASCII.
export function hexDump(bytes) {
  const lines = [];
  for (let off = 0; off < bytes.length; off += 16) {
    const row = bytes.slice(off, off + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${off.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join("\n");
}

function payloadText(p) {
  const bytes = b64ToBytes(p.preview_base64);
  if (p.binary) return hexDump(bytes.slice(0, 64)) + (bytes.length > 64 || p.truncated ? "\n…" : "");
  return new TextDecoder().decode(bytes) + (p.truncated ? "…" : "");
}

// ---------- API ----------

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (r.status === 401) throw new Unauthorized("a valid admin token is required");
  let body = null;
  const type = r.headers.get("content-type") || "";
  if (type.includes("application/json")) body = await r.json();
  if (!r.ok && !options.allowError) {
    throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  }
  return options.allowError ? { status: r.status, body } : body;
}

// ---------- shell: login, navigation, page lifecycle ----------

let current = null; // { stop() } of the page shown

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = `status ${cls || ""}`;
}

function showLogin(message) {
  stopPage();
  $("view").replaceChildren();
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setStatus("");
  $("token").focus();
}

async function tryStart() {
  try {
    await api("/api/v1/overview");
  } catch (e) {
    if (e instanceof Unauthorized) {
      const had = sessionStorage.getItem(TOKEN_KEY);
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(had ? "The token was refused. Check it and try again." : "");
      return;
    }
    $("view").replaceChildren(h("p", { class: "error", role: "alert" }, `Cannot reach the admin API: ${e.message}`));
    return;
  }
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = !sessionStorage.getItem(TOKEN_KEY);
  route();
}

function stopPage() {
  if (current && current.stop) current.stop();
  current = null;
}

const PAGES = { overview, clients, topics, plugins, config };

function route() {
  if (!$("login").hidden) return;
  const name = (location.hash || "#overview").slice(1).split("/")[0];
  const page = PAGES[name] ? name : "overview";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  stopPage();
  setStatus("");
  const view = $("view");
  view.replaceChildren();
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · mqtt-broker`;
  current = PAGES[page](view) || null;
}

// Runs `tick` now and every `ms`; stops on unauthorized (back to the login form).
function every(ms, tick) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    try {
      await tick();
    } catch (e) {
      if (e instanceof Unauthorized) {
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin("The token is no longer accepted. Sign in again.");
        return;
      }
      setStatus(`Error: ${e.message}`, "bad");
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function confirmDialog(text) {
  const d = $("confirm");
  $("confirm-text").textContent = text;
  d.returnValue = "";
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.showModal();
    $("confirm-cancel").focus();
  });
}

function table(caption, headers, rows, attrs) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      attrs || {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows),
    ),
  );
}

function card(label, value, sub, id) {
  return h("div", { class: "card", id }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);
}

// ---------- Overview ----------

function overview(view) {
  const samples = []; // {t, stats}
  const cards = h("div", { class: "cards", id: "overview-cards" });
  const msgSvg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  const byteSvg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  msgSvg.setAttribute("role", "img");
  msgSvg.setAttribute("aria-labelledby", "msg-title msg-now");
  byteSvg.setAttribute("role", "img");
  byteSvg.setAttribute("aria-labelledby", "byte-title byte-now");
  const msgNow = h("p", { id: "msg-now", class: "legend" });
  const byteNow = h("p", { id: "byte-now", class: "legend" });
  const msgMax = h("span", { class: "axis" });
  const byteMax = h("span", { class: "axis" });
  const drops = h("div");
  const pluginsBox = h("div");
  const bridgesBox = h("section", { id: "overview-bridges", hidden: true });
  view.append(
    h("h2", {}, "Overview"),
    cards,
    h(
      "div",
      { class: "charts" },
      h("section", { class: "chart", "aria-labelledby": "msg-title" }, h("h3", { id: "msg-title" }, "Messages per second (last 3 minutes)"), h("div", { class: "plot" }, msgMax, msgSvg), msgNow),
      h("section", { class: "chart", "aria-labelledby": "byte-title" }, h("h3", { id: "byte-title" }, "Bytes per second (last 3 minutes)"), h("div", { class: "plot" }, byteMax, byteSvg), byteNow),
    ),
    h("div", { class: "columns" }, h("section", {}, h("h3", {}, "Drops by reason"), drops), h("section", {}, h("h3", {}, "Plugin health"), pluginsBox)),
    bridgesBox,
  );

  const rate = (key) => {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1];
      const b = samples[i];
      const dt = (b.t - a.t) / 1000;
      out.push(dt > 0 ? Math.max(0, (key(b.stats) - key(a.stats)) / dt) : null);
    }
    return out;
  };

  const stop = every(1000, async () => {
    const o = await api("/api/v1/overview");
    samples.push({ t: o.now, stats: o.stats });
    if (samples.length > HISTORY + 1) samples.shift();
    const s = o.stats;
    setStatus(`${o.ready ? "Ready" : o.draining ? "Shutting down" : "Starting"} · config generation ${o.generation} · up ${fmtDuration(o.uptime_seconds)}`, o.ready ? "good" : "bad");
    const c = s.connections;
    cards.replaceChildren(
      card("Connections", fmtNum(c.total), `tcp ${c.tcp} · tls ${c.tls} · ws ${c.websocket} · wss ${c.wss}${c.bridge ? ` · bridge ${c.bridge}` : ""}`, "card-connections"),
      card("Sessions", fmtNum(s.sessions.total), `${s.sessions.connected} connected · ${o.persistent_sessions} persistent`, "card-sessions"),
      card("Subscriptions", fmtNum(s.subscriptions.total), null, "card-subscriptions"),
      card("Retained messages", fmtNum(s.messages.retained), null, "card-retained"),
      card("Messages received", fmtNum(s.messages.received), `${fmtNum(s.messages.sent)} sent`, "card-received"),
      card("In flight / queued", `${fmtNum(s.messages.inflight.qos1 + s.messages.inflight.qos2)} / ${fmtNum(s.messages.queued)}`, null, "card-inflight"),
      card("Config generation", String(o.generation), o.last_reload.ok ? "last reload ok" : `last reload refused`, "card-generation"),
      card("Readiness", o.ready ? "ready" : o.draining ? "shutting down" : "starting", null, "card-ready"),
    );
    const inR = rate((x) => x.messages.received);
    const outR = rate((x) => x.messages.sent);
    const binR = rate((x) => x.bytes.received);
    const boutR = rate((x) => x.bytes.sent);
    msgMax.textContent = drawLines(msgSvg, [{ cls: "in", values: inR }, { cls: "out", values: outR }], HISTORY, (m) => `${fmtNum(m)}/s`);
    byteMax.textContent = drawLines(byteSvg, [{ cls: "in", values: binR }, { cls: "out", values: boutR }], HISTORY, (m) => `${fmtBytes(m)}/s`);
    const last = (a) => (a.length ? a[a.length - 1] : 0);
    msgNow.replaceChildren(h("span", { class: "key in" }, "received"), ` ${fmtNum(last(inR))}/s  `, h("span", { class: "key out" }, "sent"), ` ${fmtNum(last(outR))}/s`);
    msgNow.id = "msg-now";
    byteNow.replaceChildren(h("span", { class: "key in" }, "received"), ` ${fmtBytes(last(binR))}/s  `, h("span", { class: "key out" }, "sent"), ` ${fmtBytes(last(boutR))}/s`);
    drops.replaceChildren(
      table("Messages dropped since start", ["Reason", "Count"], Object.entries(o.drops).map(([k, v]) => h("tr", { class: v ? "warn" : "" }, h("td", {}, k.replaceAll("_", " ")), h("td", { class: "n" }, fmtNum(v))))),
    );
    pluginsBox.replaceChildren(
      o.plugins.length
        ? h("ul", { class: "plain" }, o.plugins.map((p) => h("li", {}, h("span", { class: `badge ${p.degraded ? "bad" : "good"}` }, p.degraded ? "degraded" : "healthy"), ` ${p.name} · ${fmtNum(p.calls)} calls · ${fmtNum(p.failures)} failures`)))
        : h("p", { class: "muted" }, "No plugins loaded."),
    );
    // Bridges to remote brokers (the bridges: config), when there are any.
    const bridges = o.bridges || [];
    bridgesBox.hidden = bridges.length === 0;
    bridgesBox.replaceChildren(
      h("h3", {}, "Bridges"),
      table(
        "Bridges to remote brokers",
        ["Bridge", "State", "Remote", "Out", "In", "Queued", "Dropped", "Reconnects"],
        bridges.map((b) =>
          h(
            "tr",
            { class: b.state === "connected" ? "" : "warn", "data-bridge": b.name, title: b.last_error || "" },
            h("td", {}, b.name),
            h("td", {}, h("span", { class: `badge ${b.state === "connected" ? "good" : "bad"}` }, b.state)),
            h("td", {}, b.remote || "—"),
            h("td", { class: "n" }, fmtNum(b.messages_out)),
            h("td", { class: "n" }, fmtNum(b.messages_in)),
            h("td", { class: "n" }, fmtNum(b.queue_depth)),
            h("td", { class: "n" }, fmtNum(Object.values(b.dropped).reduce((a, v) => a + v, 0))),
            h("td", { class: "n" }, fmtNum(b.reconnects)),
          ),
        ),
      ),
    );
  });
  return { stop };
}

// ---------- Clients ----------

function clients(view) {
  let offset = 0;
  let query = "";
  let selected = null;
  const search = h("input", { id: "client-search", type: "search", placeholder: "client id, user or address", autocomplete: "off" });
  const info = h("p", { class: "muted", id: "client-count", "aria-live": "polite" });
  const list = h("div", { id: "client-list" });
  const prev = h("button", { type: "button", class: "secondary", onclick: () => { offset = Math.max(0, offset - PAGE); refresh(); } }, "Previous page");
  const next = h("button", { type: "button", class: "secondary", onclick: () => { offset += PAGE; refresh(); } }, "Next page");
  const detail = h("section", { id: "client-detail", class: "detail", "aria-live": "polite", hidden: true });
  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { query = search.value; offset = 0; refresh(); }, 250);
  });
  view.append(
    h("h2", {}, "Clients"),
    h("div", { class: "toolbar" }, h("label", { for: "client-search" }, "Search"), search),
    info,
    list,
    h("div", { class: "pager" }, prev, next),
    detail,
  );

  async function disconnect(id) {
    if (!(await confirmDialog(`Disconnect client "${id}"? It may reconnect on its own.`))) return;
    const r = await api(`/api/v1/clients/${encodeURIComponent(id)}`, { method: "DELETE", allowError: true });
    setStatus(r.status === 200 ? `Disconnected ${id}` : `Could not disconnect ${id}: ${(r.body && r.body.error) || r.status}`, r.status === 200 ? "good" : "bad");
    if (selected === id) selected = null;
    await refresh();
  }

  async function showDetail(id, reveal) {
    selected = id;
    const r = await api(`/api/v1/clients/${encodeURIComponent(id)}`, { allowError: true });
    if (r.status !== 200) {
      detail.hidden = false;
      detail.replaceChildren(h("h3", {}, id), h("p", { class: "muted" }, "No longer connected."));
      return;
    }
    const c = r.body;
    const rows = [
      ["Client id", c.id], ["Address", c.address], ["Transport", c.transport], ["User", c.username || "–"],
      ["Protocol", c.protocol], ["Clean session", c.clean_session ? "yes" : "no"],
      ["Session expiry", c.session_expiry_interval != null ? `${c.session_expiry_interval} s` : "–"],
      ["Connected since", fmtTime(c.connected_since)], ["Queue depth", `${c.queue_depth} (${fmtBytes(c.queued_bytes)})`],
      ["In flight", c.inflight], ["Connections", c.connections],
    ];
    detail.hidden = false;
    detail.replaceChildren(
      h("h3", {}, `Client ${c.id}`),
      h("dl", {}, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
      h("h4", {}, `Subscriptions (${c.subscription_filters.length})`),
      c.subscription_filters.length
        ? h("ul", { class: "plain mono" }, c.subscription_filters.map((s) => h("li", {}, `${s.filter}  (QoS ${s.qos})`)))
        : h("p", { class: "muted" }, "None."),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "danger", onclick: () => disconnect(c.id) }, "Disconnect"),
        h("button", { type: "button", class: "secondary", onclick: () => { selected = null; detail.hidden = true; } }, "Close")),
    );
    if (reveal) {
      // Opened from the list: bring it into view and move the keyboard focus to it.
      const title = detail.querySelector("h3");
      title.tabIndex = -1;
      title.focus();
      detail.scrollIntoView({ block: "nearest" });
    }
  }

  async function refresh() {
    const q = query.trim() ? `&q=${encodeURIComponent(query.trim())}` : "";
    const r = await api(`/api/v1/clients?offset=${offset}&limit=${PAGE}${q}`);
    if (offset > 0 && offset >= r.total) {
      offset = Math.max(0, Math.floor((r.total - 1) / PAGE) * PAGE);
    }
    info.textContent = r.total
      ? `${r.total} client${r.total === 1 ? "" : "s"}${query.trim() ? " matching" : " connected"}; showing ${offset + 1}–${offset + r.clients.length}`
      : query.trim() ? "No connected client matches." : "No client is connected.";
    prev.disabled = offset === 0;
    next.disabled = offset + r.clients.length >= r.total;
    list.replaceChildren(
      table(
        "Connected clients",
        ["Client id", "Address", "Transport", "User", "Protocol", "Connected since", "Subs", "Queue", "In flight", ""],
        r.clients.map((c) =>
          h("tr", { "data-client": c.id },
            h("td", { class: "mono" }, h("button", { type: "button", class: "link", onclick: () => showDetail(c.id, true) }, c.id)),
            h("td", { class: "mono" }, c.address),
            h("td", {}, c.transport),
            h("td", {}, c.username || "–"),
            h("td", {}, c.protocol),
            h("td", {}, fmtTime(c.connected_since)),
            h("td", { class: "n" }, c.subscriptions),
            h("td", { class: "n" }, c.queue_depth),
            h("td", { class: "n" }, c.inflight),
            h("td", {}, h("button", { type: "button", class: "danger small", "aria-label": `Disconnect ${c.id}`, onclick: () => disconnect(c.id) }, "Disconnect")),
          )),
        { id: "clients-table" },
      ),
    );
    if (selected) await showDetail(selected);
  }

  const stop = every(3000, refresh);
  return { stop };
}

// ---------- Topics ----------

function topics(view) {
  const tree = h("div", { id: "topic-tree" });
  const treeInfo = h("p", { class: "muted" });
  const prefix = h("input", { id: "retained-prefix", type: "search", placeholder: "e.g. sensors/", autocomplete: "off" });
  const retained = h("div", { id: "retained-list" });
  let retainedOffset = 0;
  const filter = h("input", { id: "tail-filter", value: "#", autocomplete: "off", required: true });
  const tailLimit = h("input", { id: "tail-limit", type: "number", min: 1, max: 1000, value: 200 });
  const tailButton = h("button", { type: "submit", id: "tail-start" }, "Start live tail");
  const tailStatus = h("p", { id: "tail-status", role: "status" });
  const tailList = h("ol", { id: "tail-messages", class: "tail", reversed: true });
  let tailAbort = null;
  const open = new Set();

  view.append(
    h("h2", {}, "Topics"),
    h("div", { class: "columns" },
      h("section", { "aria-labelledby": "tree-title" }, h("h3", { id: "tree-title" }, "Subscription tree"), treeInfo, tree),
      h("section", { "aria-labelledby": "tail-title" },
        h("h3", { id: "tail-title" }, "Live tail"),
        h("p", { class: "muted" }, "A read-only subscription made by the dashboard as its own user (admin.dashboard_user); the ACL decides what it may see. It stops after the message limit or two minutes."),
        h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); tailAbort ? stopTail() : startTail(); } },
          h("label", { for: "tail-filter" }, "Topic filter"), filter,
          h("label", { for: "tail-limit" }, "Messages"), tailLimit,
          tailButton),
        tailStatus,
        tailList)),
    h("section", { "aria-labelledby": "retained-title" },
      h("h3", { id: "retained-title" }, "Retained messages"),
      h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); retainedOffset = 0; loadRetained(); } },
        h("label", { for: "retained-prefix" }, "Topic prefix"), prefix, h("button", { type: "submit" }, "Show")),
      retained),
  );

  function renderNode(node) {
    const label = [h("span", { class: "mono" }, node.name === "" ? "(empty)" : node.name)];
    if (node.subscriptions) label.push(h("span", { class: "badge" }, `${node.subscriptions} sub${node.subscriptions === 1 ? "" : "s"}`));
    if (node.retained) label.push(h("span", { class: "badge ret" }, "retained"));
    const summary = h("span", { class: "totals muted" }, ` ${node.total_subscriptions} subs · ${node.total_retained} retained below`);
    if (!node.children.length) return h("li", { "data-path": node.path }, label, summary);
    const d = h("details", { open: open.has(node.path) }, h("summary", {}, label, summary), h("ul", {}, node.children.map(renderNode)));
    d.addEventListener("toggle", () => (d.open ? open.add(node.path) : open.delete(node.path)));
    return h("li", { "data-path": node.path }, d);
  }

  async function loadTree() {
    const r = await api("/api/v1/topics");
    treeInfo.textContent = `${r.filters} distinct filter${r.filters === 1 ? "" : "s"} · ${r.retained} retained topic${r.retained === 1 ? "" : "s"}${r.partial ? " (tree shows the first 10,000)" : ""}`;
    tree.replaceChildren(r.tree.children.length ? h("ul", { class: "tree" }, r.tree.children.map(renderNode)) : h("p", { class: "muted" }, "No subscriptions or retained messages yet."));
  }

  async function loadRetained() {
    const p = encodeURIComponent(prefix.value);
    const r = await api(`/api/v1/retained?prefix=${p}&offset=${retainedOffset}&limit=${PAGE}`);
    const rows = r.messages.map((m) => {
      const pre = h("pre", { class: "payload" }, payloadText(m.payload));
      let hexShown = m.payload.binary;
      const toggle = h("button", { type: "button", class: "secondary small", "aria-pressed": String(hexShown) }, "Hex");
      toggle.addEventListener("click", () => {
        hexShown = !hexShown;
        toggle.setAttribute("aria-pressed", String(hexShown));
        pre.textContent = hexShown ? hexDump(b64ToBytes(m.payload.preview_base64)) + (m.payload.truncated ? "\n…" : "") : payloadText(Object.assign({}, m.payload, { binary: false }));
      });
      return h("tr", { "data-topic": m.topic },
        h("td", { class: "mono" }, m.topic),
        h("td", { class: "n" }, fmtBytes(m.payload.size)),
        h("td", { class: "n" }, m.qos),
        h("td", {}, m.payload.binary ? h("span", { class: "badge" }, "binary") : null, pre),
        h("td", {}, toggle));
    });
    const nav = h("div", { class: "pager" },
      h("button", { type: "button", class: "secondary", disabled: retainedOffset === 0, onclick: () => { retainedOffset = Math.max(0, retainedOffset - PAGE); loadRetained(); } }, "Previous page"),
      h("button", { type: "button", class: "secondary", disabled: retainedOffset + r.messages.length >= r.total, onclick: () => { retainedOffset += PAGE; loadRetained(); } }, "Next page"));
    retained.replaceChildren(
      h("p", { class: "muted" }, `${r.total} retained message${r.total === 1 ? "" : "s"}${r.prefix ? ` under "${r.prefix}"` : ""}`),
      table("Retained messages", ["Topic", "Size", "QoS", "Payload", "View"], rows, { id: "retained-table" }),
      nav,
    );
  }

  async function startTail() {
    tailList.replaceChildren();
    const controller = new AbortController();
    tailAbort = controller;
    tailButton.textContent = "Stop live tail";
    tailStatus.textContent = "Starting…";
    tailStatus.className = "";
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const url = `/api/v1/tail?filter=${encodeURIComponent(filter.value)}&limit=${encodeURIComponent(tailLimit.value || 200)}`;
    try {
      const r = await fetch(url, { headers, signal: controller.signal, cache: "no-store" });
      if (!r.ok) {
        const b = await r.json().catch(() => ({}));
        throw new Error(b.error || `${r.status} ${r.statusText}`);
      }
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      let count = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let event = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (!data) continue;
          const d = JSON.parse(data);
          if (event === "start") tailStatus.textContent = `Tailing ${d.filter} as user "${d.user}" (up to ${d.max_messages} messages, ${d.max_seconds} s)…`;
          else if (event === "message") {
            count++;
            tailList.prepend(h("li", {}, h("span", { class: "mono topic" }, d.topic), h("span", { class: "muted" }, ` ${new Date(d.at).toLocaleTimeString()} · ${fmtBytes(d.payload.size)}`), h("pre", { class: "payload" }, payloadText(d.payload))));
            while (tailList.children.length > 500) tailList.lastChild.remove();
            tailStatus.textContent = `Tailing ${filter.value}: ${count} message${count === 1 ? "" : "s"}`;
          } else if (event === "end") tailStatus.textContent = `Tail ended (${d.reason}) after ${d.messages} message${d.messages === 1 ? "" : "s"}.`;
        }
      }
    } catch (e) {
      if (e.name !== "AbortError") {
        tailStatus.textContent = `Tail refused: ${e.message}`;
        tailStatus.className = "error";
      } else tailStatus.textContent = "Tail stopped.";
    } finally {
      if (tailAbort === controller) tailAbort = null;
      tailButton.textContent = "Start live tail";
    }
  }

  function stopTail() {
    if (tailAbort) tailAbort.abort();
    tailAbort = null;
  }

  loadRetained().catch((e) => setStatus(`Error: ${e.message}`, "bad"));
  const stop = every(3000, loadTree);
  return { stop: () => { stop(); stopTail(); } };
}

// ---------- Plugins ----------

function plugins(view) {
  const box = h("div", { id: "plugin-list" });
  view.append(h("h2", {}, "Plugins"), box);
  const stop = every(2000, async () => {
    const r = await api("/api/v1/plugins");
    if (!r.plugins.length) {
      box.replaceChildren(h("p", { class: "muted" }, "No Wasm plugins are loaded (plugins: in the config)."));
      return;
    }
    box.replaceChildren(...r.plugins.map((p) => h("section", { class: "plugin", "data-plugin": p.name },
      h("h3", {}, p.name, " ", h("span", { class: `badge ${p.degraded ? "bad" : "good"}` }, p.degraded ? "degraded" : "healthy")),
      h("dl", {}, [
        ["Hooks", p.hooks.join(", ")], ["Calls", fmtNum(p.calls)], ["Failures", fmtNum(p.failures)],
        ["Timeouts", fmtNum(p.timeouts)], ["Out of memory", fmtNum(p.out_of_memory)], ["Traps", fmtNum(p.traps)],
        ["Refused while degraded", fmtNum(p.rejected_degraded)], ["Instances created", fmtNum(p.instances_created)],
        ["Slowest call", `${fmtNum(p.slowest_call_us)} µs`], ["Peak memory", `${fmtBytes(p.peak_memory_bytes)} of ${fmtBytes(p.memory_limit_bytes)}`],
        ["Code", p.artifact],
      ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
      h("h4", {}, "Recent errors"),
      p.recent_errors.length
        ? h("ul", { class: "plain errors" }, p.recent_errors.map((e) => h("li", {}, h("time", {}, fmtTime(e.at)), ` ${e.error}`)))
        : h("p", { class: "muted" }, "None."))));
  });
  return { stop };
}

// ---------- Config ----------

function config(view) {
  const meta = h("div", { id: "config-meta" });
  const pending = h("div", { id: "config-pending" });
  const history = h("div", { id: "reload-history" });
  const effective = h("pre", { id: "config-effective", class: "code" });
  const editor = h("textarea", { id: "config-editor", rows: 24, spellcheck: "false", autocapitalize: "off", "aria-describedby": "editor-help" });
  const result = h("div", { id: "config-result", role: "status", "aria-live": "polite" });
  const validate = h("button", { type: "button", id: "config-validate", class: "secondary" }, "Validate");
  const apply = h("button", { type: "button", id: "config-apply" }, "Apply");
  const reset = h("button", { type: "button", id: "config-reset", class: "secondary" }, "Discard changes");
  let loadedFile = null;
  let path = null;

  view.append(
    h("h2", {}, "Configuration"),
    meta,
    h("section", { "aria-labelledby": "editor-title" },
      h("h3", { id: "editor-title" }, "Edit"),
      h("p", { id: "editor-help", class: "muted" }, "Validate runs the same checks as --check-config (every file and plugin the config names is loaded). Apply writes the file atomically and reloads; a refused change leaves the file as it was and shows why."),
      h("label", { for: "config-editor" }, "Config file (YAML)"),
      editor,
      h("div", { class: "actions" }, validate, apply, reset),
      result),
    h("div", { class: "columns" },
      h("section", {}, h("h3", {}, "Pending restart"), pending),
      h("section", {}, h("h3", {}, "Reload history"), history)),
    h("section", {}, h("h3", {}, "Effective configuration (secrets redacted)"), effective),
  );

  function showResult(ok, text) {
    result.replaceChildren(h("p", { class: ok ? "ok" : "error", role: ok ? null : "alert" }, text));
  }

  validate.addEventListener("click", async () => {
    showResult(true, "Validating…");
    const r = await api("/api/v1/config/validate", { method: "POST", body: editor.value, headers: { "Content-Type": "application/yaml" }, allowError: true });
    if (r.status === 200) showResult(true, "Valid: this configuration passes every check of --check-config.");
    else showResult(false, `Invalid: ${(r.body && r.body.error) || r.status}`);
  });

  apply.addEventListener("click", async () => {
    showResult(true, "Applying…");
    const r = await api("/api/v1/config", { method: "PUT", body: editor.value, headers: { "Content-Type": "application/yaml" }, allowError: true });
    // Reload the page's view first, so that when the result shows, the generation and
    // history beside it already say the same thing.
    if (r.status === 200) {
      await load(true);
      showResult(true, `Applied: configuration generation ${r.body.generation}${r.body.saved_to ? `, saved to ${r.body.saved_to}` : " (not saved: the broker runs without a config file; the change lasts until it stops)"}.`);
    } else {
      await load(false);
      showResult(false, `Refused: ${(r.body && r.body.error) || r.status}. The running configuration${path ? " and the file" : ""} are unchanged.`);
    }
  });

  reset.addEventListener("click", () => {
    editor.value = loadedFile || "";
  });

  async function load(replaceEditor) {
    const [c, h2] = await Promise.all([api("/api/v1/config"), api("/api/v1/reloads")]);
    path = c.path;
    meta.replaceChildren(h("p", {}, `Generation ${c.generation} · `, c.path ? h("span", {}, "file ", h("code", {}, c.path)) : "started without a config file (built-in defaults); an applied change lasts until the broker stops", ` · live tail user "${c.dashboard_user}"`));
    if (c.file_error) meta.append(h("p", { class: "error" }, c.file_error));
    const text = c.file != null ? c.file : "# The broker runs on its built-in defaults. Write keys to change here, e.g.\n# security:\n#   acl:\n#     - {allow: subscribe, topic: \"sensors/#\", user: dashboard}\n";
    if (replaceEditor || loadedFile == null) {
      editor.value = text;
    }
    loadedFile = text;
    pending.replaceChildren(
      c.pending_restart.length
        ? table("Settings changed in the file that apply after a restart", ["Key", "Running", "Configured"], c.pending_restart.map((p) => h("tr", {}, h("td", { class: "mono" }, p.key), h("td", { class: "mono" }, p.running), h("td", { class: "mono" }, p.configured))))
        : h("p", { class: "muted" }, "None: the running broker is what the configuration says."),
    );
    history.replaceChildren(
      table("Reload attempts, newest first", ["Generation", "Time", "Result", "Message"], h2.reloads.map((r, i, all) => h("tr", { class: r.ok ? "" : "warn" },
        h("td", { class: "n" }, r.generation), h("td", {}, fmtTime(r.at)),
        h("td", {}, h("span", { class: `badge ${r.ok ? "good" : "bad"}` }, r.ok ? "ok" : "refused")),
        h("td", { class: "msg" }, r.error || (r.pending_restart.length ? `applied; pending restart: ${r.pending_restart.map((p) => p.key).join(", ")}` : i === all.length - 1 && r.generation === 1 ? "started" : "applied")))), { id: "reload-table" }),
    );
    effective.textContent = JSON.stringify(c.effective, null, 2);
  }

  load(true).catch((e) => {
    if (e instanceof Unauthorized) showLogin("Sign in again.");
    else showResult(false, e.message);
  });
  return { stop: () => {} };
}

// ---------- start ----------

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("token").value.trim();
  if (!t) return;
  sessionStorage.setItem(TOKEN_KEY, t);
  $("token").value = "";
  tryStart();
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin("Signed out.");
});

window.addEventListener("hashchange", route);
tryStart();
