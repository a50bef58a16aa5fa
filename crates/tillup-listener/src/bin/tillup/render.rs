//! How the CLI shows things: tables for people, JSON for scripts.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use tillup_core::log::Verdict;
use tillup_core::upgrade::{Event, Upgrade, effect_name};
use tillup_listener::check::CheckReport;
use tillup_listener::local_log::HistoryEntry;
use tillup_listener::progress::{Moving, TransferProgress, Transfers};
use tillup_listener::runner::UpdateOutcome;
use tillup_listener::schedule::StoreStatus;

fn json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serialisable"));
}

pub fn check(r: &CheckReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    match &r.target {
        None => match &r.critical_on_the_way {
            None => println!("Up to date (version log #{}).", r.sequence),
            Some(v) => println!(
                "Up to date for now (version log #{}): critical release {v} is rolling out and this store's wave has not come; the daemon checks every few minutes until it does.",
                r.sequence
            ),
        },
        Some(v) => println!(
            "Update available: {v}{} (version log #{}).",
            if r.critical { " — critical" } else { "" },
            r.sequence
        ),
    }
    for (n, verdict) in &r.comparison.terminals {
        let line = match verdict {
            Verdict::UpToDate { version } => format!("{version}, up to date"),
            Verdict::Update {
                from, next, target, ..
            } if next == target => format!("{from} → {next}"),
            Verdict::Update {
                from, next, target, ..
            } => format!("{from} → {next} (then {target}: {next} is required first)"),
            Verdict::NotForModel { model, newest } => {
                format!("no release for model {model} (newest {newest} excludes it)")
            }
            Verdict::Unreachable {
                from,
                newest,
                min_from,
            } => format!(
                "{from}: {newest} needs at least {min_from} and no intermediate release exists"
            ),
        };
        println!("  terminal {n}: {line}");
    }
    for (n, why) in &r.unreachable {
        println!("  terminal {n}: not reachable ({why})");
    }
    for w in &r.comparison.warnings {
        println!("warning: {w}");
    }
}

/// Live progress of an upgrade: a bar of terminals done, the phase, and
/// during long transfers the bytes moved of bytes to move with the time
/// left (redrawn four times a second from the listener's counters).
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    transfers: Arc<Transfers>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// A transfer in words: `release to the host: 120.5 MB of 218.8 MB, about 3 s left`.
pub fn transfer_line(t: &TransferProgress) -> String {
    let what = match t.moving {
        Moving::ToHost => "gathering the release on the host",
        Moving::ToTerminals => "sending the release to the terminals",
    };
    let mb = |b: u64| b as f64 / 1e6;
    let left = match t.eta_secs {
        None => String::new(),
        Some(s) if s < 90 => format!(", about {s} s left"),
        Some(s) => format!(", about {} min left", s.div_ceil(60)),
    };
    format!(
        "{what}: {:.1} MB of {:.1} MB{left}",
        mb(t.done),
        mb(t.total)
    )
}

impl Progress {
    pub fn new(quiet: bool, transfers: Arc<Transfers>) -> Self {
        Self {
            bar: None,
            quiet,
            transfers,
            ticker: None,
        }
    }

