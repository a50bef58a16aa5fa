//! The window child (`tillup-window`, a Tauri app with its own process):
//! spawned on "Open", spoken to in JSON lines over its stdin/stdout, reaped
//! when it exits, killed when the tray quits. The webview never lives in
//! this process.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tillup_listener::bridge::{Page, ToWindow};
use tillup_listener::view::Lang;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

/// What the child says.
#[derive(Debug)]
pub enum Event {
    /// One line of its stdout.
    Line(String),
    /// It exited and was reaped.
    Exited(String),
}

pub struct Window {
    bin: PathBuf,
    /// `GDK_GL` as the tray was started with (the tray itself runs with `disable`).
    gdk_gl: Option<OsString>,
    stdin: Option<ChildStdin>,
    kill: Option<oneshot::Sender<()>>,
}

/// Why "Open" showed no window.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The window program is not installed next to the tray.
    Missing(PathBuf),
    Spawn(String),
}

impl Window {
    pub fn new(bin: PathBuf, gdk_gl: Option<OsString>) -> Self {
        Self {
            bin,
            gdk_gl,
            stdin: None,
            kill: None,
        }
    }

    /// `tillup-window` next to the current executable.
    pub fn beside_current_exe() -> PathBuf {
        let name = format!("tillup-window{}", std::env::consts::EXE_SUFFIX);
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join(&name)))
            .unwrap_or_else(|| PathBuf::from(name))
    }

    pub fn is_open(&self) -> bool {
        self.stdin.is_some()
    }

    /// Opens the window on `page`, or asks the open one to come forward
    /// and show it.
    pub async fn open(
        &mut self,
        page: Page,
        lang: Lang,
        events: &UnboundedSender<Event>,
    ) -> Result<(), OpenError> {
        if self.is_open() {
            self.send(&ToWindow::Show { page }).await;
            return Ok(());
        }
        if !self.bin.is_file() {
            return Err(OpenError::Missing(self.bin.clone()));
        }
        let mut command = Command::new(&self.bin);
        command
            .arg("--page")
            .arg(page.as_str())
            .arg("--lang")
            .arg(lang.code());
        match &self.gdk_gl {
            Some(v) => command.env("GDK_GL", v),
            None => command.env_remove("GDK_GL"),
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| OpenError::Spawn(format!("cannot start {}: {e}", self.bin.display())))?;
        tracing::info!("window pid {}", child.id().unwrap_or(0));
        self.stdin = child.stdin.take();
        if let Some(stdout) = child.stdout.take() {
            let events = events.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = events.send(Event::Line(l));
                }
            });
        }
        let (kill, killed) = oneshot::channel::<()>();
        self.kill = Some(kill);
        let events = events.clone();
        tokio::spawn(async move {
            // wait() reaps the child: no zombie is left.
            let status = tokio::select! {
                s = child.wait() => s,
                _ = killed => { let _ = child.start_kill(); child.wait().await }
            };
            let _ = events.send(Event::Exited(format!("{status:?}")));
        });
        Ok(())
    }

    /// Writes `message` to the window as one JSON line, if it is open.
    pub async fn send(&mut self, message: &ToWindow) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        let mut bytes = match serde_json::to_vec(message) {
            Ok(b) => b,
            Err(e) => return tracing::error!("cannot encode a message to the window: {e}"),
        };
        bytes.push(b'\n');
        if let Err(e) = stdin.write_all(&bytes).await {
            tracing::warn!("cannot write to the window: {e}");
        }
    }

    /// The child exited (seen through [`Event::Exited`]).
    pub fn exited(&mut self) {
        self.stdin = None;
        self.kill = None;
    }

    /// On quit: close its stdin (the window exits on EOF), then kill it
    /// after a grace period.
    pub async fn close(&mut self) {
        if let Some(kill) = self.kill.take() {
            drop(self.stdin.take());
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = kill.send(());
        }
    }
}
