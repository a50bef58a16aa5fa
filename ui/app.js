// The tillup window: draws the tray's snapshots and sends its requests.
// No upgrade logic lives here: everything shown comes from the snapshot
// (tillup_listener::bridge::Snapshot), everything done is a command.
"use strict";

const { invoke } = window.__TAURI__.core;
const { listen } = window.__TAURI__.event;

const $ = (sel) => document.querySelector(sel);
const state = { snap: null, page: "window", tab: "terminals", langOverride: null, settingsFilled: false };

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function show(node, on) {
  node.hidden = !on;
}

function fmtTime(ts) {
  if (!ts) return "";
  return new Date(ts).toLocaleString(currentLang);
}

function fmtDate(ts) {
  if (!ts) return "";
  return new Date(ts).toLocaleDateString(currentLang);
}

function fmtSize(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["B", "KB", "MB", "GB"];
  let v = bytes, i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
}

function list(numbers) {
  return numbers.join(currentLang === "zh-CN" ? "、" : ", ");
}

function stateText(view) {
  const s = view.state;
  switch (s.state) {
    case "upgrading":
      return t("state.upgrading", { n: Math.min(s.done + 1, s.total), m: s.total });
    case "failed":
      return t("state.failed", { version: s.version, terminals: "", list: list(s.terminals) });
    case "update_available": {
      const text = t(s.critical ? "state.update_available.critical" : "state.update_available", { version: s.version });
      return s.tonight ? t("state.tonight", { text }) : text;
    }
    default: {
      const v = s.versions;
      if (!v) return t("state.up_to_date");
      return t("state.up_to_date.v", { versions: v[0] === v[1] ? v[0] : v[0] + "–" + v[1] });
    }
  }
}

function applyStaticText() {
  for (const node of document.querySelectorAll("[data-t]")) node.textContent = t(node.dataset.t);
  $("#lang-switch").textContent = t("lang.other");
}

// ---- popup ----

async function answer(which, buttons) {
  buttons.forEach((b) => (b.disabled = true));
  show($("#popup-error"), false);
  try {
    await invoke("answer", { answer: which });
    if (which === "now") {
      await invoke("show_page", { page: "window" });
      setPage("window");
      selectTab("upgrade");
    } else {
      await invoke("close_window");
    }
  } catch (e) {
    $("#popup-error").textContent = String(e);
    show($("#popup-error"), true);
    buttons.forEach((b) => (b.disabled = false));
  }
}

function renderPopup(snap) {
  const p = snap.prompt;
  show($("#popup-body"), !!p);
  show($("#popup-none"), !p);
  if (!p) return;
  $("#popup-version").textContent = p.version;
  $("#popup-date").textContent = fmtDate(p.date);
  $("#popup-size").textContent = fmtSize(p.size);
  $("#popup-terminals").textContent = t("popup.terminals", { list: list(p.terminals) });
  show($("#popup-critical"), p.critical);
  const notes = p.notes || {};
  const text = (currentLang === "zh-CN" ? notes["zh-CN"] || notes.en : notes.en || notes["zh-CN"]) || t("popup.no_notes");
  $("#popup-notes").textContent = text;
  const actions = $("#popup-actions");
  const busy = actions.querySelector("button:disabled") !== null;
  actions.replaceChildren();
  const buttons = [];
  const add = (id, key, which, cls) => {
    const b = el("button", t(key, { time: p.tonight_at }), cls);
    b.id = id;
    b.type = "button";
    b.disabled = busy || snap.busy;
    b.addEventListener("click", () => answer(which, buttons));
    buttons.push(b);
    actions.append(b);
  };
  add("btn-now", "answer.now", "now", "primary");
  add("btn-tonight", "answer.tonight", "tonight");
  add("btn-later", "answer.later", "later");
  // A critical release cannot be skipped: the button is not there at all.
  if (!p.critical) add("btn-skip", "answer.skip", "skip", "link");
}

// ---- window ----

function terminalState(row) {
  switch (row.state) {
    case "up_to_date": return t("term.up_to_date");
    case "update_available": return t("term.update_available", { to: row.to });
    case "upgrading": return t("term.upgrading", { step: t("step." + row.step) });
    case "failed": return t("term.failed", { to: row.to });
    default: return t("term.unknown");
  }
}

function renderTerminals(snap) {
  const body = $("#terminals tbody");
  body.replaceChildren();
  for (const row of snap.terminals) {
    const tr = el("tr", null, "st-" + row.state);
    tr.dataset.terminal = row.number;
    tr.append(
      el("td", row.number, "number"),
      el("td", row.model || "—", "model"),
      el("td", row.version || "—", "version"),
      el("td", terminalState(row), "state"),
      el("td", row.last_report || "—", "last-report"),
    );
    body.append(tr);
  }
  $("#last-check").textContent = snap.last_check ? t("last_check", { time: fmtTime(snap.last_check) }) : t("last_check.never");
}

