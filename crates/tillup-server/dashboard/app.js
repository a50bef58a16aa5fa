// Head office's dashboard: a page over tillup-server's admin API.
// Every text is the user's language (i18n.js); every value from the server
// is inserted as text, never as markup. The server checks every rule; the
// page hides what the signed-in role may not do, nothing more.
"use strict";

const API = "/v1/admin";
const state = { me: null, lang: "en" };

// ---- language --------------------------------------------------------------

function pickLang() {
  const saved = localStorage.getItem("tillup.lang");
  if (saved && I18N[saved]) return saved;
  const wanted = navigator.languages || [navigator.language || "en"];
  return wanted.some((l) => l.toLowerCase().startsWith("zh")) ? "zh-CN" : "en";
}

// `{name}` is a value; `{name|one|other}` says `one` when it is 1, else `other`.
function t(key, vars) {
  const text = (I18N[state.lang] && I18N[state.lang][key]) || I18N.en[key] || key;
  return text.replace(/\{(\w+)(?:\|([^|}]*)\|([^}]*))?\}/g, (_, k, one, other) => {
    const v = vars && k in vars ? vars[k] : "";
    return one === undefined ? String(v) : v === 1 ? one : other;
  });
}

function applyLang() {
  document.documentElement.lang = state.lang;
  document.getElementById("lang").value = state.lang;
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  document.title = t("title");
}

// ---- building the page -----------------------------------------------------

// h("td", {class: "x"}, "text", otherNode): an element; strings become text.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Appends the children that are there (a missing one is null).
function put(parent, ...children) {
  parent.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function table(headers, rows, attrs) {
  return h("table", attrs || {},
    h("thead", {}, h("tr", {}, headers.map((k) => h("th", {}, t(k))))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, t("none")))));
}

function when(ts) {
  if (!ts) return t("never");
  const d = new Date(ts);
  return d.toLocaleString(state.lang, { dateStyle: "medium", timeStyle: "short" });
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function badge(kind, text) {
  return h("span", { class: `badge ${kind}` }, text);
}

function link(href, text) {
  return h("a", { href }, text);
}

function flash(message, kind) {
  const el = document.getElementById("flash");
  el.textContent = message;
  el.className = kind || "ok";
  el.hidden = !message;
}

function may(action) {
  return state.me && state.me.may.includes(action);
}

// ---- talking to the server -------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, contentType) {
  const headers = {};
  if (method !== "GET" && state.me) headers["X-CSRF-Token"] = state.me.csrf;
  let payload;
  if (body instanceof Blob) {
    payload = body;
    headers["Content-Type"] = contentType || "application/zip";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(API + path, { method, headers, body: payload, credentials: "same-origin" });
  if (resp.status === 204) return null;
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!resp.ok) {
    if (resp.status === 401 && path !== "/session") { state.me = null; route(); }
    throw new ApiError(resp.status, (json && (json.error || json.message)) || text || resp.statusText);
  }
  return json;
}

// Runs an action from a button or a form, saying how it went.
async function act(what, run) {
  flash("");
  try {
    const out = await run();
    flash(t("done", { what }), "ok");
    return out;
  } catch (e) {
    flash(`${what}: ${e.message}`, "error");
    return undefined;
  }
}

const path = (...parts) => parts.map(encodeURIComponent).join("/");

// The words of a form field, split at spaces and commas.
const words = (text) => String(text).split(/[\s,]+/).filter(Boolean);

// ---- pages -----------------------------------------------------------------

