// The tillup window: draws the tray's snapshots and sends its requests.
//
// No upgrade logic lives here: everything shown comes from the snapshot
// (tillup_listener::bridge::Snapshot, as serde writes it), everything done
// is a Tauri command whose error, a sentence for the store manager, is
// shown as it is. Data is only ever put in the page as text (textContent),
// never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));

const TABS = ["terminals", "upgrade", "history", "settings"];
const LANG_KEY = "tillup.lang";
const HISTORY_SHOWN = 50;
const SAVED_MS = 4000;

const state = {
  snap: null, // the newest snapshot
  fromEvent: false, // a snapshot event arrived (newer than `invoke("snapshot")`)
  page: null, // "popup" | "window"
  tab: "terminals",
  langOverride: null, // the manager's choice, beats snap.lang
  popupPending: false, // an answer is on its way
  popupReturns: false, // the popup was opened over the window: go back there, not close
  actionPending: false, // Check now / Upgrade now on its way
  actionError: null,
  settingsFilled: false, // the form holds values (then only a tab change or a save refills it)
  saving: false,
  savedTimer: null,
  historyKey: null, // what #history was last drawn from
};

// The skip button, kept while it is out of the DOM (critical releases).
let skipButton = null;

// ------------------------------------------------------------ helpers

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function td(text, cls) {
  return el("td", text === undefined || text === null || text === "" ? t("none") : text, cls);
}

function show(node, on) {
  if (node) node.hidden = !on;
}

function setText(sel, text) {
  const node = typeof sel === "string" ? $(sel) : sel;
  if (node && node.textContent !== text) node.textContent = text;
}

function errorText(e) {
  if (e === null || e === undefined) return "";
  if (typeof e === "string") return e;
  if (e instanceof Error) return e.message;
  try {
    return JSON.stringify(e);
  } catch (_) {
    return String(e);
  }
}

function lang() {
  return currentLang;
}

function arr(x) {
  return Array.isArray(x) ? x : [];
}

// RFC 3339 from jiff may carry nanoseconds; Date wants at most
// milliseconds (WebKit refuses more), so the fraction is cut to three digits.
function parseTime(ts) {
  if (typeof ts !== "string" || !ts) return null;
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:[.,](\d+))?(Z|[+-]\d{2}:?\d{2})?$/i.exec(ts.trim());
  let d;
  if (m) {
    const frac = m[2] ? "." + (m[2] + "00").slice(0, 3) : "";
    d = new Date(m[1] + frac + (m[3] || "Z").toUpperCase());
  } else {
    d = new Date(ts);
  }
  return Number.isNaN(d.getTime()) ? null : d;
}

function fmtTime(ts) {
  const d = parseTime(ts);
  if (!d) return ts ? String(ts) : "";
  try {
    return d.toLocaleString(lang(), { dateStyle: "medium", timeStyle: "short" });
  } catch (_) {
    return d.toLocaleString(lang());
  }
}

function fmtDate(ts) {
  const d = parseTime(ts);
  if (!d) return ts ? String(ts) : "";
  try {
    return d.toLocaleDateString(lang(), { dateStyle: "long" });
  } catch (_) {
    return d.toLocaleDateString(lang());
  }
}

function fmtNumber(n, digits) {
  try {
    return n.toLocaleString(lang(), { maximumFractionDigits: digits, minimumFractionDigits: digits });
  } catch (_) {
    return n.toFixed(digits);
  }
}

function fmtSize(bytes) {
  if (typeof bytes !== "number" || !Number.isFinite(bytes) || bytes < 0) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = bytes;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return fmtNumber(v, i === 0 ? 0 : 1) + " " + units[i];
}

function list(numbers) {
  return arr(numbers).join(t("list.sep"));
}

