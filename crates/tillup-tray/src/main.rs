//! `tillup-tray`: the store manager's tray icon over the listener.
//!
//! The main thread runs GTK (the tray icon and its menu, `ui`); a second
//! thread runs the listener on a tokio runtime (`service`); the window is
//! another program (`window`). No webview lives in this process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tillup_listener::view::Lang;
use tillup_listener::{Config, Listener};

mod autostart;
mod decide;
mod instance;
mod service;
mod ui;
mod window;

#[derive(Parser)]
#[command(
    name = "tillup-tray",
    version,
    about = "The tillup tray icon: checks and upgrades the store's POS terminals, and tells the store manager."
)]
struct Cli {
    /// The configuration file [default: the platform's config folder, tillup/config.toml].
    #[arg(long, env = "TILLUP_CONFIG")]
    config: Option<PathBuf>,
    /// The language of the menu and messages [default: from LC_ALL, LC_MESSAGES or LANG].
    #[arg(long, value_parser = decide::parse_lang)]
    lang: Option<Lang>,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    // GTK probes GLX when it opens the display, which maps Mesa and LLVM
    // (~50 MB) into a process that never draws with GL: the tray goes
    // from 27 to 85 MB (docs/tray-memory-study.md). The window child gets
    // the original value back.
    let gdk_gl = std::env::var_os("GDK_GL");
    // SAFETY: the first statement of main; no other thread exists yet.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("GDK_GL", "disable")
    };
    // Its path now, before a self-update renames another file over it.
    let _ = tillup_selfupdate::this_exe();
    // No umask 077 here, unlike `tillup`: the window child inherits it,
    // and its webview then never shows the page (WebKitGTK under
    // tauri-driver). The data folder itself is 0700 (`Listener::new`), so
    // nothing in it is open to other users either way.
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn,tillup_tray=info",
        1 => "info",
        _ => "debug",
    };
    tillup_listener::init_logging(filter);
    match run(cli, gdk_gl) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tillup-tray: {}", tillup_core::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, gdk_gl: Option<std::ffi::OsString>) -> anyhow::Result<ExitCode> {
    let path = match cli.config {
        Some(p) => p,
        None => {
            Config::default_path().context("no config folder on this system; pass --config FILE")?
        }
    };
    let listener = Listener::new(Config::load(&path)?)?;
    let env = |name| std::env::var(name).ok();
    let lang = decide::lang(
        cli.lang,
        env("LC_ALL").as_deref(),
        env("LC_MESSAGES").as_deref(),
        env("LANG").as_deref(),
    );
    let _instance = match instance::acquire(&listener.data_dir)? {
        Ok(held) => held,
        Err(pid) => {
            // Started again from the menu or the desktop: the manager wants
            // the window of the one that runs.
            match instance::open_window_of(&pid) {
                Ok(()) => println!("tillup-tray already runs (pid {pid}); its window opens"),
                Err(e) => println!("tillup-tray already runs (pid {pid}); {e}"),
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    // A new build on trial is kept once it got this far; one that started
    // before without being kept goes back to the one it replaced.
    if let Some(exe) = listener.settle_self()? {
        drop(_instance);
        return Err(restart(&exe, gdk_gl));
    }
    let first = service::view_now(&listener, None, lang, None);
    let window = window::Window::new(window::Window::beside_current_exe(), gdk_gl.clone());
    let (commands, received) = tokio::sync::mpsc::unbounded_channel();
    let start = service::Start {
        listener,
        config_path: path,
        lang,
        window,
        commands: received,
    };
    let listener_thread = std::thread::Builder::new()
        .name("listener".into())
        .spawn(move || {
            let ended = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(service::run(start)),
                Err(e) => {
                    tracing::error!("cannot start the tokio runtime: {e}");
                    service::Ended::Quit
                }
            };
            ui::quit();
            ended
        })
        .context("cannot start the listener thread")?;
    let quit = commands.clone();
    let gtk = ui::run(lang, commands, first);
    // However GTK ended, the listener thread ends too.
    let _ = quit.send(ui::Cmd::Quit);
    let ended = listener_thread.join().unwrap_or(service::Ended::Quit);
    gtk?;
    match ended {
        service::Ended::Quit => Ok(ExitCode::SUCCESS),
        service::Ended::Restart => {
            drop(_instance);
            Err(restart(&tillup_selfupdate::this_exe()?, gdk_gl))
        }
    }
}

/// Restarts this process on the executable now at `exe` (a new build of
/// tillup's, or the kept one), with `GDK_GL` as it was started with.
/// Returns only on failure.
fn restart(exe: &std::path::Path, gdk_gl: Option<std::ffi::OsString>) -> anyhow::Error {
    // SAFETY: called before the listener thread starts or after it ended
    // and GTK's main loop returned: no other thread reads the environment.
    #[allow(unsafe_code)]
    unsafe {
        match gdk_gl {
            Some(v) => std::env::set_var("GDK_GL", v),
            None => std::env::remove_var("GDK_GL"),
        }
    };
    let e = tillup_selfupdate::restart(exe);
    anyhow::anyhow!("could not restart on {}: {e}", exe.display())
}

#[cfg(test)]
mod tests {
    /// Clap checks the definitions only when a command is parsed; this
    /// checks them all.
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
