//! The tokio side: runs the listener as `tillup daemon` does (scheduled
//! ticks, prompt or scheduled mode, upgrades), carries out the menu's
//! commands and the window's requests, and after every change sends the
//! tray a fresh view and the window a fresh snapshot. All state lives in
//! the listener library; this only routes.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use jiff::Timestamp;
use semver::Version;
use tillup_core::upgrade::{Event as UpgradeEvent, Trigger, Upgrade};
use tillup_listener::bridge::{self, FromWindow, Page, Request, ToWindow};
use tillup_listener::local_log::LocalLog;
use tillup_listener::schedule::{Answer, TickOutcome};
use tillup_listener::view::{Lang, tray_view};
use tillup_listener::{Error, Listener};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::autostart;
use crate::decide::{self, UpgradeNow};
use crate::ui::{self, Cmd, Shown};
use crate::window::{self, Window};

/// How often the open window's transfer line is redrawn while bytes move.
const TRANSFER_REDRAW: std::time::Duration = std::time::Duration::from_millis(500);

/// What a job (a tick or an upgrade the manager asked for) ended with.
struct Done {
    scheduled: bool,
    result: Result<TickOutcome, Error>,
    /// tillup's own programs were updated: the tray restarts on its new build.
    restart: bool,
}

/// How [`run`] ended.
#[derive(Debug)]
pub enum Ended {
    /// The menu, a signal or the window's end said quit.
    Quit,
    /// This executable was replaced (by a self-update, here or by another
    /// tillup, or by a package): the process restarts on the new file.
    Restart,
}

/// Jobs own their listener: saving the settings replaces it between jobs.
type Job = Pin<Box<dyn Future<Output = Done>>>;

/// The tray's view now, from the local log and the running upgrade, if any.
pub fn view_now(
    listener: &Listener,
    running: Option<&Upgrade>,
    lang: Lang,
    problem: Option<String>,
) -> Shown {
    view_of(
        LocalLog::load(&listener.data_dir).as_ref(),
        running,
        lang,
        problem,
    )
}

/// The tray's view of a local log as loaded: one that cannot be read is
/// the problem shown.
fn view_of(
    log: Result<&LocalLog, &Error>,
    running: Option<&Upgrade>,
    lang: Lang,
    problem: Option<String>,
) -> Shown {
    match log {
        Ok(log) => Shown {
            view: tray_view(log, running, lang),
            problem,
        },
        Err(e) => Shown {
            view: tray_view(&LocalLog::default(), running, lang),
            problem: Some(tillup_core::error_chain(e)),
        },
    }
}

/// Sends every state of the running upgrade to the service loop.
fn observer(tx: UnboundedSender<Upgrade>) -> impl FnMut(&Upgrade, Option<&UpgradeEvent>) + Send {
    move |u, _| {
        let _ = tx.send(u.clone());
    }
}

fn who() -> String {
    std::env::var("USER").unwrap_or_else(|_| "store manager".into())
}

/// A check (and the upgrade it may start), then, when the configuration
/// names tillup's channel, tillup's own update, as `tillup daemon` does.
fn tick(listener: Rc<Listener>, progress: UnboundedSender<Upgrade>, scheduled: bool) -> Job {
    Box::pin(async move {
        let result = listener
            .tick(Timestamp::now(), &mut observer(progress))
            .await;
        let mut restart = false;
        if listener.config.self_channel.is_some() {
            match listener.self_update(Timestamp::now(), false).await {
                Ok(o) => {
                    tracing::info!("tillup's own update: {}", serde_json::json!(o));
                    restart = o.restart;
                }
                Err(e) => tracing::warn!("tillup's own update: {}", tillup_core::error_chain(&e)),
            }
        }
        Done {
            scheduled,
            result,
            restart,
        }
    })
}

fn upgrade_now(listener: Rc<Listener>, progress: UnboundedSender<Upgrade>) -> Job {
    Box::pin(async move {
        let log = LocalLog::load(&listener.data_dir).unwrap_or_default();
        let mut observer = observer(progress);
        let now = Timestamp::now();
        let result = match decide::upgrade_now(&log) {
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
            restart: false,
        }
    })
}

/// Everything the loop holds.
struct Resident {
    listener: Rc<Listener>,
    config_path: PathBuf,
    lang: Lang,
    window: Window,
    windows: UnboundedSender<window::Event>,
    progress: UnboundedSender<Upgrade>,
    problem: Option<String>,
    /// The running upgrade as the last progress event left it.
    running: Option<Upgrade>,
    job: Option<Job>,
    next_tick: Instant,
    /// This executable's file as it was at start-up.
    started_as: Option<tillup_selfupdate::Stamp>,
}