function signInPage(main) {
  const form = h("form", { id: "signin", class: "card narrow" },
    h("h1", {}, t("signin.title")),
    h("label", {}, t("signin.name"), h("input", { name: "name", autocomplete: "username", required: true })),
    h("label", {}, t("signin.password"), h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
    h("button", { type: "submit" }, t("signin.submit")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    try {
      await api("POST", "/session", { name: data.get("name"), password: data.get("password") });
      state.me = await api("GET", "/me");
      flash("");
      route();
    } catch (e) {
      flash(e.status === 401 || e.status === 403 ? t("signin.refused") : e.message, "error");
    }
  });
  put(main, form);
}

// A bar chart of tills per version: what people would rather look at.
function versionChart(versions) {
  const entries = Object.entries(versions).sort((a, b) => b[1].tills - a[1].tills);
  const most = Math.max(1, ...entries.map(([, c]) => c.tills));
  const row = 30, label = 110, width = 560;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${Math.max(1, entries.length) * row + 8}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", t("overview.chart"));
  entries.forEach(([version, c], i) => {
    const y = i * row + 4;
    const w = Math.max(2, ((width - label - 150) * c.tills) / most);
    const add = (tag, attrs, text) => {
      const el = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
      if (text !== undefined) el.textContent = text;
      svg.append(el);
    };
    add("text", { x: 0, y: y + 18, class: "label" }, version);
    add("rect", { x: label, y, width: w, height: row - 8, rx: 4, class: `bar bar${i % 6}` });
    add("text", { x: label + w + 8, y: y + 18, class: "value" }, t("overview.bar", { tills: c.tills, stores: c.stores }));
  });
  if (!entries.length) {
    const el = document.createElementNS(ns, "text");
    el.setAttribute("x", 0); el.setAttribute("y", 20); el.textContent = t("overview.noreports");
    svg.append(el);
  }
  return svg;
}

function phaseBadge(phase) {
  const kind = { running: "ok", done: "ok", paused: "warn", awaiting_approval: "warn", halted: "bad", aborted: "bad" }[phase.phase] || "";
  const wave = phase.wave !== undefined ? ` · ${t("rollout.waveno", { n: phase.wave + 1 })}` : "";
  return badge(kind, t(`phase.${phase.phase}`) + wave);
}

async function overviewPage(main) {
  const [fleet, rollouts] = await Promise.all([api("GET", "/fleet"), api("GET", "/rollouts")]);
  const tills = fleet.stores.reduce((n, s) => n + Object.keys(s.terminals).length, 0);
  const silent = fleet.stores.filter((s) => s.silent);
  // Not finished: running, waiting, or halted until someone aborts or resumes it.
  const running = rollouts.filter((r) => ["running", "paused", "awaiting_approval", "halted"].includes(r.state.phase.phase));
  const stat = (key, value, kind) => h("div", { class: `stat ${kind || ""}` }, h("b", {}, value), h("span", {}, t(key)));
  put(main, 
    h("h1", {}, t("overview.title")),
    h("div", { class: "stats" },
      stat("overview.stores", fleet.stores.length),
      stat("overview.tills", tills),
      stat("overview.upgrading", fleet.upgrading.length),
      stat("overview.running", running.length),
      stat("overview.failday", fleet.failures_day, fleet.failures_day ? "bad" : ""),
      stat("overview.failweek", fleet.failures_week, fleet.failures_week ? "bad" : ""),
      stat("overview.silent", silent.length, silent.length ? "warn" : "")),
    h("section", { class: "card" }, h("h2", {}, t("overview.chart")), versionChart(fleet.versions)),
    h("section", { class: "card", id: "upgrading" }, h("h2", {}, t("overview.upgrades")),
      table(["store.id", "upgrade.since", "upgrade.stage"], fleet.upgrading.map((u) => h("tr", { "data-store": u.store },
        h("td", {}, link(`#/stores/${encodeURIComponent(u.store)}`, u.store)),
        h("td", {}, when(u.backup_at)),
        h("td", {}, u.processed_at ? t("upgrade.built") : t("upgrade.backedup")))))),
    h("section", { class: "card" }, h("h2", {}, t("overview.rollouts")),
      table(["rollout.release", "rollout.phase", "rollout.by"], running.map((r) => h("tr", {},
        h("td", {}, link(`#/rollouts/${encodeURIComponent(r.id)}`, `${r.channel} ${r.version}`)),
        h("td", {}, phaseBadge(r.state.phase)),
        h("td", {}, r.state.created_by))))),
    h("section", { class: "card" }, h("h2", {}, t("overview.silentstores")),
      table(["store.id", "store.lastcheck"], silent.map((s) => h("tr", {},
        h("td", {}, link(`#/stores/${encodeURIComponent(s.id)}`, s.id)),
        h("td", {}, when(s.last_check)))))));
}

async function storesPage(main) {
  const fleet = await api("GET", "/fleet");
  const versions = (s) => [...new Set(Object.values(s.terminals))];
  const rows = fleet.stores.map((s) => h("tr", {
      "data-store": s.id,
      // What the filter matches: the id, labels, versions, and silent or revoked.
      "data-search": [s.id, ...s.labels, ...versions(s), s.revoked ? t("store.revoked") : s.silent ? t("store.silent") : ""].join(" ").toLowerCase(),
    },
    h("td", {}, link(`#/stores/${encodeURIComponent(s.id)}`, s.id), " ",
      s.revoked ? badge("bad", t("store.revoked")) : s.silent ? badge("warn", t("store.silent")) : null,
      s.labels.map((l) => [" ", badge("label", l)])),
    h("td", {}, Object.keys(s.terminals).length),
    h("td", {}, versions(s).join(", ")),
    h("td", {}, when(s.last_check)),
    h("td", {}, when(s.last_report)),
    h("td", { class: "why" }, s.last_failure || "")));
  // A chain has hundreds of stores: every word typed must match.
  const count = h("span", { class: "muted", id: "store-count" });
  const filter = h("input", { id: "store-filter", type: "search", placeholder: t("stores.filter"), "aria-label": t("stores.filter") });
  const apply = () => {
    const typed = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const r of rows) {
      r.hidden = !typed.every((w) => r.dataset.search.includes(w));
      shown += r.hidden ? 0 : 1;
    }
    count.textContent = t("stores.count", { shown, all: rows.length });
  };
  filter.addEventListener("input", apply);
  apply();
  put(main, h("h1", {}, t("nav.stores")),
    h("div", { class: "actions" }, filter, count),
    table(["store.id", "store.tills", "store.versions", "store.lastcheck", "store.lastreport", "store.lastfailure"], rows));
}