// Semver order, enough for "which release is newest" (pre-releases sort first).
function cmpVersion(a, b) {
  const parse = (v) => {
    const [core, pre] = String(v).split("+")[0].split(/-(.*)/s);
    return { nums: core.split(".").map((x) => parseInt(x, 10) || 0), pre: pre || "" };
  };
  const x = parse(a);
  const y = parse(b);
  for (let i = 0; i < 3; i++) {
    if ((x.nums[i] || 0) !== (y.nums[i] || 0)) return (x.nums[i] || 0) - (y.nums[i] || 0);
  }
  if (x.pre === y.pre) return 0;
  if (!x.pre) return 1;
  if (!y.pre) return -1;
  return x.pre < y.pre ? -1 : 1;
}

function newest(versions) {
  return versions.filter(Boolean).reduce((best, v) => (best === null || cmpVersion(v, best) > 0 ? v : best), null);
}

function change(from, to) {
  return (from || "?") + " → " + (to || "?");
}

// ------------------------------------------------------------ words from the snapshot

function stateLine(snap) {
  const s = (snap.view && snap.view.state) || {};
  switch (s.state) {
    case "upgrading":
      return t("state.upgrading", { n: Math.min((s.done || 0) + 1, s.total || 0), m: s.total || 0 });
    case "failed":
      return tn("state.failed", arr(s.terminals).length, { version: s.version, list: list(s.terminals) });
    case "update_available": {
      const text = t(s.critical ? "state.update_available.critical" : "state.update_available", { version: s.version });
      if (!s.tonight) return text;
      const at = snap.prompt && snap.prompt.tonight_at;
      return at ? t("state.tonight.at", { text, time: at }) : t("state.tonight", { text });
    }
    case "up_to_date":
    default: {
      const v = s.versions;
      if (!Array.isArray(v) || v.length < 2) return t("state.up_to_date");
      return t("state.up_to_date.versions", { versions: v[0] === v[1] ? v[0] : v[0] + "–" + v[1] });
    }
  }
}

function terminalState(row) {
  switch (row.state) {
    case "up_to_date":
      return t("term.up_to_date");
    case "update_available":
      return t("term.update_available", { to: row.to });
    case "upgrading":
      return t("term.upgrading", { step: stepName(row.step) });
    case "failed":
      return t("term.failed", { to: row.to });
    default:
      return t("term.unknown");
  }
}

function stepName(step) {
  const key = "step." + step;
  const text = t(key);
  return text === key ? String(step || "") : text;
}

function resultName(result) {
  const key = "result." + result;
  const text = t(key);
  return text === key ? String(result || "") : text;
}

function triggerText(trigger) {
  if (!trigger) return "";
  if (trigger.by === "schedule") return t("history.schedule");
  if (trigger.by === "person") return t("history.by", { who: trigger.name || "?" });
  return String(trigger.by || "");
}

function entryVersion(entry) {
  return newest(arr(entry.terminals).map((x) => x.to));
}

function summary(entry) {
  const terms = arr(entry.terminals);
  const n = terms.length;
  const version = entryVersion(entry) || "";
  if (!n) return t("summary.none");
  const failed = terms.filter((x) => x.result !== "upgraded").length;
  if (failed) return t("summary.failed", { failed, n });
  return tn("summary.ok", n, { version });
}

function notesText(notes) {
  const n = notes || {};
  const mine = lang() === "zh-CN" ? n["zh-CN"] : n.en;
  const other = lang() === "zh-CN" ? n.en : n["zh-CN"];
  const text = (mine && mine.trim() ? mine : other) || "";
  return text.trim() ? text : "";
}

// ------------------------------------------------------------ static text and language

function applyStaticText() {
  for (const node of $$("[data-t]")) setText(node, t(node.dataset.t));
  const sw = $("#lang-switch");
  setText(sw, lang() === "en" && !canDrawChinese() ? t("lang.other.no_cjk_font") : t("lang.other"));
  sw.setAttribute("aria-label", t("lang.other.label"));
  sw.lang = lang() === "zh-CN" ? "en" : "zh-CN";
  for (const node of $$("[data-t-label]")) node.setAttribute("aria-label", t(node.dataset.tLabel));
  for (const node of $$("[data-t-placeholder]")) node.placeholder = t(node.dataset.tPlaceholder);
  for (const b of $$("#set-terminals .t-remove")) {
    const n = b.closest("tr").querySelector(".t-number").value;
    b.setAttribute("aria-label", t("set.remove.label", { n }));
  }
}

