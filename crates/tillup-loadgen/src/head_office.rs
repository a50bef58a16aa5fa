//! The head office of a load run: the release folders, a fresh data folder
//! (and PostgreSQL database), the releases published and the stores added
//! with the real `tillup-server` command line and library, and one or more
//! real `tillup-server serve` processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jiff::Timestamp;
use tillup_core::manifest::Manifest;
use tillup_e2e::realistic::{self, Shape};
use tillup_e2e::{PRESERVE, Proc, bin, run, spawn_listening, text};
use tillup_server::Location;

/// The versions a run publishes: stores run the first and upgrade to the second.
pub const FROM: &str = "1.0.0";
/// The release stores upgrade to.
pub const TO: &str = "1.1.0";

/// The database the servers share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Database {
    /// The embedded default: a SQLite file in the data folder.
    Sqlite,
    /// A throwaway PostgreSQL server started for the run (fsync on).
    Postgres,
}

/// The release's shape.
#[derive(Clone, Copy, Debug)]
pub struct ReleaseShape {
    /// The program folder's size.
    pub folder_bytes: u64,
    /// Its files.
    pub files: usize,
    /// The share of its bytes the next release changes.
    pub changed_share: f64,
}

/// A prepared head office with its servers running.
pub struct HeadOffice {
    /// The servers' base URLs.
    pub urls: Vec<String>,
    /// The stores: id and token.
    pub stores: Vec<(String, String)>,
    /// The manifest of [`FROM`], which every store's terminals run.
    pub from: Manifest,
    /// The manifest of [`TO`].
    pub to: Manifest,
    /// How long publishing and adding the stores took.
    pub setup: Duration,
    servers: Vec<Proc>,
    _postgres: Option<tillup_testbed::Postgres>,
    _data: tempfile::TempDir,
}

impl HeadOffice {
    /// Makes (or reuses) the release folders under `work`, then a fresh
    /// head office with `stores` stores and `servers` servers.
    pub fn prepare(
        work: &Path,
        shape: ReleaseShape,
        database: Database,
        stores: usize,
        servers: usize,
    ) -> Result<Self> {
        let started = Instant::now();
        let (from_dir, to_dir) = release_folders(work, shape)?;
        let data = tempfile::Builder::new()
            .prefix("head-office-")
            .tempdir_in(work)
            .context("making the data folder")?;
        let postgres = match database {
            Database::Sqlite => None,
            Database::Postgres => Some(tillup_testbed::Postgres::start(true)?),
        };
        let database_arg = match &postgres {
            Some(pg) => pg.database("tillup")?,
            None => data.path().join("tillup.db").display().to_string(),
        };
        let cli = |args: &[&str]| -> Result<String> {
            let mut cmd = Command::new(bin("tillup-server")?);
            cmd.arg("--data")
                .arg(data.path())
                .arg("--database")
                .arg(&database_arg)
                .args(args);
            let out = run(cmd, Duration::from_secs(600))?;
            if !out.status.success() {
                bail!("tillup-server {args:?} failed: {}", text(&out));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        cli(&["keygen"])?;
        for (dir, version) in [(&from_dir, FROM), (&to_dir, TO)] {
            let mut args = vec![
                "publish".to_owned(),
                dir.display().to_string(),
                "--version".into(),
                version.into(),
            ];
            for p in PRESERVE {
                args.extend(["--preserve".into(), (*p).into()]);
            }
            cli(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        // Thousands of stores: through the library the command line uses,
        // one transaction each, as `store add` would.
        let db = Location::parse(&database_arg).open()?;
        let now = Timestamp::now();
        let stores = (0..stores)
            .map(|i| {
                let id = format!("store-{i:05}");
                let token = tillup_server::ops::add_store(&*db, &id, now)?;
                Ok((id, token))
            })
            .collect::<Result<Vec<_>>>()?;
        drop(db);
        let setup = started.elapsed();

        let mut procs = Vec::new();
        for n in 0..servers {
            let mut cmd = Command::new(bin("tillup-server")?);
            cmd.arg("--data")
                .arg(data.path())
                .arg("--database")
                .arg(&database_arg)
                .args(["serve", "--listen", "127.0.0.1:0"])
                .env("RUST_LOG", "warn");
            procs.push(spawn_listening(
                cmd,
                &data.path().join(format!("serve-{n}.log")),
            )?);
        }
        let scan = |dir: &Path| {
            tillup_fs::scan_folder(dir, &mut tillup_fs::HashCache::default())
                .with_context(|| format!("scanning {}", dir.display()))
        };
        Ok(Self {
            urls: procs.iter().map(|p| p.url.clone()).collect(),
            stores,
            from: scan(&from_dir)?,
            to: scan(&to_dir)?,
            setup,
            servers: procs,
            _postgres: postgres,
            _data: data,
        })
    }

    /// Whether every server still runs.
    pub fn servers_alive(&mut self) -> bool {
        self.servers.iter_mut().all(|p| !p.exited())
    }
}

/// The release folders of [`FROM`] and [`TO`] under `work`, made once per
/// shape and reused by later runs.
fn release_folders(work: &Path, shape: ReleaseShape) -> Result<(PathBuf, PathBuf)> {
    let name = format!(
        "releases-{}B-{}f-{}",
        shape.folder_bytes, shape.files, shape.changed_share
    );
    let root = work.join(name);
    let (from, to) = (root.join(FROM), root.join(TO));
    let done = root.join("complete");
    if !done.exists() {
        if root.exists() {
            std::fs::remove_dir_all(&root).context("removing a half-made release")?;
        }
        realistic::generate(
            &from,
            &Shape {
                folder_bytes: shape.folder_bytes,
                files: shape.files,
                seed: 1,
            },
        )?;
        realistic::next_release(&from, &to, shape.changed_share, 2)?;
        std::fs::write(&done, b"").context("marking the releases complete")?;
    }
    Ok((from, to))
}