function outcomeBadge(result) {
  const kind = { upgraded: "ok", restored: "warn", abandoned: "bad", in_progress: "" }[result] || "";
  return badge(kind, t(`outcome.${result}`));
}

async function storePage(main, id) {
  const page = await api("GET", `/stores/${path(id)}`);
  const s = page.store;
  const actions = h("div", { class: "actions" });
  if (may("manage_stores")) {
    // A new token is shown once, on this page, until the page is left.
    const shown = h("code", { id: "newtoken" }, state.rotated && state.rotated.id === id ? state.rotated.token : "");
    actions.append(
      h("button", { type: "button", id: "rotate", onclick: async () => {
        if (!confirm(t("store.rotateconfirm", { id }))) return;
        const out = await act(t("store.rotate"), () => api("POST", `/stores/${path(id)}/rotate`));
        if (out) { state.rotated = { id, token: out.token }; render(); }
      } }, t("store.rotate")),
      h("button", { type: "button", class: "danger", id: "revoke", disabled: !!s.revoked, onclick: async () => {
        if (!confirm(t("store.revokeconfirm", { id }))) return;
        if (await act(t("store.revoke"), () => api("POST", `/stores/${path(id)}/revoke`)) !== undefined) render();
      } }, t("store.revoke")),
      shown);
  }
  const terminalRow = (x) => h("tr", {},
    h("td", {}, x.number),
    h("td", {}, x.model || "—"),
    h("td", {}, x.version),
    h("td", {}, outcomeBadge(x.state), x.failure ? h("div", { class: "why" }, x.failure) : null),
    h("td", {}, when(x.last_report)),
    h("td", {}, (Array.isArray(x.notices) ? x.notices : []).map((n) => h("div", {}, n.message || JSON.stringify(n)))));
  const tillResult = (x) => h("div", {},
    `#${x.number} ${x.from} → ${x.to} `, outcomeBadge(x.result),
    x.stopped_ms !== null && x.stopped_ms !== undefined ? ` ${t("hist.stopped", { s: (x.stopped_ms / 1000).toFixed(1) })}` : "",
    x.failure ? h("span", { class: "why" }, ` ${x.failure}`) : null);
  const took = (u) => u.finished ? t("seconds", { n: Math.round((new Date(u.finished) - new Date(u.started)) / 1000) }) : "—";
  const historyRow = (u) => h("tr", {},
    h("td", {}, when(u.started)),
    h("td", {}, took(u)),
    h("td", {}, u.trigger.by === "person" ? t("trigger.person", { name: u.trigger.name }) : t("trigger.schedule")),
    h("td", {}, u.terminals.map(tillResult), u.halted ? h("div", { class: "why" }, u.halted) : null));
  put(main, 
    h("h1", {}, t("store.title", { id })),
    h("section", { class: "card" },
      h("dl", {},
        h("dt", {}, t("store.channels")), h("dd", {}, page.channels.join(", ")),
        h("dt", {}, t("store.labels")), h("dd", {}, may("manage_stores") ? labelsForm(id, page.labels)
          : page.labels.length ? page.labels.map((l) => [badge("label", l), " "]) : "—"),
        h("dt", {}, t("store.added")), h("dd", {}, when(s.created)),
        h("dt", {}, t("store.lastcheck")), h("dd", {}, when(s.last_check)),
        h("dt", {}, t("store.token")), h("dd", {}, s.revoked ? badge("bad", `${t("store.revoked")} ${when(s.revoked)}`) : badge("ok", t("store.active")))),
      actions),
    h("section", { class: "card" }, h("h2", {}, t("store.terminals")),
      table(["term.number", "term.model", "term.version", "term.state", "term.lastreport", "term.notices"], page.terminals.map(terminalRow))),
    h("section", { class: "card" }, h("h2", {}, t("store.history")),
      table(["hist.started", "hist.took", "hist.trigger", "hist.tills"], page.history.map(historyRow))));
}

