//! The tokio side: runs the listener as `tillup daemon` does (scheduled
//! ticks, prompt or window mode, upgrades), carries out the menu's
//! commands, and after every tick, progress event and command sends the
//! tray a fresh view. All state lives in the listener library.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use jiff::Timestamp;
use semver::Version;
use tillup_core::upgrade::{Event as UpgradeEvent, Trigger, Upgrade};
use tillup_listener::local_log::LocalLog;
use tillup_listener::schedule::{Answer, TickOutcome, next_check_delay, next_wake};
use tillup_listener::view::{Lang, tray_view};
use tillup_listener::{Error, Listener};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::time::Instant;

use crate::decide::{self, UpgradeNow};
use crate::ui::{self, Cmd, Shown};
use crate::window::{self, Window};

/// What a job (a tick or an upgrade the manager asked for) ended with.
struct Done {
    scheduled: bool,
    result: Result<TickOutcome, Error>,
}

type Job<'a> = Pin<Box<dyn Future<Output = Done> + 'a>>;

/// The tray's view now, from the local log.
pub fn view_now(listener: &Listener, lang: Lang, problem: Option<String>) -> Shown {
    match LocalLog::load(&listener.data_dir) {
        Ok(log) => Shown {
            view: tray_view(&log, None, lang),
            problem,
        },
        Err(e) => Shown {
            view: tray_view(&LocalLog::default(), None, lang),
            problem: Some(tillup_core::error_chain(&e)),
        },
    }
}

/// Sends the view of the running upgrade to the tray on every progress event.
fn progress(log: LocalLog, lang: Lang) -> impl FnMut(&Upgrade, Option<&UpgradeEvent>) + Send {
    move |u, _| {
        ui::show(Shown {
            view: tray_view(&log, Some(u), lang),
            problem: None,
        })
    }
}

fn who() -> String {
    std::env::var("USER").unwrap_or_else(|_| "store manager".into())
}

fn tick(listener: &Listener, lang: Lang, scheduled: bool) -> Job<'_> {
    Box::pin(async move {
        let log = LocalLog::load(&listener.data_dir).unwrap_or_default();
        let result = listener
            .tick(Timestamp::now(), &mut progress(log, lang))
            .await;
        Done { scheduled, result }
    })
}

fn upgrade_now(listener: &Listener, lang: Lang) -> Job<'_> {
    Box::pin(async move {
        let log = LocalLog::load(&listener.data_dir).unwrap_or_default();
        let how = decide::upgrade_now(&log);
        let mut observer = progress(log, lang);
        let now = Timestamp::now();
        let result = match how {
            UpgradeNow::Answer => listener
                .answer(Answer::Now, &who(), now, &mut observer)
                .await
                .map(|o| o.map_or(TickOutcome::UpToDate, TickOutcome::Upgraded)),
            UpgradeNow::Update => listener
                .update(Trigger::Person { name: who() }, now, &mut observer)
                .await
                .map(TickOutcome::Upgraded),
        };
        Done {
            scheduled: false,
            result,
        }
    })
}

