//! Measures what the design's targets talk about (DESIGN §7): the local
//! work on a program folder, and how long a terminal's main program is
//! stopped during a real store upgrade. Prints a Markdown table.
//!
//! `cargo build --release --workspace --bins && target/release/tillup-bench`

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use tillup_e2e::{ReleaseSpec, Store, StoreSpec, noise, write};
use tillup_fs::{HashCache, materialize, scan_folder};

#[derive(Parser)]
#[command(about = "Benchmarks of tillup's local work and of a real store upgrade.")]
struct Args {
    /// Files in the synthetic program folder.
    #[arg(long, default_value_t = 2000)]
    files: usize,
    /// Total size of the synthetic program folder, in MiB.
    #[arg(long, default_value_t = 200)]
    folder_mib: usize,
    /// Size of the large file of the upgraded release, in MiB.
    #[arg(long, default_value_t = 64)]
    large_mib: usize,
    /// Repetitions of each local measurement (the median is shown).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<Duration> {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    Ok(median(v))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    println!("| measurement | value |\n| --- | --- |");

    // A program folder: many small files and a few large ones.
    let folder = tmp.path().join("cupos");
    let per_file = args.folder_mib * 1024 * 1024 / args.files.max(1);
    for i in 0..args.files {
        write(
            &folder.join(format!("lib/{:02}/module-{i}.bin", i % 50)),
            noise(i as u64, per_file),
        );
    }
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let cold = time(args.runs, || {
        Ok(scan_folder(&folder, &mut HashCache::default())?)
    })?;
    let manifest = scan_folder(&folder, &mut HashCache::default())?;
    println!(
        "| folder | {} files, {:.0} MiB |",
        manifest.len(),
        mib(manifest.total_size())
    );
    println!(
        "| scan, no cache (hash every byte) | {} ({:.0} MiB/s) |",
        ms(cold),
        mib(manifest.total_size()) / cold.as_secs_f64()
    );
    // Let the files age past the cache's freshness guard, then scan warm.
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    for f in manifest.files() {
        std::fs::File::options()
            .write(true)
            .open(tillup_fs::join(&folder, &f.path))?
            .set_modified(old)?;
    }
    let mut cache = HashCache::default();
    scan_folder(&folder, &mut cache)?;
    let warm = time(args.runs, || Ok(scan_folder(&folder, &mut cache)?))?;
    println!("| scan, hash cache warm (nothing changed) | {} |", ms(warm));

    let mut n = 0;
    let full = time(args.runs, || {
        n += 1;
        let dest = tmp.path().join(format!("staging-{n}"));
        materialize(&dest, &manifest, &|f| Ok(tillup_fs::join(&folder, &f.path)))?;
        std::fs::remove_dir_all(&dest)?;
        Ok(())
    })?;
    println!("| full staging (copy + verify + fsync) | {} |", ms(full));

    // A real store upgrade: three terminals, real processes on loopback.
    let store = Store::new(None, StoreSpec::default())?;
    let mut spec = ReleaseSpec::new("1.1.0");
    spec.large_bytes = args.large_mib * 1024 * 1024;
    store.publish(&spec, &[])?;
    let t = Instant::now();
    let outcome = store.tillup_json(&["update"])?;
    let total = t.elapsed();
    let terminals = outcome["upgrades"][0]["terminals"]
        .as_array()
        .context("no upgrade ran")?;
    println!(
        "| store upgrade, 3 terminals, {} MiB release, whole run | {} |",
        args.large_mib,
        ms(total)
    );
    for t in terminals {
        let stopped = t["stopped_ms"].as_i64().context("no stop time")?;
        println!(
            "| terminal {} main program stopped | {stopped} ms ({}) |",
            t["number"],
            t["result"].as_str().unwrap_or("?")
        );
    }
    println!(
        "\nMedians of {} runs where repeated; figures depend on the disk and the build profile.",
        args.runs
    );
    Ok(())
}