// An admin's form for a store's labels: every label, space-separated.
function labelsForm(id, labels) {
  const form = h("form", { id: "labels", class: "inline" },
    h("input", { name: "labels", value: labels.join(" "), placeholder: "region=north mall", "aria-label": t("store.labels") }),
    h("button", { type: "submit" }, t("store.savelabels")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const labels = words(new FormData(form).get("labels"));
    if (await act(t("store.savelabels"), () => api("PUT", `/stores/${path(id)}/labels`, { labels })) !== undefined) render();
  });
  return form;
}

function publishForm(channels) {
  // A new release keeps what the channel's newest one kept, unless changed.
  const newest = channels.flatMap((c) => c.releases).slice(-1)[0];
  const form = h("form", { id: "publish", class: "card" },
    h("h2", {}, t("publish.title")),
    h("div", { class: "grid" },
      h("label", {}, t("publish.zip"), h("input", { type: "file", name: "zip", accept: ".zip,application/zip", required: true })),
      h("label", {}, t("publish.channel"), h("input", { name: "channel", value: "stable", required: true })),
      h("label", {}, t("publish.version"), h("input", { name: "version", placeholder: "1.2.0", required: true })),
      h("label", {}, t("publish.minfrom"), h("input", { name: "min_from", placeholder: "1.0.0" })),
      h("label", { class: "wide" }, t("publish.notes_en"), h("textarea", { name: "notes_en", rows: 2 })),
      h("label", { class: "wide" }, t("publish.notes_zh"), h("textarea", { name: "notes_zh", rows: 2 })),
      h("label", { class: "wide" }, t("publish.preserve"), h("textarea", { name: "preserve", rows: 3 }, newest && newest.preserve ? newest.preserve.join("\n") : "")),
      h("label", {}, t("publish.models"), h("input", { name: "models", placeholder: "CP-500, CP-700" })),
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "critical" }), t("publish.critical")),
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "held" }), t("publish.held"))),
    h("button", { type: "submit" }, t("publish.submit")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const q = new URLSearchParams();
    for (const k of ["channel", "version", "min_from", "notes_en", "notes_zh"]) q.set(k, data.get(k) || "");
    q.set("critical", data.get("critical") ? "true" : "false");
    for (const glob of String(data.get("preserve")).split("\n").map((x) => x.trim()).filter(Boolean)) q.append("preserve", glob);
    for (const model of words(data.get("models"))) q.append("model", model);
    // Held back: no store is admitted until a rollout admits them.
    q.set("held", data.get("held") ? "true" : "false");
    const out = await act(t("publish.title"), () => api("POST", `/releases?${q}`, data.get("zip")));
    if (out) location.hash = `#/releases/${path(out.channel, out.release.version)}`;
  });
  return form;
}

async function releasesPage(main) {
  const channels = await api("GET", "/releases");
  put(main, h("h1", {}, t("nav.releases")));
  if (may("publish")) put(main, publishForm(channels));
  for (const c of channels) {
    put(main, h("section", { class: "card" }, h("h2", {}, t("release.channel", { channel: c.channel })),
      table(["release.version", "release.date", "release.size", "release.admits"],
        [...c.releases].reverse().map((r) => h("tr", {},
          h("td", {}, link(`#/releases/${path(c.channel, r.version)}`, r.version), " ", r.critical ? badge("bad", t("release.critical")) : null),
          h("td", {}, when(r.date)),
          h("td", {}, bytes(r.size)),
          h("td", {}, r.stores ? (r.stores.length ? r.stores.join(", ") : t("release.nobody")) : t("release.everyone")))))));
  }
}

