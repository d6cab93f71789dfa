// The operator's dashboard: three pages (#/ fleet, #/build/<id>, #/engine) over the JSON API,
// kept live by the event stream (/api/events). No framework, no build step.
"use strict";

const state = { fleet: null, engine: null, alerts: [], lastSeq: 0, events: null, page: null, build: null, layer: null, follow: true, spcAt: 0 };
const view = document.getElementById("view");
const h = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v); }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "—" : String(k)));
  return e;
};
const fmt = (v, d = 1) => v == null ? "—" : Number(v).toFixed(d);
const esc = s => encodeURIComponent(s);

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  if (r.status === 401) { showLogin(); throw new Error("unauthorized"); }
  if (!r.ok) { const e = new Error(`${path}: ${r.status}`); e.status = r.status; throw e; }
  return r.json();
}

// Off loopback: the token is sent once, in a header, for an HttpOnly session cookie.
function showLogin() {
  const f = document.getElementById("login");
  f.hidden = false;
  f.onsubmit = async ev => {
    ev.preventDefault();
    const input = document.getElementById("token");
    const r = await fetch("/api/session", { method: "POST", headers: { Authorization: "Bearer " + input.value }, credentials: "same-origin" });
    input.value = "";
    if (r.ok) { f.hidden = true; start(); } else document.getElementById("login-error").textContent = `refused (${r.status})`;
  };
}

function verdictCell(v) {
  if (!v || !v.value) return h("td", { class: "l" }, "—");
  return h("td", { class: "l verdict-" + v.value.verdict }, `${v.value.verdict} (layer ${v.layer})`);
}

function feed(alerts, limit = 60) {
  const ul = h("ul", { class: "feed", id: "feed", "data-alerts": alerts.length });
  for (const a of alerts.slice(-limit).reverse()) {
    ul.append(h("li", { class: "alert", "data-kind": a.kind, "data-build": a.build_id },
      h("span", { class: "kind kind-" + a.kind }, a.kind), " ",
      h("a", { href: "#/build/" + esc(a.build_id) }, a.build_id), a.layer != null ? ` layer ${a.layer} · ` : " · ",
      h("strong", {}, a.what), " ", h("span", { class: "muted" }, a.detail)));
  }
  if (!alerts.length) ul.append(h("li", { class: "muted" }, "no alerts yet"));
  return ul;
}

function renderFleet() {
  const f = state.fleet;
  if (!f) return;
  const rows = f.builds.map(b => h("tr", { class: "link", "data-build": b.build_id, onclick: () => { location.hash = "#/build/" + esc(b.build_id); } },
    h("td", {}, b.build_id), h("td", { class: "l" }, b.machine), h("td", {}, b.layer), h("td", {}, fmt(b.samples_per_s, 0)),
    h("td", {}, b.anomalies), verdictCell(b.verdict), h("td", {}, b.data_quality && b.data_quality.value != null ? fmt(b.data_quality.value, 3) : "—"),
    h("td", { class: "l" }, b.ended ? "ended" : "running")));
  const table = h("table", { id: "fleet", "data-builds": f.builds.length },
    h("thead", {}, h("tr", {}, ...["build", "machine", "layer", "samples/s", "anomalies", "verdict (latest layer)", "data quality", "state"].map(t => h("th", {}, t)))),
    h("tbody", {}, ...rows));
  view.replaceChildren(h("h2", {}, `Fleet — ${f.builds.length} builds`), table,
    h("h2", {}, "Alerts"), h("div", { class: "panel" }, feed(state.alerts)));
  view.dataset.page = "fleet";
}

async function loadGrid() {
  const canvas = document.getElementById("layer-map");
  const note = document.getElementById("map-note");
  if (!canvas || state.layer == null) return;
  try {
    const g = await api(`/api/builds/${esc(state.build)}/layers/${state.layer}/grid`);
    Charts.layerMap(canvas, g);
    canvas.dataset.layer = String(g.layer);
    note.textContent = `layer ${g.layer} (${g.source}, revision ${g.revision}) · ${g.cells.length} cells of ${g.cell_mm} mm · ${g.anomalies.length} anomalies (×) · ${g.ct_defects.length} CT defects (○ green detected, pink missed)`;
  } catch (e) { note.textContent = `no map for layer ${state.layer}: ${e.message}`; }
}

