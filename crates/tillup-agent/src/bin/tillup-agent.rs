//! `tillup-agent --config FILE`: the service on a POS terminal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "tillup's agent on a POS terminal: supervises the main program and swaps its folder",
    subcommand_negates_reqs = true
)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Make a token for the host to send: prints the token (for the host's
    /// config) and the `token_sha256` line for this agent's config, which
    /// keeps no copy of the token.
    NewToken,
    /// Print this terminal's pairing code (making its TLS certificate if
    /// it has none yet), for `tillup pair` on the store host.
    PairingCode,
    /// Print the OpenAPI description of the agent's HTTP API (JSON).
    Openapi,
    /// Check that this executable can run with the configuration (read
    /// it, open the state folder and its identity) without serving: what
    /// a self-update asks of a new executable before it keeps it.
    SelfCheck,
}

fn main() -> ExitCode {
    // Where this program was started from, before anything can rename
    // another file over it (a self-update).
    let _ = tillup_selfupdate::this_exe();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "tillup-agent: error: {}",
                tillup_core::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Openapi) = cli.command {
        println!(
            "{}",
            serde_json::to_string_pretty(&tillup_agent::openapi::description())?
        );
        return Ok(());
    }
    if let Some(Command::NewToken) = cli.command {
        let (token, digest) = tillup_agent::config::new_token();
        println!("{token}");
        eprintln!(
            "put the token above in the host's config ([[terminals]] token), and this line in the agent's:\ntoken_sha256 = \"{digest}\""
        );
        return Ok(());
    }
    let path = cli
        .config
        .ok_or_else(|| anyhow::anyhow!("--config FILE is needed: the agent's configuration"))?;
    let config = tillup_agent::Config::load(&path)?;
    if let Some(Command::SelfCheck) = cli.command {
        let report = tillup_agent::self_check(&config)?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if let Some(Command::PairingCode) = cli.command {
        let identity = tillup_agent::tls::Identity::load_or_create(&config.state_dir())?;
        println!("{}", identity.pairing_code());
        eprintln!(
            "type it on the store host: tillup pair {} {}",
            config.terminal,
            identity.pairing_code()
        );
        return Ok(());
    }
    tokio::runtime::Runtime::new()?.block_on(tillup_agent::serve(config))
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