// Whether the system has a font for Chinese: without one, 中文 draws as two
// empty boxes, as wide as two characters no font has.
let chineseDrawable = null;
function canDrawChinese() {
  if (chineseDrawable === null) {
    const ctx = document.createElement("canvas").getContext("2d");
    if (!ctx) return (chineseDrawable = true);
    ctx.font = getComputedStyle(document.body).font;
    chineseDrawable = ctx.measureText("中文").width !== ctx.measureText("\uE000\uE001").width;
  }
  return chineseDrawable;
}

function chooseLang() {
  const wanted = state.langOverride || (state.snap && state.snap.lang) || ((navigator.language || "").toLowerCase().startsWith("zh") ? "zh-CN" : "en");
  if (wanted !== currentLang || document.documentElement.lang !== wanted) setLang(wanted);
  applyStaticText();
}

function readStoredLang() {
  try {
    const v = localStorage.getItem(LANG_KEY);
    return LANGS.includes(v) ? v : null;
  } catch (_) {
    return null;
  }
}

function switchLang() {
  state.langOverride = lang() === "zh-CN" ? "en" : "zh-CN";
  try {
    localStorage.setItem(LANG_KEY, state.langOverride);
  } catch (_) {
    // Not kept across restarts; the switch still works now.
  }
  render();
}

// ------------------------------------------------------------ popup

function popupButtons() {
  return ["#btn-now", "#btn-tonight", "#btn-later", "#btn-skip", "#btn-close"].map((s) => $(s)).filter(Boolean);
}

function setSkipPresent(present) {
  const inDom = document.body.contains(skipButton);
  if (present && !inDom) $(".popup-actions-row").append(skipButton);
  if (!present && inDom) skipButton.remove();
}

function renderPopup(snap) {
  const p = snap && snap.prompt;
  show($("#popup-loading"), !snap);
  show($("#popup-body"), !!p);
  show($("#popup-none"), !!snap && !p);
  for (const b of popupButtons()) b.disabled = state.popupPending;
  if (!p) return;

  setText("#popup-version", String(p.version || ""));
  show($("#popup-critical"), !!p.critical);
  $("#popup").classList.toggle("critical", !!p.critical);

  const date = fmtDate(p.date);
  setText("#popup-date", date);
  show($("#popup-date-row"), !!date);
  const size = fmtSize(p.size);
  setText("#popup-size", size);
  show($("#popup-size-row"), !!size);

  const terms = arr(p.terminals);
  setText("#popup-terminals", terms.length ? tn("popup.terminals", terms.length, { list: list(terms) }) : t("popup.terminals.none"));

  const notes = notesText(p.notes);
  setText("#popup-notes", notes || t("popup.no_notes"));
  $("#popup-notes").classList.toggle("empty-notes", !notes);

  const tonight = p.tonight_at || "";
  setText("#btn-tonight", t("answer.tonight", { time: tonight }));
  show($("#popup-scheduled"), !!p.tonight);
  setText("#popup-scheduled", p.tonight ? t("popup.scheduled", { time: tonight }) : "");

  // A critical release cannot be skipped: the button is not there at all.
  setSkipPresent(!p.critical);
}

function popupError(message) {
  for (const sel of ["#popup-error", "#popup-none-error"]) {
    setText(sel, message || "");
    show($(sel), !!message);
  }
}

// Leave the popup: back to the window when it was opened over it, else close.
async function leavePopup() {
  if (state.popupReturns) {
    state.popupReturns = false;
    try {
      await invoke("show_page", { page: "window" });
    } catch (e) {
      state.actionError = errorText(e);
    }
    setPage("window");
    return;
  }
  await invoke("close_window");
}