async function releasePage(main, channel, version) {
  const p = await api("GET", `/releases/${path(channel, version)}`);
  const r = p.release;
  const changeList = (key, l) => h("details", {}, h("summary", {}, t(key, { n: l.count })),
    h("ul", { class: "paths" }, l.paths.map((x) => h("li", {}, x))), l.count > l.paths.length ? h("p", {}, "…") : null);
  put(main, 
    h("h1", {}, `${channel} ${r.version}`, " ", r.critical ? badge("bad", t("release.critical")) : null),
    h("section", { class: "card" }, h("dl", {},
      h("dt", {}, t("release.date")), h("dd", {}, when(r.date)),
      h("dt", {}, t("release.size")), h("dd", {}, `${bytes(r.size)} · ${t("release.files", { n: p.files })}`),
      h("dt", {}, t("release.minfrom")), h("dd", {}, r.min_from || "—"),
      h("dt", {}, t("release.models")), h("dd", {}, r.models && r.models.length ? r.models.join(", ") : t("release.allmodels")),
      h("dt", {}, t("release.admits")), h("dd", {}, r.stores ? (r.stores.length ? r.stores.join(", ") : t("release.nobody")) : t("release.everyone")),
      h("dt", {}, "English"), h("dd", { class: "notes" }, r.notes.en || "—"),
      h("dt", {}, "中文"), h("dd", { class: "notes" }, r.notes["zh-CN"] || "—"))),
    h("section", { class: "card" }, h("h2", {}, p.changes ? t("release.changes", { previous: p.changes.previous }) : t("release.first")),
      p.changes ? [changeList("release.added", p.changes.added), changeList("release.changed", p.changes.changed), changeList("release.removed", p.changes.removed)] : null),
    h("section", { class: "card" }, h("h2", {}, t("release.runs")),
      h("p", {}, p.stores.length ? p.stores.map((s) => [link(`#/stores/${encodeURIComponent(s)}`, s), " "]) : t("none"))),
    h("section", { class: "card" }, h("h2", {}, t("nav.rollouts")),
      table(["rollout.id", "rollout.phase", "rollout.created"], p.rollouts.map((x) => h("tr", {},
        h("td", {}, link(`#/rollouts/${encodeURIComponent(x.id)}`, x.id)),
        h("td", {}, phaseBadge(x.state.phase)),
        h("td", {}, when(x.created)))))));
}

function rolloutForm(channels) {
  const versions = channels.flatMap((c) => c.releases.map((r) => `${c.channel} ${r.version}`)).reverse();
  const form = h("form", { id: "start-rollout", class: "card" },
    h("h2", {}, t("start.title")),
    h("div", { class: "grid" },
      h("label", {}, t("start.release"), h("select", { name: "release", required: true }, versions.map((v) => h("option", { value: v }, v)))),
      h("label", {}, t("start.pilots"), h("input", { name: "pilots", placeholder: "store-001, store-002" })),
      h("label", {}, t("start.shares"), h("input", { name: "shares", value: "50, 100", required: true })),
      h("label", {}, t("start.success"), h("input", { name: "success", type: "number", min: 0, max: 100, value: 95 })),
      h("label", {}, t("start.error"), h("input", { name: "error", type: "number", min: 0, max: 100, value: 0 })),
      h("label", {}, t("start.soak"), h("input", { name: "soak", type: "number", min: 0, value: 60 })),
      h("label", {}, t("start.labels"), h("input", { name: "labels", placeholder: "region=north mall" })),
      h("label", {}, t("start.running"), h("input", { name: "running", placeholder: "1.0.0" })),
      h("label", {}, t("start.models"), h("input", { name: "models", placeholder: "CP-500" })),
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "approval" }), t("start.approval"))),
    h("button", { type: "submit" }, t("start.submit")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const d = new FormData(form);
    const [channel, version] = String(d.get("release")).split(" ");
    const num = (k) => Number(d.get(k));
    const wave = (name, stores) => ({ name, stores, success_percent: num("success"), error_percent: num("error"), soak_secs: num("soak") * 60 });
    const pilots = words(d.get("pilots"));
    const waves = [];
    if (pilots.length) waves.push(wave("pilot", { named: pilots }));
    for (const s of String(d.get("shares")).split(/[\s,%]+/).filter(Boolean)) waves.push(wave(`${s}%`, { share: Number(s) }));
    const filter = { labels: words(d.get("labels")), running: words(d.get("running")), models: words(d.get("models")) };
    const out = await act(t("start.title"), () => api("POST", "/rollouts", { channel, version, plan: { waves, requires_approval: !!d.get("approval"), filter } }));
    if (out) location.hash = `#/rollouts/${encodeURIComponent(out.id)}`;
  });
  return form;
}

