//! The demo: a store with three terminals upgraded from 1.0.0 to 1.1.0 by
//! the real programs on loopback, then checked byte for byte.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use tillup_e2e::{ReleaseSpec, Store, StoreSpec, bin, expected_after, manifest_of};

#[derive(Parser)]
#[command(
    about = "Upgrade a demo store of three POS terminals from 1.0.0 to 1.1.0, with real processes."
)]
struct Args {
    /// Leave the whole store (server data, host folders, terminal folders) in DIR.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Size of the large file of release 1.1.0, in MiB.
    #[arg(long, default_value_t = 32)]
    large_mib: usize,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tillup-demo: {}", tillup_core::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn step(s: &str) {
    println!("\n== {s}");
}

fn run(args: Args) -> Result<()> {
    if let Some(dir) = &args.keep {
        ensure!(
            !dir.exists() || std::fs::read_dir(dir)?.next().is_none(),
            "{} is not empty: pass a new or empty folder to --keep",
            dir.display()
        );
    }
    step(
        "Starting tillup-server, publishing 1.0.0, installing it on 3 terminals with their agents",
    );
    let store = Store::new(args.keep.as_deref(), StoreSpec::default())?;
    println!(
        "server   {}  (data: {})",
        store.server.url(),
        store.server.data.display()
    );
    for t in store.terminals.values() {
        println!(
            "terminal {}  agent {}  folder {}",
            t.number,
            t.url().unwrap_or("-"),
            t.folder.display()
        );
    }
    let old: Vec<_> = store
        .terminals
        .values()
        .map(|t| (t.number, manifest_of(&t.folder)))
        .collect();

    step("The store manager's view before the release");
    show(&store, &["status"])?;

    step(&format!(
        "Publishing 1.1.0: files changed, added and removed, a Chinese file name, a {} MiB file",
        args.large_mib
    ));
    let mut spec = ReleaseSpec::new("1.1.0");
    spec.large_bytes = args.large_mib * 1024 * 1024;
    let rel = store.publish(&spec, &[])?;
    let release = manifest_of(&rel);

    step("tillup check");
    show(&store, &["check"])?;

    step("tillup update");
    show(&store, &["update"])?;

    step("Verifying every terminal byte for byte");
    let backup = store
        .backups()
        .pop()
        .context("no backup folder on the host")?;
    for (n, old_manifest) in &old {
        let t = &store.terminals[n];
        let now = manifest_of(&t.folder);
        // pos-sim appends to data/sales.log at every start, so compare the
        // terminal's current local files, which the upgrade had to keep.
        let expected = expected_after(&release, &now);
        ensure!(
            now == expected,
            "terminal {n}: folder differs from release 1.1.0 plus its own preserved files"
        );
        let kept = now
            .files()
            .iter()
            .filter(|f| release.get(&f.path).is_none())
            .count();
        let backed_up = manifest_of(&backup.join(format!("terminal-{n}")));
        ensure!(
            backed_up == *old_manifest,
            "terminal {n}: backup differs from the old folder"
        );
        t.wait_running("1.1.0")?;
        println!(
            "terminal {n}: folder = release 1.1.0 + {kept} terminal-local file(s); backup in {}; main program runs 1.1.0",
            backup.join(format!("terminal-{n}")).display()
        );
    }
    let reports = store.server.cli(&["reports", &store.store_id])?;
    let reports: serde_json::Value = serde_json::from_str(&reports).context("reports are JSON")?;
    println!(
        "server holds {} report(s) for {}",
        reports.as_array().map_or(0, Vec::len),
        store.store_id
    );
    if let Some(dir) = &args.keep {
        println!("\nThe whole store is kept in {}", dir.display());
    }
    Ok(())
}

/// Runs `tillup ARGS` with the output shown as it comes.
fn show(store: &Store, args: &[&str]) -> Result<()> {
    let status = Command::new(bin("tillup")?)
        .arg("--config")
        .arg(&store.listener_config)
        .args(args)
        .status()?;
    if !status.success() {
        bail!("tillup {} exited with {status}", args.join(" "));
    }
    Ok(())
}