async function answer(which) {
  if (state.popupPending) return;
  state.popupPending = true;
  popupError(null);
  render();
  let answered = false;
  try {
    await invoke("answer", { answer: which });
    answered = true;
    if (which === "now") {
      // The same window follows the upgrade.
      state.popupReturns = false;
      state.popupPending = false;
      try {
        await invoke("show_page", { page: "window" });
      } catch (e) {
        state.actionError = errorText(e);
      }
      selectTab("upgrade");
      setPage("window");
      return;
    }
    await leavePopup();
    state.popupPending = false;
    render();
  } catch (e) {
    state.popupPending = false;
    popupError(errorText(e));
    render();
    if (answered) {
      // The answer counted; only closing failed. Nothing more to answer.
      for (const b of popupButtons()) if (b.id !== "btn-close") b.disabled = true;
    }
  }
}

async function closePopup() {
  if (state.popupPending) return;
  state.popupPending = true;
  popupError(null);
  render();
  try {
    await leavePopup();
  } catch (e) {
    popupError(errorText(e));
  } finally {
    state.popupPending = false;
    render();
  }
}

async function openPopupFromWindow() {
  state.popupReturns = true;
  popupError(null);
  try {
    await invoke("show_page", { page: "popup" });
  } catch (e) {
    // The page still switches; only the window's size stays.
    console.warn("show_page popup:", errorText(e));
  }
  setPage("popup");
}

// ------------------------------------------------------------ window: header

function renderHeader(snap) {
  const s = (snap && snap.view && snap.view.state) || {};
  const kind = snap ? s.state || "up_to_date" : "loading";
  const status = $("#status");
  for (const c of Array.from(status.classList)) if (c.startsWith("st-")) status.classList.remove(c);
  status.classList.add("st-" + kind);

  setText("#state-line", snap ? stateLine(snap) : t("loading"));
  const busy = !!(snap && snap.busy);
  show($("#busy-note"), busy && s.state !== "upgrading");

  const blocked = !snap || busy || state.actionPending;
  $("#btn-check").disabled = blocked;
  $("#btn-upgrade").disabled = blocked || !(snap.view && snap.view.upgrade_now);

  const problem = snap && snap.problem;
  setText("#problem", problem || "");
  show($("#problem"), !!problem);
  setText("#action-error", state.actionError || "");
  show($("#action-error"), !!state.actionError);

  const p = snap && snap.prompt;
  const offer = !!p && !busy && s.state !== "upgrading";
  show($("#prompt-banner"), offer);
  if (offer) setText("#prompt-text", p.tonight ? t("prompt.tonight", { time: p.tonight_at || "" }) : t("prompt.waiting", { version: p.version }));
}

async function action(command) {
  if (state.actionPending) return;
  state.actionPending = true;
  state.actionError = null;
  render();
  try {
    await invoke(command);
    if (command === "upgrade_now") selectTab("upgrade");
  } catch (e) {
    state.actionError = errorText(e);
  } finally {
    state.actionPending = false;
    render();
  }
}

// ------------------------------------------------------------ window: terminals

function renderTerminals(snap) {
  const rows = arr(snap && snap.terminals);
  const body = $("#terminals tbody");
  const trs = rows.map((row) => {
    const tr = el("tr", null, "st-" + (row.state || "unknown"));
    tr.dataset.terminal = String(row.number);
    const stateCell = el("td", null, "state");
    stateCell.append(el("span", terminalState(row), "pill"));
    tr.append(
      el("td", row.number, "number"),
      td(row.address, "address"),
      td(row.model, "model"),
      td(row.version, "version"),
      stateCell,
      td(row.last_report, "last-report"),
    );
    return tr;
  });
  body.replaceChildren(...trs);
  show($("#terminals"), rows.length > 0 || !snap);
  show($("#terminals-empty"), !!snap && rows.length === 0);
  setText("#last-check", snap && snap.last_check ? t("last_check", { time: fmtTime(snap.last_check) }) : snap ? t("last_check.never") : "");
}

// ------------------------------------------------------------ window: the running upgrade

