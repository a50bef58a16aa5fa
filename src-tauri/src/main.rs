//! `tillup-window`: the store manager's popup and window, a Tauri 2 app in
//! its own process. `tillup-tray` starts it with its stdin and stdout piped
//! (the protocol is `tillup_listener::bridge`); it exits when its window
//! closes or when its stdin ends, and its memory goes with it.

use std::process::ExitCode;

use clap::Parser;
use tillup_listener::bridge::Page;
use tillup_listener::view::Lang;

mod app;
mod link;

#[derive(Parser)]
#[command(
    name = "tillup-window",
    version,
    about = "The tillup window. Started by tillup-tray, which it talks to over stdin and stdout."
)]
struct Cli {
    /// The page shown first.
    #[arg(long, default_value = "window", value_parser = parse_page)]
    page: Page,
    /// The language of the window's title [the page itself follows the tray's snapshot].
    #[arg(long, default_value = "en", value_parser = parse_lang)]
    lang: Lang,
}

fn parse_page(s: &str) -> Result<Page, String> {
    serde_json::from_value(s.into()).map_err(|_| format!("`{s}`: say popup or window"))
}

fn parse_lang(s: &str) -> Result<Lang, String> {
    serde_json::from_value(s.into()).map_err(|_| format!("`{s}`: say en or zh-CN"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match app::run(cli.page, cli.lang) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tillup-window: {}", tillup_core::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