    fn say(&self, line: String) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => println!("{line}"),
        }
    }

    pub fn on(&mut self, u: &Upgrade, e: Option<&Event>) {
        if self.quiet {
            return;
        }
        let (done, total) = u.progress();
        let transfers = &self.transfers;
        let ticker = &mut self.ticker;
        let bar = self.bar.get_or_insert_with(|| {
            let b = if std::io::stdout().is_terminal() {
                ProgressBar::new(total as u64)
            } else {
                ProgressBar::hidden()
            };
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} upgrading [{bar:30}] {pos}/{len} terminals  {prefix}  {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            if !b.is_hidden() {
                let (bar, transfers) = (b.clone(), transfers.clone());
                *ticker = Some(tokio::spawn(async move {
                    loop {
                        bar.set_message(
                            transfers
                                .now()
                                .map(|t| transfer_line(&t))
                                .unwrap_or_default(),
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                }));
            }
            b
        });
        bar.set_position(done as u64);
        bar.set_prefix(format!("{:?}", u.phase).to_lowercase());
        let Some(e) = e else {
            let targets: Vec<String> = u
                .terminals
                .values()
                .map(|t| format!("{}: {} → {}", t.number, t.from, t.to))
                .collect();
            return self.say(format!(
                "upgrade {} (canary: terminal {}): {}",
                u.id,
                u.canary,
                targets.join(", ")
            ));
        };
        let line = match e {
            Event::Done { effect } => {
                let who = effect
                    .terminal()
                    .map_or("store".to_owned(), |n| format!("terminal {n}"));
                format!("  {who}: {} done", effect_name(effect))
            }
            Event::Failed { effect, message } => {
                let who = effect
                    .terminal()
                    .map_or("store".to_owned(), |n| format!("terminal {n}"));
                format!("  {who}: {} FAILED: {message}", effect_name(effect))
            }
        };
        self.say(line);
    }

    pub fn finish(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

pub fn update(o: &UpdateOutcome, as_json: bool) {
    if as_json {
        return json(o);
    }
    for h in &o.upgrades {
        println!("\nUpgrade {}:", h.id);
        table(h);
    }
    if let Some(note) = &o.note {
        println!("{note}.");
    }
}

fn table(h: &HistoryEntry) {
    println!(
        "  {:<9} {:<10} {:<10} {:<10} {:>12}  details",
        "terminal", "from", "to", "result", "stopped for"
    );
    for t in &h.terminals {
        let stopped = t
            .stopped_ms
            .map_or("-".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
        println!(
            "  {:<9} {:<10} {:<10} {:<10} {:>12}  {}",
            t.number,
            t.from.to_string(),
            t.to.to_string(),
            t.result,
            stopped,
            t.failure.as_deref().unwrap_or("")
        );
    }
    for (n, why) in &h.left_out {
        println!(
            "  {n:<9} {:<10} {:<10} {:<10} {:>12}  {why}",
            "-", "-", "left out", "-"
        );
    }
}

pub fn status(s: &StoreStatus, as_json: bool) {
    if as_json {
        return json(s);
    }
    println!(
        "Store {} ({:?} mode){}",
        s.store,
        s.mode,
        s.last_check
            .map_or(String::new(), |t| format!(", last check {t}"))
    );
    if let Some(p) = &s.pending {
        println!(
            "Waiting for an answer: upgrade to {}{}",
            p.version,
            if p.critical { " (critical)" } else { "" }
        );
    }
    if let Some(id) = &s.unfinished_upgrade {
        println!("Unfinished upgrade {id}: it resumes at the next `tillup update`.");
    }
    println!(
        "  {:<9} {:<10} {:<10} {:<12} last report",
        "terminal", "model", "version", "program"
    );
    for t in &s.terminals {
        let main = match (&t.main, &t.error) {
            (_, Some(_)) => "unreachable".into(),
            (Some(tillup_core::api::MainState::Running { .. }), _) if t.busy => "busy".into(),
            (Some(tillup_core::api::MainState::Running { .. }), _) => "running".into(),
            (Some(tillup_core::api::MainState::Stopped), _) => "stopped".into(),
            (Some(tillup_core::api::MainState::Exited { code }), _) => format!("exited ({code:?})"),
            (None, None) => "?".into(),
        };
        let version = t
            .version
            .as_ref()
            .or(t.recorded_version.as_ref())
            .map_or("?".to_owned(), ToString::to_string);
        println!(
            "  {:<9} {:<10} {:<10} {:<12} {}",
            t.number,
            t.model.as_deref().unwrap_or("?"),
            version,
            main,
            t.last_report.as_deref().unwrap_or("")
        );
    }
    for t in &s.terminals {
        if let Some(e) = &t.error {
            println!("terminal {}: {e}", t.number);
        }
    }
    for w in &s.warnings {
        println!("warning: {w}");
    }
}

pub fn history(h: &[HistoryEntry], as_json: bool) {
    if as_json {
        return json(&h);
    }
    if h.is_empty() {
        println!("No upgrades yet.");
    }
    for e in h {
        let by = match &e.trigger {
            tillup_core::upgrade::Trigger::Person { name } => format!("confirmed by {name}"),
            tillup_core::upgrade::Trigger::Schedule => "by the schedule".to_owned(),
        };
        println!(
            "{} — started {}, {by}{}",
            e.id,
            e.started,
            if e.reported {
                ""
            } else {
                " (report not yet sent)"
            }
        );
        table(e);
    }
}

pub fn self_update(o: &tillup_listener::selfupdate::SelfUpdateOutcome, as_json: bool) {
    use tillup_listener::selfupdate::Step;
    if as_json {
        return json(o);
    }
    let line = |s: &Step| match s {
        Step::Current { version } => format!("{version}, current"),
        Step::Updated { from, to } => format!("{from} → {to}"),
        Step::Failed { why } => format!("FAILED, unchanged: {why}"),
        Step::Skipped { why } => format!("left alone: {why}"),
    };
    match &o.release {
        Some(v) => println!("tillup's newest release: {v}"),
        None => println!("tillup's channel has no release for this platform"),
    }
    for (n, step) in &o.agents {
        println!("  terminal {n}'s agent: {}", line(step));
    }
    println!(
        "  this host (tillup, and the tray and window beside it): {}",
        line(&o.listener)
    );
    if o.restart {
        println!("  they run on trial from their next start, and are kept once it gets that far");
    }
}