function renderProgress(snap) {
  const u = snap && snap.upgrade;
  show($("#progress-running"), !!u);
  show($("#progress-idle"), !u);
  if (!u) {
    const last = snap && arr(snap.history)[0];
    setText("#progress-last", last ? t("progress.last", { time: fmtTime(last.started), summary: summary(last) }) : snap ? t("progress.never") : "");
    return;
  }
  const total = Math.max(Number(u.total) || 0, 0);
  const done = Math.min(Math.max(Number(u.done) || 0, 0), total);
  setText("#progress-line", t("progress.line", { done, total }));
  setText("#progress-started", u.started ? t("progress.started", { time: fmtTime(u.started) }) : "");
  const moving = u.transfer;
  show($("#progress-transfer"), !!moving);
  if (moving) {
    const key = moving.moving === "to_terminals" ? "progress.to_terminals" : "progress.to_host";
    const mb = (b) => (Math.max(Number(b) || 0, 0) / 1e6).toFixed(1) + " MB";
    let line = t(key, { done: mb(moving.done), total: mb(moving.total) });
    const eta = moving.eta_secs;
    if (eta !== null && eta !== undefined) {
      line += " · " + (eta < 90 ? t("progress.eta_s", { n: eta }) : t("progress.eta_min", { n: Math.ceil(eta / 60) }));
    }
    setText("#progress-transfer", line);
  }
  const bar = $("#progress-bar");
  bar.max = Math.max(total, 1);
  bar.value = done;
  bar.setAttribute("aria-valuetext", t("progress.line", { done, total }));

  const trs = arr(u.terminals).map((r) => {
    const tr = el("tr", null, "step-" + (r.step || "planned"));
    tr.dataset.terminal = String(r.number);
    const step = el("td", null, "step");
    step.append(el("span", stepName(r.step), "pill"));
    tr.append(el("td", r.number, "number"), el("td", change(r.from, r.to), "change"), step, el("td", r.failure || "", "failure"));
    return tr;
  });
  $("#progress-rows").replaceChildren(...trs);
}

// ------------------------------------------------------------ window: history

function historyEntry(entry) {
  const terms = arr(entry.terminals);
  const failed = terms.some((x) => x.result !== "upgraded");
  const running = !entry.finished || terms.some((x) => x.result === "in_progress");
  const card = el("article", null, "entry " + (running ? "entry-running" : failed || entry.halted ? "entry-failed" : "entry-ok"));
  if (entry.id) card.dataset.upgrade = String(entry.id);

  const head = el("header", null, "entry-head");
  const version = entryVersion(entry);
  head.append(el("h3", version ? t("history.title", { version }) : t("history.title.plain"), "entry-title"));
  const badge = running ? ["history.running", "badge-busy"] : failed || entry.halted ? ["history.problems", "badge-error"] : ["history.done", "badge-ok"];
  head.append(el("span", t(badge[0]), "badge " + badge[1]));
  const meta = el("p", null, "entry-meta muted");
  meta.append(el("span", fmtTime(entry.started), "started"));
  const trigger = triggerText(entry.trigger);
  if (trigger) meta.append(el("span", trigger, "trigger"));
  card.append(head, meta);

  if (entry.halted) card.append(el("p", t("history.halted", { why: entry.halted }), "halted"));
  for (const left of arr(entry.left_out)) {
    const [n, why] = Array.isArray(left) ? left : [left, ""];
    card.append(el("p", t("history.left_out", { n, why }), "left-out muted"));
  }

  if (terms.length) {
    const table = el("table", null, "grid compact");
    const headRow = el("tr");
    for (const [key, cls] of [["col.number", "number"], ["col.change", "change"], ["col.result", "result"], ["col.stopped", "stopped"], ["col.problem", "failure"]]) {
      headRow.append(el("th", t(key), cls));
    }
    const thead = el("thead");
    thead.append(headRow);
    const tbody = el("tbody");
    for (const x of terms) {
      const tr = el("tr", null, "res-" + (x.result || "in_progress"));
      tr.dataset.terminal = String(x.number);
      const stopped = typeof x.stopped_ms === "number" ? t("seconds", { s: fmtNumber(x.stopped_ms / 1000, 1) }) : "";
      const result = el("td", null, "result");
      result.append(el("span", resultName(x.result), "pill"));
      tr.append(el("td", x.number, "number"), el("td", change(x.from, x.to), "change"), result, td(stopped, "stopped"), el("td", x.failure || "", "failure"));
      tbody.append(tr);
    }
    table.append(thead, tbody);
    card.append(table);
  }
  return card;
}

