//! `pos-sim`: a simulated POS main program. See the library for what it does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "A simulated POS main program for tillup's tests and demo"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the program from FOLDER, writing its heartbeat into STATE.
    Run {
        #[arg(long)]
        folder: PathBuf,
        #[arg(long)]
        state: PathBuf,
    },
    /// Print the running version and exit 0 if the program is healthy; else print why and exit 1.
    Probe {
        #[arg(long)]
        state: PathBuf,
        #[arg(long, default_value_t = 3000)]
        max_age_ms: u64,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Run { folder, state } => tillup_pos_sim::run(&folder, &state),
        Cmd::Probe { state, max_age_ms } => Ok(tillup_pos_sim::probe(&state, max_age_ms)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