/// The running executable's file as it is now.
fn exe_stamp() -> Option<tillup_selfupdate::Stamp> {
    tillup_selfupdate::stamp(&tillup_selfupdate::this_exe().ok()?).ok()
}

impl Resident {
    fn shown(&self) -> Shown {
        view_now(
            &self.listener,
            self.running.as_ref(),
            self.lang,
            self.problem.clone(),
        )
    }

    /// Redraws the tray and, if it is open, the window, from one read of
    /// the local log (this runs at every progress event).
    async fn refresh(&mut self) {
        let log = LocalLog::load(&self.listener.data_dir);
        let running = self.running.as_ref();
        ui::show(view_of(
            log.as_ref(),
            running,
            self.lang,
            self.problem.clone(),
        ));
        if self.window.is_open() {
            let snapshot = ToWindow::Snapshot(Box::new(bridge::snapshot(
                log.as_ref().unwrap_or(&LocalLog::default()),
                bridge::Context {
                    config: &self.listener.config,
                    running,
                    lang: self.lang,
                    busy: self.job.is_some(),
                    problem: self.problem.clone(),
                    autostart: autostart::enabled(&self.config_path),
                    transfer: self.listener.transfers.now(),
                },
            )));
            self.window.send(&snapshot).await;
        }
    }

    async fn open(&mut self, page: Page) {
        if let Err(e) = self.window.open(page, self.lang, &self.windows).await {
            let text = decide::window_problem(&e, self.lang);
            tracing::warn!("{text}");
            self.problem = Some(text);
            ui::show(self.shown());
        }
    }

    fn idle(&self) -> Result<(), String> {
        match self.job {
            None => Ok(()),
            Some(_) => Err(decide::busy(self.lang).to_owned()),
        }
    }

    fn start(&mut self, job: Job) {
        self.job = Some(job);
    }

    /// Carries out a window's request; the error is for the store manager.
    async fn request(&mut self, request: Request) -> Result<(), String> {
        let chain = |e: Error| tillup_core::error_chain(&e);
        match request {
            Request::Ready => Ok(()),
            Request::CheckNow => {
                self.idle()?;
                self.start(tick(self.listener.clone(), self.progress.clone(), true));
                Ok(())
            }
            Request::UpgradeNow
            | Request::Answer {
                answer: Answer::Now,
            } => {
                self.idle()?;
                self.start(upgrade_now(self.listener.clone(), self.progress.clone()));
                Ok(())
            }
            Request::Answer { answer } => {
                self.idle()?;
                self.listener
                    .answer(answer, &who(), Timestamp::now(), &mut |_, _| {})
                    .await
                    .map(drop)
                    .map_err(chain)
            }
            Request::SaveSettings { settings } => {
                self.idle()?;
                let config = settings.apply(&self.listener.config)?;
                config.save(&self.config_path).map_err(chain)?;
                autostart::set(&self.config_path, settings.autostart)?;
                self.listener = Rc::new(Listener::new(config).map_err(chain)?);
                tracing::info!("settings saved to {}", self.config_path.display());
                // The interval may have changed.
                self.next_tick = Instant::now() + self.listener.next_delay(None, Timestamp::now());
                Ok(())
            }
        }
    }

    /// Whether this executable's file is no longer the one started: a
    /// self-update (this tray's, or `tillup self-update`'s) or a package
    /// replaced it, and the new code runs only after a restart.
    fn replaced(&self) -> bool {
        self.started_as.is_some() && exe_stamp() != self.started_as
    }

    /// A job ended: the problem line, notifications, the popup, the next tick.
    async fn done(&mut self, done: Done, announced: &mut Option<Version>) {
        self.job = None;
        self.running = None;
        let outcome = match done.result {
            Ok(outcome) => {
                self.problem = None;
                Some(outcome)
            }
            Err(e) => {
                let text = tillup_core::error_chain(&e);
                tracing::warn!("{text}");
                self.problem = Some(text);
                None
            }
        };
        let mode = self.listener.config.mode;
        if let Some(o) = &outcome {
            if let Some(note) = decide::notification(mode, o, announced.as_ref(), self.lang) {
                tokio::spawn(notify(note));
            }
            if let TickOutcome::Prompted { version, .. } = o {
                *announced = Some(version.clone());
                // Asked at every check until answered; an open window is
                // not interrupted (it shows the prompt in its header).
                if !self.window.is_open() {
                    self.open(Page::Popup).await;
                }
            }
        }
        if done.scheduled {
            self.next_tick =
                Instant::now() + self.listener.next_delay(outcome.as_ref(), Timestamp::now());
        }
    }
}

