//! The Tauri app: one window, labelled `main`, built at start (the process
//! exists only to show it), the commands the page calls, and the thread
//! that reads the tray's lines from stdin and turns them into events.

use std::io::BufRead;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;
use tauri::{Emitter, Manager, State, WebviewUrl, WebviewWindow, WebviewWindowBuilder};
use tillup_listener::bridge::{Page, Request, Settings, Snapshot, ToWindow};
use tillup_listener::schedule::Answer;
use tillup_listener::view::Lang;

use crate::link::{self, Link};

const LABEL: &str = "main";

/// What the page asks first.
#[derive(Clone, Serialize)]
struct Start {
    page: Page,
}

struct Shared {
    link: Arc<Link>,
    first: Page,
    lang: Lang,
}

fn size(page: Page) -> (f64, f64) {
    match page {
        Page::Popup => (460.0, 600.0),
        Page::Window => (940.0, 680.0),
    }
}

fn title(page: Page, lang: Lang) -> &'static str {
    match (page, lang) {
        (Page::Popup, Lang::En) => "tillup — update available",
        (Page::Popup, Lang::ZhCn) => "tillup — 有可用更新",
        (Page::Window, _) => "tillup",
    }
}

fn arrange(window: &WebviewWindow, page: Page, lang: Lang) -> tauri::Result<()> {
    let (w, h) = size(page);
    window.set_title(title(page, lang))?;
    window.set_size(tauri::LogicalSize::new(w, h))?;
    Ok(())
}

#[tauri::command]
fn start(shared: State<'_, Shared>) -> Start {
    Start { page: shared.first }
}

#[tauri::command]
fn snapshot(shared: State<'_, Shared>) -> Option<Snapshot> {
    shared.link.snapshot()
}

#[tauri::command]
async fn answer(shared: State<'_, Shared>, answer: Answer) -> Result<(), String> {
    shared.link.request(Request::Answer { answer }).await
}

#[tauri::command]
async fn check_now(shared: State<'_, Shared>) -> Result<(), String> {
    shared.link.request(Request::CheckNow).await
}

#[tauri::command]
async fn upgrade_now(shared: State<'_, Shared>) -> Result<(), String> {
    shared.link.request(Request::UpgradeNow).await
}

#[tauri::command]
async fn save_settings(shared: State<'_, Shared>, settings: Settings) -> Result<(), String> {
    shared
        .link
        .request(Request::SaveSettings { settings })
        .await
}

#[tauri::command]
fn show_page(window: WebviewWindow, shared: State<'_, Shared>, page: Page) -> Result<(), String> {
    arrange(&window, page, shared.lang).map_err(|e| format!("cannot resize the window: {e}"))
}

#[tauri::command]
fn close_window(window: WebviewWindow) -> Result<(), String> {
    window
        .close()
        .map_err(|e| format!("cannot close the window: {e}"))
}

/// Reads the tray's lines until stdin ends, then quits: without the tray
/// the window has nothing to show.
fn read_tray(app: tauri::AppHandle, link: Arc<Link>) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<ToWindow>(&line) {
            Ok(ToWindow::Snapshot(snapshot)) => {
                link.set_snapshot((*snapshot).clone());
                let _ = app.emit_to(LABEL, "snapshot", snapshot);
            }
            Ok(ToWindow::Reply { id, error }) => link.replied(id, error),
            Ok(ToWindow::Show { page }) => {
                if let Some(window) = app.get_webview_window(LABEL) {
                    let lang = app.state::<Shared>().lang;
                    let _ = arrange(&window, page, lang);
                    let _ = window.unminimize();
                    let _ = window.set_focus();
                }
                let _ = app.emit_to(LABEL, "show", page);
            }
            Err(e) => eprintln!("tillup-window: ignored a line from tillup-tray ({e}): {line}"),
        }
    }
    app.exit(0);
}

pub fn run(page: Page, lang: Lang) -> anyhow::Result<()> {
    let link = Arc::new(Link::default());
    let reader = link.clone();
    tauri::Builder::default()
        .manage(Shared {
            link,
            first: page,
            lang,
        })
        .invoke_handler(tauri::generate_handler![
            start,
            snapshot,
            answer,
            check_now,
            upgrade_now,
            save_settings,
            show_page,
            close_window
        ])
        .setup(move |app| {
            let (w, h) = size(page);
            WebviewWindowBuilder::new(app, LABEL, WebviewUrl::App("index.html".into()))
                .title(title(page, lang))
                .inner_size(w, h)
                .min_inner_size(420.0, 480.0)
                .center()
                .build()?;
            let handle = app.handle().clone();
            std::thread::Builder::new()
                .name("tray-link".into())
                .spawn(move || read_tray(handle, reader))?;
            // Ask for the first snapshot.
            if let Err(e) = link::send(&tillup_listener::bridge::FromWindow {
                id: 0,
                request: Request::Ready,
            }) {
                eprintln!("tillup-window: {e}");
            }
            Ok(())
        })
        .run(tauri::generate_context!())
        .context("the window app failed")
}
