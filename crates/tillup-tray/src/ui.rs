//! The GTK side: the tray icon and its menu, on the main thread. It only
//! draws what the service sends ([`show`]) and forwards menu clicks.

use std::cell::RefCell;

use anyhow::Context as _;
use gtk::glib;
use tillup_listener::view::{Icon, Lang, TrayView};
use tokio::sync::mpsc::UnboundedSender;
use tray_icon::menu::{Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tray_icon::{TrayIcon, TrayIconBuilder};

use crate::decide;

/// What the menu asks the service to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Open,
    Check,
    UpgradeNow,
    Quit,
}

/// What the tray draws: the listener's view and the last problem, if any.
#[derive(Clone, Debug)]
pub struct Shown {
    pub view: TrayView,
    pub problem: Option<String>,
}

struct Ui {
    tray: TrayIcon,
    status: MenuItem,
    upgrade: MenuItem,
    icon: Icon,
}

thread_local! {
    /// Set on the GTK thread only; `show` runs there through `idle_add_once`.
    static UI: RefCell<Option<Ui>> = const { RefCell::new(None) };
}

fn tray_icon(icon: Icon) -> anyhow::Result<tray_icon::Icon> {
    let (rgba, w, h) = decide::decode_rgba(decide::icon_png(icon)).map_err(anyhow::Error::msg)?;
    tray_icon::Icon::from_rgba(rgba, w, h).context("the tray icon")
}

/// Builds the tray and runs the GTK main loop until [`quit`].
/// `GDK_GL` must already be `disable` (see `main`).
pub fn run(lang: Lang, commands: UnboundedSender<Cmd>, first: Shown) -> anyhow::Result<()> {
    gtk::init().context("cannot start GTK (is DISPLAY or WAYLAND_DISPLAY set?)")?;
    let words = decide::labels(lang);
    let status = MenuItem::with_id("status", status_text(&first), false, None);
    let open = MenuItem::with_id("open", words.open, true, None);
    let check = MenuItem::with_id("check", words.check, true, None);
    let upgrade = MenuItem::with_id("upgrade", words.upgrade, first.view.upgrade_now, None);
    let quit = MenuItem::with_id("quit", words.quit, true, None);
    let menu = Menu::new();
    menu.append_items(&[
        &status,
        &PredefinedMenuItem::separator(),
        &open,
        &check,
        &upgrade,
        &PredefinedMenuItem::separator(),
        &quit,
    ])
    .context("the tray menu")?;
    MenuEvent::set_event_handler(Some(move |e: MenuEvent| {
        let cmd = match e.id().0.as_str() {
            "open" => Cmd::Open,
            "check" => Cmd::Check,
            "upgrade" => Cmd::UpgradeNow,
            "quit" => Cmd::Quit,
            _ => return,
        };
        tracing::debug!("menu: {cmd:?}");
        let _ = commands.send(cmd);
    }));
    let tray = TrayIconBuilder::new()
        .with_menu(Box::new(menu))
        .with_tooltip(&first.view.tooltip)
        .with_icon(tray_icon(first.view.icon)?)
        .build()
        .context("cannot create the tray icon")?;
    UI.with(|ui| {
        *ui.borrow_mut() = Some(Ui {
            tray,
            status,
            upgrade,
            icon: first.view.icon,
        })
    });
    tracing::info!("tray ready");
    gtk::main();
    // The tray icon goes away before the process does.
    UI.with(|ui| ui.borrow_mut().take());
    Ok(())
}

fn status_text(shown: &Shown) -> String {
    decide::status_line(&shown.view.tooltip, shown.problem.as_deref())
}

/// Draws `shown`; callable from any thread.
pub fn show(shown: Shown) {
    glib::idle_add_once(move || {
        UI.with(|ui| {
            if let Some(ui) = ui.borrow_mut().as_mut() {
                ui.apply(&shown);
            }
        })
    });
}

impl Ui {
    fn apply(&mut self, shown: &Shown) {
        self.status.set_text(status_text(shown));
        self.upgrade.set_enabled(shown.view.upgrade_now);
        if let Err(e) = self.tray.set_tooltip(Some(&shown.view.tooltip)) {
            tracing::debug!("tooltip: {e}");
        }
        if self.icon != shown.view.icon {
            match tray_icon(shown.view.icon) {
                Ok(icon) => match self.tray.set_icon(Some(icon)) {
                    Ok(()) => self.icon = shown.view.icon,
                    Err(e) => tracing::warn!("cannot change the tray icon: {e}"),
                },
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
    }
}

/// Ends the GTK main loop; callable from any thread.
pub fn quit() {
    glib::idle_add_once(gtk::main_quit);
}