function summary(entry) {
  const n = entry.terminals.length;
  const failed = entry.terminals.filter((x) => x.result !== "upgraded").length;
  return failed ? t("summary.failed", { failed, n }) : t("summary.ok", { n });
}

function renderProgress(snap) {
  const u = snap.upgrade;
  show($("#progress-running"), !!u);
  show($("#progress-idle"), !u);
  if (!u) {
    const last = snap.history[0];
    $("#progress-last").textContent = last ? t("progress.last", { time: fmtTime(last.started), summary: summary(last) }) : "";
    return;
  }
  $("#progress-line").textContent = t("progress.line", { done: u.done, total: u.total });
  $("#progress-bar").max = Math.max(u.total, 1);
  $("#progress-bar").value = u.done;
  const body = $("#progress-rows");
  body.replaceChildren();
  for (const r of u.terminals) {
    const tr = el("tr", null, "step-" + r.step);
    tr.dataset.terminal = r.number;
    tr.append(el("td", r.number, "number"), el("td", r.from + " → " + r.to, "change"), el("td", t("step." + r.step), "step"), el("td", r.failure || "", "failure"));
    body.append(tr);
  }
}

function trigger(tr) {
  // serde: {"by":"person","name":"…"} or {"by":"schedule"}
  if (!tr) return "";
  return tr.by === "person" ? t("history.by", { who: tr.name }) : t("history.schedule");
}

function renderHistory(snap) {
  const box = $("#history");
  box.replaceChildren();
  if (!snap.history.length) {
    box.append(el("p", t("history.none"), "muted"));
    return;
  }
  for (const entry of snap.history) {
    const card = el("article", null, "entry");
    const to = entry.terminals.map((x) => x.to).sort().pop() || "";
    const head = el("header");
    head.append(el("strong", to), el("span", fmtTime(entry.started), "muted"), el("span", trigger(entry.trigger), "muted"));
    if (!entry.finished) head.append(el("span", t("history.running"), "badge"));
    card.append(head);
    if (entry.halted) card.append(el("p", t("history.halted", { why: entry.halted }), "error"));
    for (const [n, why] of entry.left_out || []) card.append(el("p", t("history.left_out", { n, why }), "muted"));
    const table = el("table", null, "grid compact");
    const thead = el("thead");
    const hr = el("tr");
    for (const k of ["col.number", "col.change", "col.result", "col.stopped", "col.problem"]) hr.append(el("th", t(k)));
    thead.append(hr);
    const tbody = el("tbody");
    for (const x of entry.terminals) {
      const tr = el("tr", null, "res-" + x.result);
      tr.dataset.terminal = x.number;
      const stopped = x.stopped_ms === null || x.stopped_ms === undefined ? "—" : t("seconds", { s: (x.stopped_ms / 1000).toFixed(1) });
      tr.append(el("td", x.number), el("td", x.from + " → " + x.to), el("td", t("result." + x.result), "result"), el("td", stopped), el("td", x.failure || ""));
      tbody.append(tr);
    }
    table.append(thead, tbody);
    card.append(table);
    box.append(card);
  }
}

function renderHeader(snap) {
  $("#state-line").textContent = stateText(snap.view);
  $("#state-dot").className = "dot icon-" + snap.view.icon;
  $("#btn-check").disabled = snap.busy;
  $("#btn-upgrade").disabled = snap.busy || !snap.view.upgrade_now;
  show($("#problem"), !!snap.problem);
  $("#problem").textContent = snap.problem || "";
  show($("#prompt-banner"), !!snap.prompt && state.page === "window" && !snap.busy);
  if (snap.prompt) $("#prompt-text").textContent = stateText(snap.view);
}

// ---- settings ----

function terminalRow(term) {
  const tr = el("tr");
  const input = (cls, value, type) => {
    const td = el("td");
    const i = el("input", null, cls);
    i.type = type || "text";
    i.value = value ?? "";
    i.spellcheck = false;
    td.append(i);
    return td;
  };
  const remove = el("button", t("set.remove"), "link");
  remove.type = "button";
  remove.addEventListener("click", () => tr.remove());
  const rm = el("td");
  rm.append(remove);
  tr.append(input("t-number", term.number, "number"), input("t-address", term.address), input("t-token", term.token, "password"), rm);
  return tr;
}

