// Every word the page shows, in English and Simplified Chinese.
//
// t(key, params) looks `key` up in the current language (falling back to
// English, then to the key itself) and replaces each {name} with
// params.name. tn(key, count, params) picks `key.one` or `key.many`.
// Elements with data-t="key" get t(key) as their text (app.js).
"use strict";

const STRINGS = {
  en: {
    "loading": "Loading…",
    "busy": "Working…",
    "lang.other": "中文",
    // The switch's words where no font can draw Chinese (a new English machine).
    "lang.other.no_cjk_font": "Chinese",
    "lang.other.label": "Show in Chinese",
    "list.sep": ", ",
    "none": "—",

    // popup
    "popup.title": "Update available",
    "popup.critical": "Critical",
    "popup.version": "Version",
    "popup.date": "Released",
    "popup.size": "Size",
    "popup.applies": "For",
    "popup.terminals.one": "Terminal {list}",
    "popup.terminals.many": "Terminals {list}",
    "popup.terminals.none": "No terminal",
    "popup.notes": "What's new",
    "popup.no_notes": "No release notes.",
    "popup.scheduled": "Already set to upgrade tonight at {time}.",
    "popup.none": "No update is waiting.",
    "popup.close": "Close",
    "answer.now": "Upgrade now",
    "answer.tonight": "Upgrade tonight at {time}",
    "answer.later": "Remind me later",
    "answer.skip": "Skip this version",

    // window header
    "action.check": "Check now",
    "action.upgrade": "Upgrade now",
    "state.up_to_date": "Up to date",
    "state.up_to_date.versions": "Up to date ({versions})",
    "state.update_available": "Update {version} available",
    "state.update_available.critical": "Critical update {version} available",
    "state.tonight": "{text}, upgrading tonight",
    "state.tonight.at": "{text}, upgrading tonight at {time}",
    "state.upgrading": "Upgrading terminal {n} of {m}",
    "state.failed.one": "The upgrade to {version} failed on terminal {list}",
    "state.failed.many": "The upgrade to {version} failed on terminals {list}",
    "prompt.waiting": "Version {version} is waiting for your answer.",
    "prompt.tonight": "Set to upgrade tonight at {time}. You can still change that.",
    "prompt.answer": "Answer…",

    // tabs and columns
    "tab.terminals": "Terminals",
    "tab.upgrade": "Upgrade",
    "tab.history": "History",
    "tab.settings": "Settings",
    "col.number": "No.",
    "col.address": "Address",
    "col.model": "Model",
    "col.version": "Version",
    "col.state": "State",
    "col.report": "Last report",
    "col.change": "Release",
    "col.step": "Step",
    "col.problem": "Problem",
    "col.result": "Result",
    "col.stopped": "Till stopped for",

    // terminals
    "term.unknown": "Not checked yet",
    "term.up_to_date": "Up to date",
    "term.update_available": "Update available → {to}",
    "term.upgrading": "Upgrading: {step}",
    "term.failed": "Still on the old release ({to} failed)",
    "terminals.none": "No terminals are set up yet. Add them under Settings.",
    "last_check": "Last check: {time}",
    "last_check.never": "No check yet.",

    // upgrade
    "progress.line": "{done} of {total} terminals done",
    "progress.started": "Started {time}",
    "progress.to_host": "Gathering the release on this computer: {done} of {total}",
    "progress.to_terminals": "Sending the release to the terminals: {done} of {total}",
    "progress.eta_s": "about {n} s left",
    "progress.eta_min": "about {n} min left",
    "progress.none": "No upgrade is running.",
    "progress.last": "Last upgrade ({time}): {summary}",
    "progress.never": "There has been no upgrade yet.",
    "step.planned": "Waiting",
    "step.prepared": "New release copied to the terminal",
    "step.stopped": "Till program stopped",
    "step.collected": "Data backed up",
    "step.staged": "New release ready",
    "step.installed": "Installed",
    "step.health_check": "Checking that it starts correctly",
    "step.upgraded": "Upgraded",
    "step.restoring": "Putting the old release back",
    "step.restored": "Back on the old release",
    "step.abandoned": "Needs attention",

    // history
    "history.none": "No upgrades yet.",
    "history.title": "Upgrade to {version}",
    "history.title.plain": "Upgrade",
    "history.by": "Started by {who}",
    "history.schedule": "Automatic, in the maintenance window",
    "history.running": "In progress",
    "history.done": "Finished",
    "history.problems": "Not all upgraded",
    "history.halted": "Stopped early: {why}",
    "history.left_out": "Left out: terminal {n} ({why})",
    "history.more.one": "…and {n} older upgrade.",
    "history.more.many": "…and {n} older upgrades.",
    "result.upgraded": "Upgraded",
    "result.restored": "Old release restored",
    "result.abandoned": "Needs attention",
    "result.in_progress": "In progress",
    "summary.ok.one": "terminal upgraded to {version}",
    "summary.ok.many": "all {n} terminals upgraded to {version}",
    "summary.failed": "{failed} of {n} kept the old release",
    "summary.none": "no terminal was upgraded",
    "seconds": "{s} s",

    // settings
    "set.server": "Update server",
    "set.server.hint": "Given by head office, e.g. https://updates.example.com",
    "set.mode": "When an update is found",
    "set.mode.prompt": "Ask me (popup)",
    "set.mode.scheduled": "Upgrade automatically in the maintenance window",
    "set.window_start": "Maintenance window from (HH:MM)",
    "set.window_end": "to (HH:MM)",
    "set.interval": "Check every (minutes)",
    "set.terminals": "Terminals",
    "set.address": "Address",
    "set.token": "Token",
    "set.token.kept": "unchanged",
    "set.add": "Add a terminal",
    "set.remove": "Remove",
    "set.remove.label": "Remove terminal {n}",
    "set.autostart": "Start tillup when I log in",
    "set.save": "Save",
    "set.saved": "Saved",
    "set.bad_number": "Terminal numbers and the check interval must be whole numbers.",
  },

  "zh-CN": {
    "loading": "正在加载…",
    "busy": "正在处理…",
    "lang.other": "English",
    "lang.other.label": "切换为英文",
    "list.sep": "、",
    "none": "—",

    // popup
    "popup.title": "有可用更新",
    "popup.critical": "重要更新",
    "popup.version": "版本",
    "popup.date": "发布日期",
    "popup.size": "大小",
    "popup.applies": "适用于",
    "popup.terminals.one": "{list} 号终端",
    "popup.terminals.many": "{list} 号终端",
    "popup.terminals.none": "无终端",
    "popup.notes": "更新内容",
    "popup.no_notes": "暂无更新说明。",
    "popup.scheduled": "已安排在今晚 {time} 升级。",
    "popup.none": "没有待处理的更新。",
    "popup.close": "关闭",
    "answer.now": "立即升级",
    "answer.tonight": "今晚 {time} 升级",
    "answer.later": "稍后提醒我",
    "answer.skip": "跳过此版本",

    // window header
    "action.check": "立即检查",
    "action.upgrade": "立即升级",
    "state.up_to_date": "已是最新版本",
    "state.up_to_date.versions": "已是最新版本（{versions}）",
    "state.update_available": "有新版本 {version} 可以升级",
    "state.update_available.critical": "有重要更新 {version}",
    "state.tonight": "{text}，将于今晚升级",
    "state.tonight.at": "{text}，将于今晚 {time} 升级",
    "state.upgrading": "正在升级第 {n} 台终端（共 {m} 台）",
    "state.failed.one": "升级到 {version} 失败（{list} 号终端）",
    "state.failed.many": "升级到 {version} 失败（{list} 号终端）",
    "prompt.waiting": "新版本 {version} 正在等您确认。",
    "prompt.tonight": "已安排在今晚 {time} 升级，仍可更改。",
    "prompt.answer": "去确认…",

    // tabs and columns
    "tab.terminals": "终端",
    "tab.upgrade": "升级",
    "tab.history": "历史记录",
    "tab.settings": "设置",
    "col.number": "编号",
    "col.address": "地址",
    "col.model": "型号",
    "col.version": "版本",
    "col.state": "状态",
    "col.report": "最近结果",
    "col.change": "版本变化",
    "col.step": "进度",
    "col.problem": "问题",
    "col.result": "结果",
    "col.stopped": "收银暂停时长",

    // terminals
    "term.unknown": "尚未检查",
    "term.up_to_date": "已是最新",
    "term.update_available": "可升级 → {to}",
    "term.upgrading": "升级中：{step}",
    "term.failed": "仍为旧版本（升级到 {to} 失败）",
    "terminals.none": "还没有设置终端，请在“设置”中添加。",
    "last_check": "上次检查：{time}",
    "last_check.never": "尚未检查过更新。",

    // upgrade
    "progress.line": "已完成 {done} 台，共 {total} 台",
    "progress.started": "开始于 {time}",
    "progress.to_host": "正在把新版本收集到本机：{done} / {total}",
    "progress.to_terminals": "正在把新版本发送到收银机：{done} / {total}",
    "progress.eta_s": "约剩 {n} 秒",
    "progress.eta_min": "约剩 {n} 分钟",
    "progress.none": "当前没有正在进行的升级。",
    "progress.last": "上次升级（{time}）：{summary}",
    "progress.never": "还没有升级过。",
    "step.planned": "等待中",
    "step.prepared": "新版本已传到终端",
    "step.stopped": "收银程序已停止",
    "step.collected": "数据已备份",
    "step.staged": "新版本已准备好",
    "step.installed": "已安装",
    "step.health_check": "正在检查能否正常运行",
    "step.upgraded": "已升级",
    "step.restoring": "正在恢复旧版本",
    "step.restored": "已恢复到旧版本",
    "step.abandoned": "需要人工处理",

    // history
    "history.none": "还没有升级记录。",
    "history.title": "升级到 {version}",
    "history.title.plain": "升级",
    "history.by": "由 {who} 发起",
    "history.schedule": "在维护时段自动升级",
    "history.running": "进行中",
    "history.done": "已完成",
    "history.problems": "部分未升级",
    "history.halted": "已提前停止：{why}",
    "history.left_out": "未参与：{n} 号终端（{why}）",
    "history.more.one": "……另有 {n} 条更早的升级记录。",
    "history.more.many": "……另有 {n} 条更早的升级记录。",
    "result.upgraded": "已升级",
    "result.restored": "已恢复旧版本",
    "result.abandoned": "需要人工处理",
    "result.in_progress": "进行中",
    "summary.ok.one": "终端已升级到 {version}",
    "summary.ok.many": "全部 {n} 台终端已升级到 {version}",
    "summary.failed": "{n} 台中有 {failed} 台仍为旧版本",
    "summary.none": "没有终端被升级",
    "seconds": "{s} 秒",

    // settings
    "set.server": "更新服务器",
    "set.server.hint": "由总部提供，例如 https://updates.example.com",
    "set.mode": "发现更新时",
    "set.mode.prompt": "先询问我（弹窗）",
    "set.mode.scheduled": "在维护时段自动升级",
    "set.window_start": "维护时段开始（时:分）",
    "set.window_end": "结束（时:分）",
    "set.interval": "检查间隔（分钟）",
    "set.terminals": "终端",
    "set.address": "地址",
    "set.token": "令牌",
    "set.token.kept": "不变",
    "set.add": "添加终端",
    "set.remove": "删除",
    "set.remove.label": "删除 {n} 号终端",
    "set.autostart": "登录电脑时自动启动 tillup",
    "set.save": "保存",
    "set.saved": "已保存",
    "set.bad_number": "终端编号和检查间隔必须是整数。",
  },
};

const LANGS = Object.keys(STRINGS);

let currentLang = "en";

/** Sets the language ("en" or "zh-CN"; anything else is English). */
function setLang(lang) {
  currentLang = Object.prototype.hasOwnProperty.call(STRINGS, lang) ? lang : "en";
  document.documentElement.lang = currentLang;
  return currentLang;
}

/** The string `key` in the current language, with {name} replaced by params.name. */
function t(key, params) {
  const own = STRINGS[currentLang];
  let text = own[key] !== undefined ? own[key] : STRINGS.en[key] !== undefined ? STRINGS.en[key] : key;
  if (params) {
    for (const name of Object.keys(params)) {
      const value = params[name] === null || params[name] === undefined ? "" : String(params[name]);
      text = text.split("{" + name + "}").join(value);
    }
  }
  return text;
}

/** `key.one` when count is 1, else `key.many`; params.n defaults to count. */
function tn(key, count, params) {
  return t(key + (count === 1 ? ".one" : ".many"), Object.assign({ n: count }, params || {}));
}