async function loadSpc() {
  const box = document.getElementById("spc");
  if (!box) return;
  state.spcAt = Date.now();
  let s;
  try { s = await api(`/api/builds/${esc(state.build)}/spc`); } catch (e) { return; }
  const charts = [];
  let limits = 0;
  for (const c of s.charts) {
    const lasers = s.trends[c.name] || {};
    for (const [laser, t] of Object.entries(lasers)) {
      const sig = s.signals.filter(x => x.spc === c.name && String(x.laser) === laser && !x.cell);
      const svg = Charts.trend(`${c.name} · ${c.statistic}(${c.channel}) · laser ${laser}`, t.points, t.baseline, sig);
      if (t.baseline) limits++;
      charts.push(svg);
    }
  }
  const cells = s.signals.filter(x => x.cell).length;
  box.replaceChildren(...charts);
  if (!charts.length) box.append(h("p", { class: "muted" }, "no SPC points yet"));
  box.dataset.charts = String(charts.length);
  box.dataset.limits = String(limits);
  document.getElementById("spc-note").textContent = `${s.signals.length} recent signals (red)${cells ? `, ${cells} on grid cells` : ""}; limits: phase I centre ± 3σ of the statistic (an EWMA or CUSUM chart judges its own statistic).`;
}

async function renderBuild(id) {
  state.build = id;
  let b;
  try { b = await api(`/api/builds/${esc(id)}`); } catch (e) { view.replaceChildren(h("p", {}, `no live results for ${id} yet`)); return; }
  if (state.layer == null || state.follow) state.layer = b.grid_layers.length ? b.grid_layers[b.grid_layers.length - 1] : null;
  const select = h("select", { id: "layer-select", onchange: e => { state.layer = Number(e.target.value); state.follow = false; loadGrid(); } },
    ...b.grid_layers.slice().reverse().map(l => { const o = h("option", { value: l }, `layer ${l}`); if (l === state.layer) o.selected = true; return o; }));
  const older = h("input", { type: "number", min: 0, placeholder: "older layer", style: "width:7em" });
  const go = h("button", { onclick: () => { if (older.value !== "") { state.layer = Number(older.value); state.follow = false; loadGrid(); } } }, "show");
  const follow = h("button", { onclick: () => { state.follow = true; renderBuild(id); } }, "follow latest");
  const lastV = Object.entries(b.verdicts).pop();
  view.replaceChildren(
    h("h2", {}, `Build ${id}`, h("span", { class: "muted" }, ` · machine ${b.machine || "—"} · layer ${b.layer ?? b.latest_layer} · ${b.anomalies} anomalies · latest verdict ${lastV ? lastV[1].verdict + " (layer " + lastV[0] + ")" : "—"}${b.ended ? " · ended" : ""}`)),
    h("div", { class: "grid2" },
      h("div", { class: "panel" }, h("div", {}, "Layer map ", select, " ", older, go, " ", follow),
        h("canvas", { id: "layer-map", width: 420, height: 440, "data-cells": "0" }), h("div", { id: "map-note", class: "legend" })),
      h("div", { class: "panel" }, h("strong", {}, "Alerts"), feed(state.alerts.filter(a => a.build_id === id)))),
    h("h2", {}, "Layer trend and SPC"), h("div", { id: "spc", class: "charts", "data-limits": "0" }), h("p", { id: "spc-note", class: "legend" }));
  view.dataset.page = "build";
  await Promise.all([loadGrid(), loadSpc()]);
}