function fillSettings(s) {
  $("#set-server").value = s.server;
  $("#set-mode").value = s.mode;
  $("#set-window-start").value = s.window_start;
  $("#set-window-end").value = s.window_end;
  $("#set-interval").value = s.check_interval_minutes;
  $("#set-autostart").checked = s.autostart;
  $("#set-terminals").replaceChildren(...s.terminals.map(terminalRow));
  state.settingsFilled = true;
}

function readSettings() {
  const whole = (v) => (/^\d+$/.test(String(v).trim()) ? Number(v) : NaN);
  const terminals = [...document.querySelectorAll("#set-terminals tr")].map((tr) => ({
    number: whole(tr.querySelector(".t-number").value),
    address: tr.querySelector(".t-address").value,
    token: tr.querySelector(".t-token").value,
  }));
  const settings = {
    server: $("#set-server").value,
    mode: $("#set-mode").value,
    window_start: $("#set-window-start").value,
    window_end: $("#set-window-end").value,
    check_interval_minutes: whole($("#set-interval").value),
    terminals,
    autostart: $("#set-autostart").checked,
  };
  const bad = Number.isNaN(settings.check_interval_minutes) || terminals.some((x) => Number.isNaN(x.number));
  return bad ? null : settings;
}

async function saveSettings(event) {
  event.preventDefault();
  const error = $("#settings-error");
  show(error, false);
  show($("#settings-saved"), false);
  const settings = readSettings();
  if (!settings) {
    error.textContent = t("set.bad_number");
    show(error, true);
    return;
  }
  $("#btn-save").disabled = true;
  try {
    await invoke("save_settings", { settings });
    show($("#settings-saved"), true);
    setTimeout(() => show($("#settings-saved"), false), 4000);
    state.settingsFilled = false;
    if (state.snap) fillSettings(state.snap.settings);
  } catch (e) {
    // What the manager typed stays; the message says what to change.
    error.textContent = String(e);
    show(error, true);
  } finally {
    $("#btn-save").disabled = false;
  }
}

// ---- pages, tabs, language ----

function setPage(page) {
  state.page = page;
  show($("#popup"), page === "popup");
  show($("#window"), page === "window");
  if (state.snap) render(state.snap);
}

function selectTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll(".tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === tab));
  for (const name of ["terminals", "upgrade", "history", "settings"]) show($("#panel-" + name), name === tab);
  if (tab === "settings" && state.snap) fillSettings(state.snap.settings);
}

function render(snap) {
  state.snap = snap;
  setLang(state.langOverride || snap.lang);
  applyStaticText();
  if (state.page === "popup") {
    renderPopup(snap);
    return;
  }
  renderHeader(snap);
  renderTerminals(snap);
  renderProgress(snap);
  renderHistory(snap);
  if (!state.settingsFilled && state.tab === "settings") fillSettings(snap.settings);
}

async function run(action, button) {
  button.disabled = true;
  try {
    await invoke(action);
    if (action === "upgrade_now") selectTab("upgrade");
  } catch (e) {
    $("#problem").textContent = String(e);
    show($("#problem"), true);
  }
}

async function start() {
  state.langOverride = localStorage.getItem("tillup.lang");
  setLang(state.langOverride || ((navigator.language || "").startsWith("zh") ? "zh-CN" : "en"));
  applyStaticText();
  $("#btn-check").addEventListener("click", (e) => run("check_now", e.currentTarget));
  $("#btn-upgrade").addEventListener("click", (e) => run("upgrade_now", e.currentTarget));
  $("#btn-answer").addEventListener("click", () => setPage("popup"));
  $("#btn-close").addEventListener("click", () => invoke("close_window"));
  $("#lang-switch").addEventListener("click", () => {
    state.langOverride = currentLang === "zh-CN" ? "en" : "zh-CN";
    localStorage.setItem("tillup.lang", state.langOverride);
    state.settingsFilled = false;
    if (state.snap) render(state.snap);
    if (state.tab === "settings" && state.snap) fillSettings(state.snap.settings);
  });
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => selectTab(b.dataset.tab));
  $("#settings").addEventListener("submit", saveSettings);
  $("#btn-add-terminal").addEventListener("click", () => {
    const rows = document.querySelectorAll("#set-terminals tr").length;
    $("#set-terminals").append(terminalRow({ number: rows + 1, address: "http://", token: "" }));
  });

  await listen("snapshot", (e) => render(e.payload));
  await listen("show", (e) => setPage(e.payload));
  const { page } = await invoke("start");
  selectTab("terminals");
  setPage(page);
  const snap = await invoke("snapshot");
  if (snap) render(snap);
}

start().catch((e) => {
  document.body.textContent = String(e);
});