async function rolloutsPage(main) {
  const [rollouts, channels] = await Promise.all([api("GET", "/rollouts"), may("rollout") ? api("GET", "/releases") : []]);
  put(main, h("h1", {}, t("nav.rollouts")));
  if (may("rollout")) put(main, rolloutForm(channels));
  put(main, table(["rollout.id", "rollout.release", "rollout.phase", "rollout.by", "rollout.created"],
    rollouts.map((r) => h("tr", {},
      h("td", {}, link(`#/rollouts/${encodeURIComponent(r.id)}`, r.id)),
      h("td", {}, `${r.channel} ${r.version}`),
      h("td", {}, phaseBadge(r.state.phase)),
      h("td", {}, r.state.created_by),
      h("td", {}, when(r.created))))));
}

function filterText(f) {
  const labels = (f && f.labels) || [], running = (f && f.running) || [], models = (f && f.models) || [];
  const parts = [];
  if (labels.length) parts.push(t("filter.labels", { labels: labels.join(" ") }));
  if (running.length) parts.push(t("filter.running", { versions: running.join(", ") }));
  if (models.length) parts.push(t("filter.models", { models: models.join(", ") }));
  return parts.length ? parts.join(" · ") : t("filter.all");
}

async function rolloutPage(main, id) {
  const { rollout: r, results } = await api("GET", `/rollouts/${path(id)}`);
  const phase = r.state.phase;
  const current = phase.wave;
  const buttons = [];
  const button = (action, needs, enabled, cls) => {
    if (!may(needs)) return;
    buttons.push(h("button", { type: "button", id: `rollout-${action}`, class: cls || "", disabled: !enabled, onclick: async () => {
      if (action === "abort" && !confirm(t("rollout.abortconfirm"))) return;
      if (await act(t(`action.${action}`), () => api("POST", `/rollouts/${path(id)}/${action}`)) !== undefined) render();
    } }, t(`action.${action}`)));
  };
  const open = ["running", "paused", "awaiting_approval"].includes(phase.phase);
  button("approve", "approve", phase.phase === "awaiting_approval");
  button("pause", "rollout", phase.phase === "running");
  button("resume", "rollout", phase.phase === "paused");
  button("advance", "rollout", phase.phase === "running" || phase.phase === "paused");
  button("abort", "rollout", open, "danger");
  const resultOf = (store) => results[store];
  put(main,
    h("h1", {}, t("rollout.title", { channel: r.channel, version: r.version }), " ", h("span", { id: "phase" }, phaseBadge(phase))),
    phase.phase === "halted" ? h("p", { class: "alert", id: "halted-why" }, t("rollout.halted", { wave: phase.wave + 1 }), " ", phase.why) : null,
    phase.phase === "aborted" ? h("p", { class: "alert" }, t("rollout.abortedby", { by: phase.by })) : null,
    h("section", { class: "card" },
      h("dl", {},
        h("dt", {}, t("rollout.id")), h("dd", {}, r.id),
        h("dt", {}, t("rollout.by")), h("dd", {}, r.state.created_by),
        h("dt", {}, t("rollout.created")), h("dd", {}, when(r.created)),
        h("dt", {}, t("rollout.filter")), h("dd", {}, filterText(r.plan.filter)),
        phase.since ? [h("dt", {}, t("rollout.since")), h("dd", {}, when(phase.since))] : null),
      h("div", { class: "actions" }, buttons)),
    ...r.plan.waves.map((w, i) => {
      const stores = r.waves[i] || [];
      const ok = stores.filter((s) => resultOf(s) && resultOf(s).result === "succeeded").length;
      const failed = stores.filter((s) => resultOf(s) && resultOf(s).result === "failed").length;
      const status = current === undefined ? (phase.phase === "done" ? "passed" : "waiting")
        : i < current ? "passed" : i === current ? "current" : "waiting";
      return h("section", { class: `card wave ${status}`, "data-wave": i },
        h("h2", {}, `${t("rollout.waveno", { n: i + 1 })} · ${w.name} `, badge(status === "current" ? "warn" : status === "passed" ? "ok" : "", t(`wave.${status}`))),
        h("p", { class: "muted" }, t("rollout.rules", { success: w.success_percent, error: w.error_percent, soak: Math.round(w.soak_secs / 60) }),
          " · ", t("rollout.tally", { ok, failed, total: stores.length })),
        table(["store.id", "rollout.result"], stores.map((s) => h("tr", { "data-store": s }, h("td", {}, link(`#/stores/${encodeURIComponent(s)}`, s)),
          h("td", {}, resultOf(s) ? (resultOf(s).result === "succeeded" ? badge("ok", t("result.succeeded")) : [badge("bad", t("result.failed")), h("span", { class: "why" }, ` ${resultOf(s).why}`)]) : t("result.waiting"))))));
    }));
}