function renderHistory(snap) {
  const history = arr(snap && snap.history);
  // Redrawn only when it changed: it can be long and rarely changes.
  const key = lang() + "\n" + (snap ? JSON.stringify(history) : "");
  if (key === state.historyKey) return;
  state.historyKey = key;
  const box = $("#history");
  if (!history.length) {
    box.replaceChildren(el("p", snap ? t("history.none") : "", "empty"));
    return;
  }
  const nodes = history.slice(0, HISTORY_SHOWN).map(historyEntry);
  const more = history.length - HISTORY_SHOWN;
  if (more > 0) nodes.push(el("p", tn("history.more", more), "muted footnote"));
  box.replaceChildren(...nodes);
}

// ------------------------------------------------------------ window: settings

function terminalRow(term) {
  const tr = el("tr", null, "term-row");
  const cell = (cls, value, type, label) => {
    const c = el("td");
    const input = el("input", null, cls);
    input.type = type;
    input.value = value === undefined || value === null ? "" : String(value);
    input.spellcheck = false;
    input.autocomplete = "off";
    input.dataset.tLabel = label;
    input.setAttribute("aria-label", t(label));
    c.append(input);
    return c;
  };
  const num = cell("t-number", term.number, "number", "col.number");
  num.querySelector("input").min = "1";
  num.querySelector("input").step = "1";
  num.className = "number";
  const remove = el("button", t("set.remove"), "t-remove quiet small");
  remove.type = "button";
  remove.dataset.t = "set.remove";
  remove.setAttribute("aria-label", t("set.remove.label", { n: term.number === undefined ? "" : term.number }));
  remove.addEventListener("click", () => {
    const next = tr.nextElementSibling || tr.previousElementSibling;
    tr.remove();
    const focus = next ? next.querySelector(".t-remove") : $("#btn-add-terminal");
    if (focus) focus.focus();
  });
  const rm = el("td", null, "remove");
  rm.append(remove);
  // Tokens are write-only: the page never holds one; empty keeps it.
  const token = cell("t-token", "", "password", "set.token");
  if (term.token_set) {
    token.querySelector("input").dataset.tPlaceholder = "set.token.kept";
    token.querySelector("input").placeholder = t("set.token.kept");
  }
  tr.append(num, cell("t-address", term.address, "text", "set.address"), token, rm);
  return tr;
}

function fillSettings(s) {
  if (!s) return;
  $("#set-server").value = s.server || "";
  $("#set-mode").value = s.mode === "scheduled" ? "scheduled" : "prompt";
  $("#set-window-start").value = s.window_start || "";
  $("#set-window-end").value = s.window_end || "";
  $("#set-interval").value = s.check_interval_minutes === undefined || s.check_interval_minutes === null ? "" : String(s.check_interval_minutes);
  $("#set-autostart").checked = !!s.autostart;
  $("#set-terminals").replaceChildren(...arr(s.terminals).map(terminalRow));
  state.settingsFilled = true;
}

function wholeNumber(v) {
  const text = String(v).trim();
  return /^\d+$/.test(text) ? Number(text) : NaN;
}