function renderEngine() {
  const e = state.engine;
  if (!e) return;
  const kv = (obj, f = v => v) => Object.entries(obj || {}).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, f(v))));
  const bar = (used, cap) => h("span", { class: "barbox" }, h("span", { class: "bar", style: `width:${cap ? Math.round(120 * used / cap) : 0}px` }));
  const queues = Object.entries(e.queues).map(([b, q]) => h("tr", {}, h("td", {}, b), h("td", {}, q.depth), h("td", {}, q.capacity), h("td", {}, q.credits), h("td", {}, bar(q.depth, q.capacity))));
  const mem = e.memory_budget.map(m => h("tr", {}, h("td", {}, m.stage), h("td", {}, m.in_use_kib), h("td", {}, m.share_kib), h("td", {}, bar(m.in_use_kib, m.share_kib))));
  const sinks = Object.entries(e.sinks).map(([n, s]) => h("tr", {}, h("td", {}, n), h("td", {}, s.flushes), h("td", {}, fmt(s.commit_p50_ms, 2)), h("td", {}, fmt(s.commit_p99_ms, 2)), h("td", { class: "l" }, s.health && s.health.failing ? "failing: " + s.health.failing : "ok")));
  const t = (id, head, rows) => h("table", { id }, h("thead", {}, h("tr", {}, ...head.map(x => h("th", {}, x)))), h("tbody", {}, ...(rows.length ? rows : [h("tr", {}, h("td", { class: "muted" }, "none"))])));
  const wm = e.watermark_ns ? new Date(e.watermark_ns / 1e6).toISOString() : "—";
  view.replaceChildren(
    h("h2", {}, "Engine", h("span", { class: "muted" }, ` · watermark ${wm} · ${e.samples} samples · ${e.records_durable} records durable · restarts ${e.restarts} · dropped batches ${e.dropped_batches}`)),
    h("p", {}, e.not_ready.length ? h("span", { class: "verdict-fail" }, "not ready: " + e.not_ready.join("; ")) : h("span", { class: "verdict-ok" }, "ready")),
    h("div", { class: "charts" },
      h("div", { class: "panel" }, h("strong", {}, "Build queues"), t("queues", ["build", "queued", "capacity", "credits", ""], queues)),
      h("div", { class: "panel" }, h("strong", {}, "Memory budget (KiB)"), t("memory", ["stage", "in use", "share", ""], mem)),
      h("div", { class: "panel" }, h("strong", {}, "Sinks: commit latency (ms)"), t("sinks", ["sink", "flushes", "p50", "p99", "state"], sinks)),
      h("div", { class: "panel" }, h("strong", {}, "Watermark lag per input (s)"), t("lags", ["input", "lag"], kv(e.watermark_lag_s, v => fmt(v, 2)))),
      h("div", { class: "panel" }, h("strong", {}, "Kafka consumer lag (records)"), t("consumer-lag", ["partition", "lag"], kv(e.consumer_lag))),
      h("div", { class: "panel" }, h("strong", {}, `Dead letters: ${e.dead_letters}`), t("dead-letters", ["reason", "count"], kv(e.dead_letters_by_reason))),
      h("div", { class: "panel" }, h("strong", {}, "Result latency to durable (ms)"), t("latency", ["kind", "count", "p50", "p99"],
        Object.entries(e.latency).filter(([, v]) => v).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, v.count), h("td", {}, fmt(v.p50_ms, 1)), h("td", {}, fmt(v.p99_ms, 1))))))));
  view.dataset.page = "engine";
  view.dataset.queues = String(Object.keys(e.queues).length);
}

function route() {
  const hash = location.hash || "#/";
  document.getElementById("nav-fleet").className = hash === "#/" ? "here" : "";
  document.getElementById("nav-engine").className = hash === "#/engine" ? "here" : "";
  if (hash.startsWith("#/build/")) {
    const id = decodeURIComponent(hash.slice(8));
    if (state.build !== id) { state.layer = null; state.follow = true; }
    state.page = "build"; renderBuild(id);
  } else if (hash === "#/engine") {
    state.page = "engine"; api("/api/engine").then(e => { state.engine = e; renderEngine(); }).catch(() => {});
  } else {
    state.page = "fleet"; renderFleet();
  }
}

function connect() {
  if (state.events) state.events.close();
  const es = new EventSource(`/api/events?after=${state.lastSeq}`);
  state.events = es;
  const live = document.getElementById("live");
  es.onopen = () => { live.textContent = "live"; live.className = "live"; };
  es.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
  es.addEventListener("fleet", ev => {
    state.fleet = JSON.parse(ev.data);
    if (state.page === "fleet") renderFleet();
    if (state.page === "build" && state.build) {
      const b = state.fleet.builds.find(x => x.build_id === state.build);
      if (b && state.follow && b.layers_closed && Date.now() - state.spcAt > 2000) renderBuild(state.build);
    }
  });
  es.addEventListener("alert", ev => {
    const a = JSON.parse(ev.data);
    if (a.seq <= state.lastSeq) return;
    state.alerts.push(a); state.lastSeq = a.seq;
    if (state.alerts.length > 200) state.alerts.shift();
    const f = document.getElementById("feed");
    if (f && (state.page === "fleet" || a.build_id === state.build)) f.replaceWith(feed(state.page === "fleet" ? state.alerts : state.alerts.filter(x => x.build_id === state.build)));
  });
  es.addEventListener("engine", ev => { state.engine = JSON.parse(ev.data); if (state.page === "engine") renderEngine(); });
}

async function start() {
  try {
    const [fleet, alerts] = await Promise.all([api("/api/fleet"), api("/api/alerts")]);
    state.fleet = fleet; state.alerts = alerts.alerts; state.lastSeq = alerts.last_seq;
  } catch (e) { if (e.message === "unauthorized") return; view.textContent = "cannot reach the engine: " + e.message; return; }
  route();
  // The stream opens once the page has drawn from the API (it resumes after state.lastSeq, so no
  // alert falls between): a page loaded by a headless browser with a virtual-time budget is
  // complete before a never-ending request holds its clock.
  setTimeout(connect, 2000);
}

window.addEventListener("hashchange", route);
start();