async function auditPage(main) {
  const rows = await api("GET", "/audit?limit=200");
  put(main, h("h1", {}, t("nav.audit")),
    table(["audit.at", "audit.who", "audit.action", "audit.subject"], rows.map((a) => h("tr", {},
      h("td", {}, when(a.at)), h("td", {}, a.who), h("td", {}, a.action), h("td", {}, a.subject)))));
}

// ---- routing ---------------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, "overview", overviewPage],
  [/^#\/stores$/, "stores", storesPage],
  [/^#\/stores\/([^/]+)$/, "stores", storePage],
  [/^#\/releases$/, "releases", releasesPage],
  [/^#\/releases\/([^/]+)\/([^/]+)$/, "releases", releasePage],
  [/^#\/rollouts$/, "rollouts", rolloutsPage],
  [/^#\/rollouts\/([^/]+)$/, "rollouts", rolloutPage],
  [/^#\/audit$/, "audit", auditPage],
];

let rendering = 0;

async function render() {
  const ticket = ++rendering;
  const main = document.createElement("main");
  main.id = "main";
  const signedIn = !!state.me;
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn;
  document.getElementById("who").textContent = signedIn ? `${state.me.name} · ${t(`role.${state.me.role}`)}` : "";
  if (!signedIn) {
    signInPage(main);
  } else {
    const hash = location.hash || "#/";
    const found = ROUTES.find(([re]) => re.test(hash));
    if (!found) {
      put(main, h("p", {}, t("notfound")));
    } else {
      const [re, page, show] = found;
      for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("here", a.dataset.page === page);
      try {
        await show(main, ...hash.match(re).slice(1).map(decodeURIComponent));
      } catch (e) {
        if (e.status === 401) return;
        main.replaceChildren(h("p", { class: "alert" }, e.message));
      }
    }
  }
  if (ticket !== rendering) return; // a newer render started meanwhile
  main.dataset.ready = "true";
  main.dataset.hash = signedIn ? location.hash || "#/" : "";
  document.getElementById("main").replaceWith(main);
}

function route() {
  flash("");
  state.rotated = null;
  render();
}

async function start() {
  state.lang = pickLang();
  applyLang();
  document.getElementById("lang").addEventListener("change", (ev) => {
    state.lang = ev.target.value;
    localStorage.setItem("tillup.lang", state.lang);
    applyLang();
    render();
  });
  document.getElementById("signout").addEventListener("click", async () => {
    try { await api("DELETE", "/session"); } catch (_) { /* signed out either way */ }
    state.me = null;
    location.hash = "#/";
    render();
  });
  window.addEventListener("hashchange", route);
  try { state.me = await api("GET", "/me"); } catch (_) { state.me = null; }
  render();
  // Rollouts move by themselves: the page follows without a reload.
  setInterval(() => {
    if (state.me && /^#\/(rollouts\/|$)|^$/.test(location.hash) && !document.querySelector("form:focus-within")) render();
  }, 5000);
}

start();