function readSettings() {
  const terminals = $$("#set-terminals tr").map((tr) => ({
    number: wholeNumber(tr.querySelector(".t-number").value),
    address: tr.querySelector(".t-address").value,
    token: tr.querySelector(".t-token").value,
    token_set: !!tr.querySelector(".t-token").dataset.tPlaceholder,
  }));
  const settings = {
    server: $("#set-server").value,
    mode: $("#set-mode").value,
    window_start: $("#set-window-start").value,
    window_end: $("#set-window-end").value,
    check_interval_minutes: wholeNumber($("#set-interval").value),
    terminals,
    autostart: $("#set-autostart").checked,
  };
  const bad = !Number.isSafeInteger(settings.check_interval_minutes) || terminals.some((x) => !Number.isSafeInteger(x.number) || x.number > 4294967295);
  return bad ? null : settings;
}

// What the tray keeps of saved settings (Settings::apply): trimmed, terminals by number.
function normalized(s) {
  return Object.assign({}, s, {
    server: s.server.trim(),
    window_start: s.window_start.trim(),
    window_end: s.window_end.trim(),
    terminals: s.terminals
      .map((x) => ({ number: x.number, address: x.address.trim(), token: x.token.trim(), token_set: !!x.token_set }))
      .sort((a, b) => a.number - b.number),
  });
}

// The input a refusal is about: `Config::validate` starts its message with
// the field's name ("server `…`: …", "window.start `…`: …", "terminal 2 address `…`: …").
function refusedField(message) {
  const terminal = /^terminal (\d+)(:| address| is listed)/.exec(message);
  if (terminal) {
    const row = $$("#set-terminals tr").find((tr) => tr.querySelector(".t-number").value.trim() === terminal[1]);
    if (!row) return null;
    if (terminal[2] === " address") return row.querySelector(".t-address");
    if (terminal[2] === ":") return row.querySelector(".t-token");
    return row.querySelector(".t-number");
  }
  const fields = [
    ["server", "#set-server"],
    ["window.start", "#set-window-start"],
    ["window.end", "#set-window-end"],
    ["window.time_zone", null],
    ["check.interval_minutes", "#set-interval"],
  ];
  for (const [name, css] of fields) {
    if (message.startsWith(name + " ") || message.startsWith(name + ":")) return css ? $(css) : null;
  }
  return null;
}

function settingsMessage(error, saved) {
  for (const field of $$("#settings [aria-invalid]")) field.removeAttribute("aria-invalid");
  setText("#settings-error", error || "");
  show($("#settings-error"), !!error);
  show($("#settings-saved"), !!saved);
  clearTimeout(state.savedTimer);
  if (saved) state.savedTimer = setTimeout(() => show($("#settings-saved"), false), SAVED_MS);
}

async function saveSettings(event) {
  event.preventDefault();
  if (state.saving) return;
  settingsMessage(null, false);
  const settings = readSettings();
  if (!settings) {
    settingsMessage(t("set.bad_number"), false);
    return;
  }
  state.saving = true;
  $("#btn-save").disabled = true;
  try {
    await invoke("save_settings", { settings });
    // Show what was saved, as the tray keeps it; the next snapshot agrees.
    fillSettings(normalized(settings));
    settingsMessage(null, true);
  } catch (e) {
    // What the manager typed stays; the message says what to change, and
    // the field it names is marked and focused (scrolled into view).
    const message = errorText(e);
    settingsMessage(message, false);
    const field = refusedField(message);
    if (field) {
      field.setAttribute("aria-invalid", "true");
      field.focus();
      field.scrollIntoView({ block: "nearest" });
    }
  } finally {
    state.saving = false;
    $("#btn-save").disabled = false;
  }
}

function addTerminal() {
  const numbers = $$("#set-terminals .t-number").map((i) => wholeNumber(i.value)).filter(Number.isSafeInteger);
  const next = numbers.length ? Math.max(...numbers) + 1 : 1;
  const row = terminalRow({ number: next, address: "http://", token: "" });
  $("#set-terminals").append(row);
  row.querySelector(".t-address").focus();
}

// ------------------------------------------------------------ pages, tabs

function setPage(page) {
  if (page !== "popup" && page !== "window") return;
  state.page = page;
  show($("#popup"), page === "popup");
  show($("#window"), page === "window");
  render();
}