pub struct Start {
    pub listener: Listener,
    pub config_path: PathBuf,
    pub lang: Lang,
    pub window: Window,
    pub commands: UnboundedReceiver<Cmd>,
}

/// Runs until the menu (or SIGTERM/SIGINT) says quit, or until this
/// executable was replaced and the tray must restart on the new one (it
/// looks after every job). The menu's Quit waits for a running check or
/// upgrade, unless given twice. SIGUSR1 opens the window (a second
/// `tillup-tray` sends it).
pub async fn run(start: Start) -> Ended {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut usr1 = signal(SignalKind::user_defined1()).ok();
    let (windows, mut window_rx) = mpsc::unbounded_channel::<window::Event>();
    let (progress, mut progress_rx) = mpsc::unbounded_channel::<Upgrade>();
    let mut commands = start.commands;
    let mut me = Resident {
        listener: Rc::new(start.listener),
        config_path: start.config_path,
        lang: start.lang,
        window: start.window,
        windows,
        progress,
        problem: None,
        running: None,
        job: None,
        next_tick: Instant::now(),
        started_as: exe_stamp(),
    };
    let mut announced: Option<Version> = None;
    let mut quitting = false;
    let mut ended = Ended::Quit;

    loop {
        tokio::select! {
            cmd = commands.recv() => {
                tracing::debug!("command: {cmd:?}");
                match cmd {
                    None => break,
                    // Stopping an upgrade midway leaves terminals stopped until
                    // the agents' watchdog or the next start: wait for it,
                    // unless the manager insists.
                    Some(Cmd::Quit) if me.job.is_none() || quitting => break,
                    Some(Cmd::Quit) => {
                        quitting = true;
                        me.problem = Some(decide::quit_later(me.lang).to_owned());
                        me.refresh().await;
                    }
                    Some(Cmd::Open) => me.open(Page::Window).await,
                    Some(Cmd::Check) if me.job.is_none() => {
                        me.start(tick(me.listener.clone(), me.progress.clone(), true));
                        me.refresh().await;
                    }
                    Some(Cmd::UpgradeNow) if me.job.is_none() => {
                        me.start(upgrade_now(me.listener.clone(), me.progress.clone()));
                        me.refresh().await;
                    }
                    Some(other) => tracing::info!("{other:?}: a check or an upgrade is running; try again when it is done"),
                }
            }
            done = async { me.job.as_mut().expect("guarded").await }, if me.job.is_some() => {
                let restart = done.restart;
                me.done(done, &mut announced).await;
                if quitting {
                    break;
                }
                if restart || me.replaced() {
                    tracing::info!("tillup-tray was replaced: restarting on its new build");
                    ended = Ended::Restart;
                    break;
                }
                me.refresh().await;
            }
            Some(u) = progress_rx.recv() => {
                me.running = Some(u);
                me.refresh().await;
            }
            // A long transfer moves between two progress events: the
            // window's bytes and time left follow it.
            _ = tokio::time::sleep(TRANSFER_REDRAW), if me.window.is_open() && me.listener.transfers.now().is_some() => {
                me.refresh().await;
            }
            _ = tokio::time::sleep_until(me.next_tick), if me.job.is_none() => {
                me.start(tick(me.listener.clone(), me.progress.clone(), true));
                me.refresh().await;
            }
            Some(event) = window_rx.recv() => match event {
                window::Event::Line(line) => {
                    tracing::debug!("from window: {line}");
                    match serde_json::from_str::<FromWindow>(&line) {
                        Ok(FromWindow { id, request }) => {
                            let error = me.request(request).await.err();
                            if let Some(e) = &error {
                                tracing::info!("the window's request {id} was refused: {e}");
                            }
                            me.window.send(&ToWindow::Reply { id, error }).await;
                            me.refresh().await;
                        }
                        Err(e) => tracing::warn!("ignored a line from the window ({e}): {line}"),
                    }
                }
                window::Event::Exited(status) => {
                    tracing::info!("window exited and reaped: {status}");
                    me.window.exited();
                }
            },
            Some(()) = recv_signal(&mut usr1) => me.open(Page::Window).await,
            Some(()) = recv_signal(&mut term) => break,
            Some(()) = recv_signal(&mut int) => break,
        }
    }
    tracing::info!("quitting");
    if me.window.is_open() {
        me.window.close().await;
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
    drop(me.job.take());
    ended
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
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
