//! The window's end of the link to `tillup-tray`: requests go out as JSON
//! lines on stdout, each answered by a reply with its id on stdin; the
//! newest snapshot is kept for a page that loads after it arrived.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tillup_listener::bridge::{FromWindow, Request, Snapshot};
use tokio::sync::oneshot;

/// How long a request may wait for its reply. The tray answers at once
/// (a check or an upgrade runs on after the reply); this only bounds a
/// tray that stopped answering.
const REPLY_WITHIN: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Link {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Option<String>>>>,
    snapshot: Mutex<Option<Snapshot>>,
}

impl Link {
    /// Sends `request` and waits for its reply; the error is a sentence
    /// for the store manager.
    pub async fn request(&self, request: Request) -> Result<(), String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("not poisoned").insert(id, tx);
        if let Err(e) = send(&FromWindow { id, request }) {
            self.waiting.lock().expect("not poisoned").remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(REPLY_WITHIN, rx).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(error))) => Err(error),
            Ok(Err(_)) => Err("tillup-tray has gone; start tillup again".into()),
            Err(_) => {
                self.waiting.lock().expect("not poisoned").remove(&id);
                Err(format!(
                    "tillup-tray did not answer within {} s; try again",
                    REPLY_WITHIN.as_secs()
                ))
            }
        }
    }

    /// Delivers the reply to request `id`.
    pub fn replied(&self, id: u64, error: Option<String>) {
        if let Some(tx) = self.waiting.lock().expect("not poisoned").remove(&id) {
            let _ = tx.send(error);
        }
    }

    pub fn set_snapshot(&self, snapshot: Snapshot) {
        *self.snapshot.lock().expect("not poisoned") = Some(snapshot);
    }

    pub fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot.lock().expect("not poisoned").clone()
    }
}

/// Writes one line to stdout: the tray reads it.
pub fn send(message: &FromWindow) -> Result<(), String> {
    let line = serde_json::to_string(message).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot reach tillup-tray ({e}); start tillup again"))
}
