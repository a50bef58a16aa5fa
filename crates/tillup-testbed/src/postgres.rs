//! A throwaway PostgreSQL server.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, io, tail};

/// How long PostgreSQL is given to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A PostgreSQL server in a temporary folder, listening only on a Unix
/// socket in that folder (no TCP port, so nothing else can reach it and
/// two of them never collide). Stopped when dropped.
#[derive(Debug)]
pub struct Postgres {
    child: Child,
    dir: tempfile::TempDir,
}

/// The user that runs PostgreSQL when the tests run as root (initdb
/// refuses root): the `postgres` account Debian's package creates.
fn unprivileged() -> Result<Option<(u32, u32)>, Error> {
    let meta = std::fs::metadata("/proc/self").map_err(io("reading /proc/self"))?;
    if std::os::unix::fs::MetadataExt::uid(&meta) != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io("reading /etc/passwd"))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .ok_or(Error::Missing {
            what: "the `postgres` user",
            looked: "/etc/passwd".into(),
        })
}

/// The folder of PostgreSQL's server programs (`initdb`, `postgres`):
/// `$TILLUP_PG_BIN`, Debian's newest `/usr/lib/postgresql/N/bin`, or `PATH`.
fn bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("TILLUP_PG_BIN") {
        return Ok(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.join("initdb").exists());
    on_path.ok_or(Error::Missing {
        what: "PostgreSQL",
        looked: "$TILLUP_PG_BIN, /usr/lib/postgresql/*/bin, PATH".into(),
    })
}

impl Postgres {
    /// Creates a cluster and starts it. `durable` keeps PostgreSQL's
    /// fsync (for benchmarks); tests pass `false`.
    pub fn start(durable: bool) -> Result<Self, Error> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("tillup-pg-")
            .tempdir()
            .map_err(io("making a temporary folder"))?;
        let user = unprivileged()?;
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        if let Some((uid, gid)) = user {
            chown(dir.path(), uid, gid)?;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                .map_err(io("securing the PostgreSQL folder"))?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "--auth=trust",
                "--username=tillup",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("--pgdata")
            .arg(&data);
        as_user(&mut initdb, user);
        let out = initdb.output().map_err(io("running initdb"))?;
        if !out.status.success() {
            return Err(Error::Command {
                command: "initdb".into(),
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let log_file = std::fs::File::create(&log).map_err(io("creating the PostgreSQL log"))?;
        if let Some((uid, gid)) = user {
            chown(&log, uid, gid)?;
        }
        let mut server = Command::new(bin.join("postgres"));
        server.arg("-D").arg(&data).arg("-k").arg(dir.path()).args([
            "-c",
            "listen_addresses=",
            "-c",
            "max_connections=200",
        ]);
        if !durable {
            server.args(["-c", "fsync=off", "-c", "synchronous_commit=off"]);
        }
        as_user(&mut server, user);
        let child = server
            .stdin(Stdio::null())
            .stdout(
                log_file
                    .try_clone()
                    .map_err(io("opening the PostgreSQL log"))?,
            )
            .stderr(log_file)
            .spawn()
            .map_err(io("starting postgres"))?;
        let pg = Self { child, dir };
        pg.wait_ready(&bin, user, &log)?;
        Ok(pg)
    }

    fn wait_ready(&self, bin: &Path, user: Option<(u32, u32)>, log: &PathBuf) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            let mut ready = Command::new(bin.join("pg_isready"));
            ready
                .arg("-h")
                .arg(self.dir.path())
                .args(["-U", "tillup", "-d", "postgres", "-q"]);
            as_user(&mut ready, user);
            if ready.status().is_ok_and(|s| s.success()) {
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                return Err(Error::NotReady {
                    what: "PostgreSQL",
                    seconds: READY_WITHIN.as_secs(),
                    log: tail(log, 2000),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URL of a new, empty database `name` on this server.
    pub fn database(&self, name: &str) -> Result<String, Error> {
        let mut psql = Command::new(bin_dir()?.join("psql"));
        psql.arg("-h")
            .arg(self.dir.path())
            .args([
                "-U",
                "tillup",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
            ])
            .arg(format!("CREATE DATABASE \"{name}\""));
        let out = psql.output().map_err(io("running psql"))?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("CREATE DATABASE {name}"),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(self.url(name))
    }

    /// The URL of database `name` (a `postgres://` URL naming the socket
    /// folder as its host).
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://tillup@localhost/{name}?host={}",
            self.dir.path().display()
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGKILL: the backends notice their postmaster is gone and exit;
        // the cluster is thrown away with its folder.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(format!(
        "giving {} to the postgres user",
        path.display()
    )))
}
