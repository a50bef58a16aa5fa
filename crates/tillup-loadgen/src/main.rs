//! A release night against the real `tillup-server`: N stores of 8 tills
//! checking their log at the listener's interval, and upgrading at the
//! arrival rate of a two-hour window (a slice of it, at its own request
//! rates). Prints per-endpoint throughput and p50/p99/max latency.
//!
//! `log-checks` measures the cheapest request alone: conditional log
//! fetches ending in 304, tillup-server against nginx serving the same
//! file with its ETag, both driven by `wrk` in alternating rounds.
//!
//! ```text
//! cargo build --release -p tillup-server -p tillup-loadgen
//! target/release/tillup-loadgen night --stores 10000 --database sqlite --servers 1
//! target/release/tillup-loadgen log-checks --rounds 3
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use tillup_loadgen::head_office::{self, Database, HeadOffice, ReleaseShape};
use tillup_loadgen::night::{self, Night};
use tillup_loadgen::{stats, versus_nginx};

#[derive(Parser)]
#[command(about = "A chain's release night against the real tillup-server.")]
struct Cli {
    /// Where release folders are kept between runs and data folders made
    /// [default: a folder under the system's temporary folder].
    #[arg(long, global = true)]
    work: Option<PathBuf>,
    /// Also write the figures as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Stores checking and upgrading at a release night's rates.
    Night(NightArgs),
    /// 304 log checks against nginx serving the same file (needs wrk and nginx).
    LogChecks(LogCheckArgs),
}

#[derive(clap::Args)]
struct LogCheckArgs {
    /// Alternating rounds (tillup, then nginx).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 8)]
    seconds: u32,
    /// wrk's open connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// The database behind the server.
    #[arg(long, value_enum, default_value_t = Database::Sqlite)]
    database: Database,
}

#[derive(clap::Args)]
struct NightArgs {
    /// Stores in the chain.
    #[arg(long, default_value_t = 10_000)]
    stores: usize,
    /// Terminals per store.
    #[arg(long, default_value_t = 8)]
    tills: u32,
    /// Each terminal's own bytes (config, database, logs).
    #[arg(long, default_value_t = 300_000)]
    own_bytes: usize,
    /// The release window every store upgrades in, in minutes.
    #[arg(long, default_value_t = 120)]
    window_minutes: u64,
    /// How long the run lasts, in seconds: a slice of the window at its own rates.
    #[arg(long, default_value_t = 120)]
    run_seconds: u64,
    /// The listeners' check interval, in minutes (their default).
    #[arg(long, default_value_t = 60)]
    check_interval_minutes: u64,
    /// The random delay added to each interval, in minutes (the listeners' default).
    #[arg(long, default_value_t = 10)]
    check_jitter_minutes: u64,
    /// The database the servers share.
    #[arg(long, value_enum, default_value_t = Database::Sqlite)]
    database: Database,
    /// Servers sharing the database and data folder; requests are spread over them.
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// The program folder's size in MB (10^6 bytes).
    #[arg(long, default_value_t = 205)]
    folder_mb: u64,
    /// Files in the program folder.
    #[arg(long, default_value_t = 2630)]
    files: usize,
    /// Share of the bytes the new release changes.
    #[arg(long, default_value_t = 0.055)]
    changed_share: f64,
    /// Where the simulated stores keep their files while they upgrade
    /// [default: /dev/shm where it exists, so that thousands of simulated
    /// stores writing and fsyncing on this machine do not slow the server
    /// they measure; else the work folder].
    #[arg(long)]
    scratch: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let work = cli
        .work
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("tillup-loadgen"));
    std::fs::create_dir_all(&work).with_context(|| work.display().to_string())?;
    let doc = match cli.command {
        Cmd::Night(args) => night(&work, args)?,
        Cmd::LogChecks(args) => log_checks(&work, args)?,
    };
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| path.display().to_string())?;
    }
    Ok(())
}

fn night(work: &std::path::Path, args: NightArgs) -> Result<serde_json::Value> {
    ensure!(args.stores > 0, "--stores must be at least 1");
    ensure!(args.servers > 0, "--servers must be at least 1");
    eprintln!(
        "preparing {} stores, {:?}, {} server(s) in {}",
        args.stores,
        args.database,
        args.servers,
        work.display()
    );
    let mut office = HeadOffice::prepare(
        work,
        ReleaseShape {
            folder_bytes: args.folder_mb * 1_000_000,
            files: args.files,
            changed_share: args.changed_share,
        },
        args.database,
        args.stores,
        args.servers,
    )?;
    eprintln!(
        "ready in {:.1} s; running {} s of the night",
        office.setup.as_secs_f64(),
        args.run_seconds
    );
    let scratch_in = args.scratch.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() { shm } else { work.to_owned() }
    });
    let scratch = tempfile::tempdir_in(&scratch_in)
        .with_context(|| format!("a scratch folder in {}", scratch_in.display()))?;
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let night = Night {
        tills: args.tills,
        own_bytes: args.own_bytes,
        check_interval: minutes(args.check_interval_minutes),
        check_jitter: minutes(args.check_jitter_minutes),
        window: minutes(args.window_minutes),
        run_for: Duration::from_secs(args.run_seconds),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let (stats, outcome) = rt.block_on(night::run(
        night,
        &office.urls,
        &office.stores,
        (head_office::FROM, office.from.clone()),
        (head_office::TO, &office.to),
        scratch.path(),
    ))?;
    ensure!(office.servers_alive(), "a server exited during the run");
    let rows = stats.summary(Duration::from_secs_f64(outcome.seconds));
    let arrival = args.stores as f64 / minutes(args.window_minutes).as_secs_f64();
    println!(
        "{} stores × {} tills, {:?}, {} server(s); upgrades arrive at {arrival:.2}/s, checks at {:.1}/s\n",
        args.stores,
        args.tills,
        args.database,
        args.servers,
        args.stores as f64 / minutes(args.check_interval_minutes).as_secs_f64(),
    );
    print!("{}", stats::table(&rows));
    println!(
        "\nupgrades: {} started, {} done, {} shed, at most {} at once; {:.0} MB downloaded in {:.0} s",
        outcome.upgrades_started,
        outcome.upgrades_done,
        outcome.shed,
        outcome.most_in_flight,
        outcome.bytes_down as f64 / 1e6,
        outcome.seconds
    );
    for r in rows.iter().filter(|r| r.errors > 0) {
        println!("errors of {}: {:?}", r.label, r.first_errors);
    }
    Ok(serde_json::json!({
        "stores": args.stores, "tills": args.tills, "database": format!("{:?}", args.database),
        "servers": args.servers, "arrivals_per_second": arrival,
        "endpoints": rows, "outcome": outcome,
    }))
}

fn log_checks(work: &std::path::Path, args: LogCheckArgs) -> Result<serde_json::Value> {
    let office = HeadOffice::prepare(
        work,
        ReleaseShape {
            folder_bytes: 2_000_000,
            files: 100,
            changed_share: 0.05,
        },
        args.database,
        1,
        1,
    )?;
    let wrk = versus_nginx::Wrk {
        connections: args.connections,
        threads: 2,
        seconds: args.seconds,
    };
    let figures = versus_nginx::compare(work, &office, &wrk, args.rounds)?;
    print!("{}", versus_nginx::table(&figures));
    Ok(serde_json::to_value(&figures)?)
}