function selectTab(tab) {
  if (!TABS.includes(tab)) return;
  const changed = tab !== state.tab;
  state.tab = tab;
  for (const b of $$(".tabs [role=tab]")) {
    const on = b.dataset.tab === tab;
    b.setAttribute("aria-selected", String(on));
    b.tabIndex = on ? 0 : -1;
  }
  for (const name of TABS) show($("#panel-" + name), name === tab);
  // Opening the settings shows what is in force; staying on them keeps the edits.
  if (tab === "settings" && (changed || !state.settingsFilled) && state.snap) {
    fillSettings(state.snap.settings);
    settingsMessage(null, false);
  }
}

function tabKeys(event) {
  const i = TABS.indexOf(state.tab);
  let next = null;
  if (event.key === "ArrowRight") next = TABS[(i + 1) % TABS.length];
  else if (event.key === "ArrowLeft") next = TABS[(i + TABS.length - 1) % TABS.length];
  else if (event.key === "Home") next = TABS[0];
  else if (event.key === "End") next = TABS[TABS.length - 1];
  if (!next) return;
  event.preventDefault();
  selectTab(next);
  $("#tab-" + next).focus();
}

// ------------------------------------------------------------ drawing

function render() {
  const snap = state.snap;
  chooseLang();
  if (state.page === "popup") {
    renderPopup(snap);
    return;
  }
  if (state.page !== "window") return;
  renderHeader(snap);
  renderTerminals(snap);
  renderProgress(snap);
  renderHistory(snap);
  // Settings opened before the first snapshot: fill them once it is here.
  if (state.tab === "settings" && !state.settingsFilled && snap) fillSettings(snap.settings);
}

function onSnapshot(snap) {
  if (!snap || typeof snap !== "object") return;
  state.snap = snap;
  render();
}

function fatal(e) {
  const node = $("#fatal");
  node.textContent = errorText(e);
  node.hidden = false;
}

// ------------------------------------------------------------ start

let invoke = () => Promise.reject("tillup: the Tauri API is missing");

async function start() {
  state.langOverride = readStoredLang();
  chooseLang();
  selectTab("terminals");

  skipButton = $("#btn-skip");
  $("#btn-now").addEventListener("click", () => answer("now"));
  $("#btn-tonight").addEventListener("click", () => answer("tonight"));
  $("#btn-later").addEventListener("click", () => answer("later"));
  skipButton.addEventListener("click", () => answer("skip"));
  $("#btn-close").addEventListener("click", closePopup);
  $("#btn-check").addEventListener("click", () => action("check_now"));
  $("#btn-upgrade").addEventListener("click", () => action("upgrade_now"));
  $("#btn-answer").addEventListener("click", openPopupFromWindow);
  $("#lang-switch").addEventListener("click", switchLang);
  for (const b of $$(".tabs [role=tab]")) {
    b.addEventListener("click", () => selectTab(b.dataset.tab));
    b.addEventListener("keydown", tabKeys);
  }
  $("#settings").addEventListener("submit", saveSettings);
  $("#btn-add-terminal").addEventListener("click", addTerminal);

  const tauri = window.__TAURI__;
  if (!tauri || !tauri.core || !tauri.event) throw "tillup: the Tauri API is missing";
  invoke = tauri.core.invoke;
  const { listen } = tauri.event;

  let shown = null;
  await listen("snapshot", (e) => {
    state.fromEvent = true;
    onSnapshot(e.payload);
  });
  await listen("show", (e) => {
    const page = e.payload;
    shown = page;
    if (page === "popup") {
      // A new question over the open window: answer it, then come back.
      state.popupReturns = state.page === "window";
      state.popupPending = false;
      popupError(null);
    }
    setPage(page);
  });

  const first = await invoke("start");
  if (!shown) setPage(first && first.page === "popup" ? "popup" : "window");
  const snap = await invoke("snapshot");
  // An event's snapshot is at least as new as this one.
  if (snap && !state.fromEvent) onSnapshot(snap);
}

document.addEventListener("DOMContentLoaded", () => {
  start().catch(fatal);
});