/// Runs until the menu (or SIGTERM/SIGINT) says quit. The menu's Quit
/// waits for a running check or upgrade, unless given twice.
pub async fn run(
    listener: Listener,
    lang: Lang,
    mut window: Window,
    mut commands: UnboundedReceiver<Cmd>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let (window_tx, mut window_rx) = mpsc::unbounded_channel::<window::Event>();
    let mode = listener.config.mode;
    let mut problem: Option<String> = None;
    let mut announced: Option<Version> = None;
    let mut next_tick = Instant::now();
    let mut job: Option<Job<'_>> = None;
    let mut quitting = false;

    let refresh = |problem: &Option<String>| {
        let shown = view_now(&listener, lang, problem.clone());
        ui::show(shown.clone());
        shown
    };

    loop {
        tokio::select! {
            cmd = commands.recv() => {
                tracing::debug!("command: {cmd:?}");
                match cmd {
                    None => break,
                    // Stopping an upgrade midway leaves terminals stopped until
                    // the agents' watchdog or the next start: wait for it,
                    // unless the manager insists.
                    Some(Cmd::Quit) if job.is_none() || quitting => break,
                    Some(Cmd::Quit) => {
                        quitting = true;
                        problem = Some(decide::quit_later(lang).to_owned());
                        refresh(&problem);
                    }
                    Some(Cmd::Open) => {
                        if let Err(e) = window.open(&window_tx).await {
                            let text = decide::window_problem(&e, lang);
                            tracing::warn!("{text}");
                            problem = Some(text);
                            refresh(&problem);
                        }
                    }
                    Some(Cmd::Check) if job.is_none() => job = Some(tick(&listener, lang, true)),
                    Some(Cmd::UpgradeNow) if job.is_none() => job = Some(upgrade_now(&listener, lang)),
                    Some(other) => tracing::info!("{other:?}: a check or an upgrade is running; try again when it is done"),
                }
            }
            done = async { job.as_mut().expect("guarded").await }, if job.is_some() => {
                job = None;
                let outcome = match done.result {
                    Ok(outcome) => {
                        problem = None;
                        Some(outcome)
                    }
                    Err(e) => {
                        let text = tillup_core::error_chain(&e);
                        tracing::warn!("{text}");
                        problem = Some(text);
                        None
                    }
                };
                if let Some(o) = &outcome {
                    if let Some(note) = decide::notification(mode, o, announced.as_ref(), lang) {
                        tokio::spawn(notify(note));
                    }
                    if let TickOutcome::Prompted { version, .. } = o {
                        announced = Some(version.clone());
                    }
                }
                if done.scheduled {
                    next_tick = Instant::now() + next_delay(&listener, outcome.as_ref());
                }
                if quitting {
                    break;
                }
                let shown = refresh(&problem);
                send_status(&mut window, &shown).await;
            }
            _ = tokio::time::sleep_until(next_tick), if job.is_none() => {
                job = Some(tick(&listener, lang, true));
            }
            Some(event) = window_rx.recv() => match event {
                window::Event::Line(line) => {
                    tracing::debug!("from window: {line}");
                    match decide::window_says(&line) {
                        Some(decide::FromWindow::Ready) => send_status(&mut window, &view_now(&listener, lang, problem.clone())).await,
                        // The same path as the menu's.
                        Some(decide::FromWindow::Do(cmd)) if job.is_none() => {
                            job = Some(match cmd {
                                Cmd::UpgradeNow => upgrade_now(&listener, lang),
                                _ => tick(&listener, lang, true),
                            });
                        }
                        Some(decide::FromWindow::Do(cmd)) => tracing::info!("{cmd:?} from the window: a check or an upgrade is running"),
                        None => {}
                    }
                }
                window::Event::Exited(status) => {
                    tracing::info!("window exited and reaped: {status}");
                    window.exited();
                }
            },
            Some(()) = recv_signal(&mut term) => break,
            Some(()) = recv_signal(&mut int) => break,
        }
    }
    tracing::info!("quitting");
    if window.is_open() {
        window.close().await;
        // Reap it before the runtime goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(event) = window_rx.recv().await {
                if matches!(event, window::Event::Exited(_)) {
                    break;
                }
            }
        })
        .await;
    }
    // A job still running stops here; the upgrade's state is on disk and
    // the next start resumes it.
    drop(job);
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The delay before the next scheduled tick, as `tillup daemon` computes it.
fn next_delay(listener: &Listener, outcome: Option<&TickOutcome>) -> Duration {
    let regular = next_check_delay(
        listener.config.check.interval_minutes,
        listener.config.check.jitter_minutes,
        &mut rand::rng(),
    );
    match listener.config.parsed_window() {
        Ok(window) => next_wake(
            outcome,
            &window,
            regular,
            Timestamp::now(),
            &mut rand::rng(),
        ),
        Err(_) => regular,
    }
}

async fn send_status(window: &mut Window, shown: &Shown) {
    if window.is_open() {
        window.send(&decide::status_message(shown)).await;
    }
}

/// Shows a desktop notification; without a notification daemon, logs why.
async fn notify(note: decide::Note) {
    let result = notify_rust::Notification::new()
        .appname("tillup")
        .summary(&note.summary)
        .body(&note.body)
        .show_async()
        .await;
    if let Err(e) = result {
        tracing::warn!("cannot show the notification \"{}\": {e}", note.summary);
    }
}
