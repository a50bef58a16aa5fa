//! `tillup`: the listener without a display, for services, scripts and tests.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use jiff::Timestamp;
use tillup_core::upgrade::Trigger;
use tillup_listener::schedule::{Answer, TickOutcome};
use tillup_listener::{Config, Listener};

mod render;

#[derive(Parser)]
#[command(
    name = "tillup",
    version,
    about = "Keeps the store's POS terminals on the current release."
)]
struct Cli {
    /// The configuration file [default: the platform's config folder, tillup/config.toml].
    #[arg(long, global = true, env = "TILLUP_CONFIG")]
    config: Option<PathBuf>,
    /// Pretend the process started at this time (RFC 3339, or `2026-11-21T03:30[Asia/Shanghai]`);
    /// time then flows normally. For tests and dry runs of the schedule.
    #[arg(long, global = true, env = "TILLUP_NOW", hide = true, value_parser = parse_time)]
    now: Option<Timestamp>,
    /// Run the schedule with no display (same as `daemon`).
    #[arg(long)]
    headless: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and verify the version log, compare it with what the terminals run.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Upgrade every terminal that has an update, now.
    Update {
        #[arg(long)]
        json: bool,
    },
    /// Upgrade the store from a bundle file (`tillup-server export`),
    /// without the server: verified as a download would be, with the same
    /// backup, canary and health checks; the report waits for the server.
    Import {
        /// The bundle file (from a USB stick, say).
        file: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The terminals, their versions and states.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The upgrades so far.
    History {
        #[arg(long)]
        json: bool,
    },
    /// Pair terminal N: check that its agent is the one showing CODE, and
    /// from then on talk to nothing else at its address.
    Pair {
        /// The terminal's number.
        terminal: u32,
        /// The pairing code its agent shows (`tillup-agent … pairing-code`).
        code: String,
    },
    /// Answer the pending upgrade prompt (what the tray popup's buttons do).
    Answer { answer: Answer },
    /// Bring the terminals' agents and this listener to the newest release
    /// of tillup's own channel (`self_channel`): canary agent first, each
    /// health-checked with its main program untouched, then the listener.
    SelfUpdate {
        #[arg(long)]
        json: bool,
    },
    /// Check that this executable can run with the configuration, without
    /// doing anything: what a self-update asks of a new executable.
    SelfCheck,
    /// Check on the schedule; upgrade in the window (scheduled mode) or record a prompt (prompt mode).
    Daemon {
        /// One check, then exit.
        #[arg(long)]
        once: bool,
    },
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    s.parse::<Timestamp>()
        .or_else(|_| s.parse::<jiff::Zoned>().map(|z| z.timestamp()))
        .map_err(|e| format!("`{s}`: {e}"))
}

fn main() -> ExitCode {
    // Where this program was started from, before anything can rename
    // another file over it (a self-update).
    let _ = tillup_selfupdate::this_exe();
    // The host's backups hold the terminals' sales databases.
    tillup_fs::keep_new_files_private();
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info,tillup_listener=info",
        _ => "debug",
    };
    tillup_listener::init_logging(filter);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tillup: {}", tillup_core::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = match cli.config {
        Some(p) => p,
        None => {
            Config::default_path().context("no config folder on this system; pass --config FILE")?
        }
    };
    let config = Config::load(&path)?;
    if let Some(Command::SelfCheck) = &cli.command {
        let report = tillup_listener::selfupdate::self_check(config)?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(Command::Pair { terminal, code }) = &cli.command {
        let fingerprint = tillup_listener::pairing::pair(&config, *terminal, code).await?;
        tillup_listener::pairing::pinned(&config, *terminal, &fingerprint).save(&path)?;
        println!("terminal {terminal} paired: {fingerprint}");
        return Ok(ExitCode::SUCCESS);
    }
    let listener = Listener::new(config)?;
    // A new executable on trial is kept once it got this far; one that
    // started before without being kept goes back to the one it replaced.
    if let Some(exe) = listener.settle_self()? {
        drop(listener);
        let e = tillup_selfupdate::restart(&exe);
        anyhow::bail!("could not restart on {}: {e}", exe.display());
    }
    let started = std::time::Instant::now();
    let base = cli.now.unwrap_or_else(Timestamp::now);
    let now = move || base + jiff::SignedDuration::try_from(started.elapsed()).unwrap_or_default();
    let command = match (cli.command, cli.headless) {
        (Some(c), _) => c,
        (None, true) => Command::Daemon { once: false },
        (None, false) => anyhow::bail!(
            "say what to do: check, update, import, status, history, pair, answer, self-update or daemon (see --help)"
        ),
    };
    match command {
        Command::Pair { .. } | Command::SelfCheck => unreachable!("done above"),
        Command::SelfUpdate { json } => {
            let outcome = listener.self_update(now(), true).await?;
            render::self_update(&outcome, json);
            if outcome
                .agents
                .values()
                .chain([&outcome.listener])
                .any(|s| matches!(s, tillup_listener::selfupdate::Step::Failed { .. }))
            {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Check { json } => {
            let (_, report) = listener.check(now()).await?;
            render::check(&report, json);
        }
        Command::Update { .. } | Command::Import { .. } => {
            let json = matches!(
                command,
                Command::Update { json: true } | Command::Import { json: true, .. }
            );
            let mut progress = render::Progress::new(json, listener.transfers.clone());
            let who = std::env::var("USER").unwrap_or_else(|_| "command line".into());
            let trigger = Trigger::Person { name: who };
            let mut observe = |u: &_, e: Option<&_>| progress.on(u, e);
            let outcome = match &command {
                Command::Import { file, .. } => {
                    listener.import(file, trigger, now(), &mut observe).await?
                }
                _ => listener.update(trigger, now(), &mut observe).await?,
            };
            progress.finish();
            render::update(&outcome, json);
            if outcome.upgrades.iter().any(|u| {
                u.terminals
                    .iter()
                    .any(|t| t.result != tillup_listener::local_log::Outcome::Upgraded)
            }) {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Status { json } => render::status(&listener.status().await?, json),
        Command::History { json } => render::history(
            &tillup_listener::local_log::LocalLog::load(&listener.data_dir)?.history,
            json,
        ),
        Command::Answer { answer } => {
            let mut progress = render::Progress::new(false, listener.transfers.clone());
            let who = std::env::var("USER").unwrap_or_else(|_| "store manager".into());
            match listener
                .answer(answer, &who, now(), &mut |u, e| progress.on(u, e))
                .await?
            {
                Some(outcome) => {
                    progress.finish();
                    render::update(&outcome, false);
                }
                None => println!("answer recorded: {answer:?}"),
            }
        }
        Command::Daemon { once } => loop {
            let mut progress = render::Progress::new(false, listener.transfers.clone());
            let outcome = match listener.tick(now(), &mut |u, e| progress.on(u, e)).await {
                Ok(TickOutcome::Upgraded(outcome)) => {
                    progress.finish();
                    render::update(&outcome, false);
                    None
                }
                Ok(other) => {
                    println!("{}", serde_json::to_string(&other)?);
                    Some(other)
                }
                Err(e) if !once => {
                    eprintln!("tillup: {}", tillup_core::error_chain(&e));
                    None
                }
                Err(e) => return Err(e.into()),
            };
            if listener.config.self_channel.is_some() {
                match listener.self_update(now(), false).await {
                    Ok(o) if o.restart => {
                        render::self_update(&o, false);
                        let exe = tillup_selfupdate::this_exe()?;
                        drop(listener);
                        let e = tillup_selfupdate::restart(&exe);
                        anyhow::bail!("could not restart on {}: {e}", exe.display());
                    }
                    Ok(o) => render::self_update(&o, false),
                    Err(e) => eprintln!("tillup: {}", tillup_core::error_chain(&e)),
                }
            }
            if once {
                break;
            }
            tokio::time::sleep(listener.next_delay(outcome.as_ref(), now())).await;
        },
    }
    Ok(ExitCode::SUCCESS)
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
