//! How a tillup program replaces its own executable (the listener and the
//! agent do it the same way; the decisions are
//! [`tillup_core::selfupdate`]'s).
//!
//! [`Replacer::stage`] copies the new executable, checked against its
//! signed hash, beside the running one. [`Replacer::install`] keeps the
//! running executable as `<exe>.previous` (a hard link: nothing is
//! copied), records the trial, renames the new one over it (one atomic
//! rename: the path always names a whole executable), and runs it once
//! with [`SELF_CHECK`]; if that fails it puts the kept one back. The
//! program then restarts on the new executable ([`restart`]), which finds
//! the trial at start-up ([`Replacer::at_start`]) and confirms it once
//! healthy ([`Replacer::confirm`]); a program that starts again without a
//! confirmation goes back to the kept executable.
//!
//! Programs that must change together (the host's listener, tray and
//! window: [`Program::HOST`]) are
//! one replacer: its executable is the one the process restarts on, its
//! companions the others in the same folder, and every step (keep, swap,
//! probe, go back, confirm) covers all of them under one trial record.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use semver::Version;
use serde::{Deserialize, Serialize};

use tillup_core::FileEntry;
use tillup_core::selfupdate::{OnStart, Program, SELF_CHECK, Trial, TrialPhase, on_start};
use tillup_fs::{IoContext, fsync_dir, remove_file_if_exists, write_json_atomic};

/// How long a probe of a new executable may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong replacing an executable.
#[derive(Debug, thiserror::Error)]
pub enum SelfUpdateError {
    #[error(transparent)]
    Fs(#[from] tillup_fs::Error),
    #[error("tillup does not update itself on this system yet: install the new release by hand")]
    Unsupported,
    #[error(
        "the new {program} ({version}) did not pass its self-check ({why}); the previous executable was put back and nothing else changed"
    )]
    Probe {
        program: String,
        version: semver::Version,
        why: String,
    },
}

/// A release of tillup kept on a replacer's executables: its version,
/// and each file's size and modification time when it was kept, so that a
/// file replaced by other means (a package, a hand) is not taken for it.
/// (A record from before companions existed holds no files: the
/// executable then counts as its build, and the next update swaps again.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub version: Version,
    /// By file name.
    #[serde(default)]
    files: BTreeMap<String, Stamp>,
}

/// A file's size and modification time (seconds, nanoseconds): what
/// tells a replaced executable from the one that was there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    size: u64,
    modified: (u64, u32),
}

/// One program's executable (with the companions replaced along with it)
/// and its trial record.
#[derive(Clone, Debug)]
pub struct Replacer {
    exe: PathBuf,
    companions: Vec<PathBuf>,
    record: PathBuf,
}

/// An executable to swap in, and the arguments its probe runs it with
/// (it must exit 0).
#[derive(Clone, Debug)]
pub struct Part {
    pub exe: PathBuf,
    pub probe: Vec<OsString>,
}

impl Replacer {
    /// The executable at `exe`, with its trial recorded in `state_dir`.
    pub fn new(exe: PathBuf, state_dir: &Path) -> Self {
        Self {
            exe,
            companions: Vec::new(),
            record: state_dir.join("self-update.json"),
        }
    }

    /// The same, replaced together with `programs` installed in the
    /// executable's folder (its own name among them is skipped).
    pub fn with_companions(mut self, programs: &[Program]) -> Self {
        let own = self.exe.file_name().map(|n| n.to_owned());
        self.companions = programs
            .iter()
            .map(|p| self.folder().join(p.file_name()))
            .filter(|p| p.file_name().map(|n| n.to_owned()) != own)
            .collect();
        self
    }

    /// The running executable ([`this_exe`]).
    pub fn this_process(state_dir: &Path) -> Result<Self, SelfUpdateError> {
        Ok(Self::new(this_exe()?, state_dir))
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// The executable and its companions.
    fn group(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.exe.as_path()).chain(self.companions.iter().map(PathBuf::as_path))
    }

    /// The executable and its installed companions as they are now, as
    /// release `version`.
    pub fn kept_as(&self, version: Version) -> Result<Kept, SelfUpdateError> {
        let mut files = BTreeMap::new();
        for exe in self.group().filter(|p| p.is_file()) {
            files.insert(file_name(exe), stamp(exe)?);
        }
        Ok(Kept { version, files })
    }

    /// The release this executable is: the trial's when it runs on trial,
    /// else `kept` while it still describes the file, else `build` (the
    /// version it was built as).
    pub fn running(&self, kept: Option<&Kept>, build: &Version) -> Version {
        if let Ok(Some(t)) = self.trial()
            && t.phase == TrialPhase::Started
        {
            return t.to;
        }
        match kept {
            Some(k)
                if k.files
                    .get(&file_name(&self.exe))
                    .is_some_and(|was| stamp(&self.exe).is_ok_and(|now| now == *was)) =>
            {
                k.version.clone()
            }
            _ => build.clone(),
        }
    }

    /// Where the executable it replaced is kept while the new one is on trial.
    pub fn kept(&self) -> PathBuf {
        kept(&self.exe)
    }

    /// The trial in progress, if any. A damaged record (only a hand can
    /// make one) is set aside with a warning: the executable in place is
    /// then the one that runs.
    pub fn trial(&self) -> Result<Option<Trial>, SelfUpdateError> {
        let bytes = match std::fs::read(&self.record) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(tillup_fs::Error::Io {
                    path: self.record.clone(),
                    source: e,
                }
                .into());
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(trial) => Ok(Some(trial)),
            Err(e) => {
                let aside = suffixed(&self.record, ".unreadable");
                tracing::warn!(
                    "{} is damaged ({e}): moved to {}; the executable in place runs",
                    self.record.display(),
                    aside.display()
                );
                std::fs::rename(&self.record, &aside).at(&self.record)?;
                Ok(None)
            }
        }
    }

    /// At start-up: carries out [`on_start`]'s decision on the recorded
    /// trial. On [`OnStart::GoBack`] the kept executable is back in place
    /// and the caller must [`restart`] on it.
    pub fn at_start(&self) -> Result<OnStart, SelfUpdateError> {
        let decision = on_start(self.trial()?.as_ref());
        match &decision {
            OnStart::Run => {}
            OnStart::RunOnTrial(next) => write_json_atomic(&self.record, next)?,
            OnStart::GoBack(trial) => {
                tracing::warn!(
                    "{} {} started without being confirmed healthy: going back to {}",
                    trial.program.file_name(),
                    trial.to,
                    trial.from
                );
                // A program that cannot go back still runs: better the new
                // executable than none.
                if let Err(e) = self.go_back() {
                    tracing::error!("could not go back ({e}): running on");
                    return Ok(OnStart::Run);
                }
            }
        }
        Ok(decision)
    }

    /// Copies the blob at `blob` to beside `target` (the executable or a
    /// companion), checking it against `entry` (its signed size and hash)
    /// and giving it `target`'s permissions (not the process's umask).
    pub fn stage(
        &self,
        target: &Path,
        blob: &Path,
        entry: &FileEntry,
    ) -> Result<(), SelfUpdateError> {
        let incoming = incoming(target);
        remove_file_if_exists(&incoming)?;
        let entry = FileEntry {
            exec: true,
            ..entry.clone()
        };
        tillup_fs::copy_verified(blob, &incoming, &entry)?;
        let mode = std::fs::metadata(target).at(target)?.permissions();
        std::fs::set_permissions(&incoming, mode).at(&incoming)?;
        Ok(())
    }

    /// Swaps the staged `parts` (the executable, companions, or both) in,
    /// keeping the executables they replace, probes each, and records them
    /// probed; a failed probe puts every kept one back. `trial` names the
    /// releases.
    pub fn install(&self, trial: &Trial, parts: &[Part]) -> Result<(), SelfUpdateError> {
        debug_assert!(
            parts.iter().all(|p| self.group().any(|g| g == p.exe)),
            "only the replacer's own executables are swapped"
        );
        // Windows refuses a rename over a running executable: the running
        // one would have to be renamed away first. Not built here.
        if cfg!(windows) {
            return Err(SelfUpdateError::Unsupported);
        }
        // Every old executable is kept before the first is replaced.
        for exe in self.group() {
            remove_file_if_exists(&kept(exe))?;
        }
        for part in parts {
            let kept = kept(&part.exe);
            if std::fs::hard_link(&part.exe, &kept).is_err() {
                std::fs::copy(&part.exe, &kept)
                    .and_then(|_| std::fs::File::open(&kept)?.sync_all())
                    .at(&kept)?;
            }
        }
        write_json_atomic(
            &self.record,
            &Trial {
                phase: TrialPhase::Swapped,
                ..trial.clone()
            },
        )?;
        for part in parts {
            if let Err(e) = std::fs::rename(incoming(&part.exe), &part.exe) {
                self.go_back()?;
                return Err(tillup_fs::Error::Io {
                    path: part.exe.clone(),
                    source: e,
                }
                .into());
            }
        }
        fsync_dir(self.folder())?;
        tillup_fs::fault::crash_point("selfupdate.swapped");
        for part in parts {
            if let Err(why) = probe(&part.exe, &part.probe) {
                self.go_back()?;
                return Err(SelfUpdateError::Probe {
                    program: file_name(&part.exe),
                    version: trial.to.clone(),
                    why,
                });
            }
        }
        write_json_atomic(
            &self.record,
            &Trial {
                phase: TrialPhase::Probed,
                ..trial.clone()
            },
        )?;
        Ok(())
    }

    /// The new executables are healthy: forget the trial and the kept ones.
    pub fn confirm(&self) -> Result<(), SelfUpdateError> {
        remove_file_if_exists(&self.record)?;
        fsync_dir(self.record.parent().unwrap_or(Path::new(".")))?;
        for exe in self.group() {
            remove_file_if_exists(&kept(exe))?;
        }
        Ok(())
    }

    /// Puts every kept executable back (those there are) and forgets the
    /// trial. Safe to repeat.
    pub fn go_back(&self) -> Result<(), SelfUpdateError> {
        for exe in self.group() {
            let kept = kept(exe);
            if kept.exists() {
                std::fs::rename(&kept, exe).at(exe)?;
            }
        }
        fsync_dir(self.folder())?;
        remove_file_if_exists(&self.record)?;
        Ok(())
    }

    fn folder(&self) -> &Path {
        self.exe.parent().unwrap_or(Path::new("."))
    }
}

/// The version this program was built as (the workspace's).
pub fn build_version() -> Version {
    Version::parse(env!("CARGO_PKG_VERSION")).expect("the build's version is semver")
}

/// The path the running program was started from, as it was at the first
/// call: once a swap renamed another file over it, the system names the
/// running one as deleted. Programs that update themselves ask at start-up.
pub fn this_exe() -> Result<PathBuf, SelfUpdateError> {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(exe) = EXE.get() {
        return Ok(exe.clone());
    }
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .at(Path::new("the running executable"))?;
    Ok(EXE.get_or_init(|| exe).clone())
}

/// Restarts the running program on the executable now at `exe`, with the
/// arguments it was started with. Returns only on failure.
#[cfg(unix)]
pub fn restart(exe: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    tracing::info!("restarting on {}", exe.display());
    Command::new(exe).args(args).exec()
}

/// Restarts the running program on the executable now at `exe`: a new
/// process with the same arguments, then this one exits.
#[cfg(windows)]
pub fn restart(exe: &Path) -> std::io::Error {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match Command::new(exe).args(args).spawn() {
        Ok(_) => std::process::exit(0),
        Err(e) => e,
    }
}

/// Runs `exe args…` to its end within [`PROBE_TIMEOUT`]: `Ok` if it
/// exits 0, else what it said.
fn probe(exe: &Path, args: &[OsString]) -> Result<(), String> {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("it does not start: {e}"))?;
    let stderr = child.stderr.take();
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut s) = stderr {
            let _ = std::io::Read::read_to_string(
                &mut std::io::Read::take(&mut s, 64 * 1024),
                &mut text,
            );
        }
        text
    });
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {PROBE_TIMEOUT:?}"));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let said = said.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let last = said.trim().lines().last().unwrap_or("").trim();
    Err(if last.is_empty() {
        format!("it exited with {status}")
    } else {
        format!("it exited with {status}: {last}")
    })
}

/// The arguments of a program's self-check probe: [`SELF_CHECK`], then `args`.
pub fn self_check_probe(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    std::iter::once(OsString::from(SELF_CHECK))
        .chain(args)
        .collect()
}

/// Where `exe` is kept while its replacement is on trial.
fn kept(exe: &Path) -> PathBuf {
    suffixed(exe, ".previous")
}

/// Where `exe`'s replacement is staged.
fn incoming(exe: &Path) -> PathBuf {
    suffixed(exe, ".new")
}

fn file_name(exe: &Path) -> String {
    exe.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The stamp of the file at `exe` now.
pub fn stamp(exe: &Path) -> Result<Stamp, SelfUpdateError> {
    let meta = std::fs::metadata(exe).at(exe)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
    Ok(Stamp {
        size: meta.len(),
        modified,
    })
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tillup_core::Sha256Hex;
    use tillup_core::selfupdate::Program;

    fn script(path: &Path, body: &str) {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn entry(path: &Path) -> FileEntry {
        let bytes = std::fs::read(path).unwrap();
        FileEntry {
            path: tillup_core::RelPath::new("tillup").unwrap(),
            size: bytes.len() as u64,
            sha256: Sha256Hex::of(&bytes),
            exec: true,
        }
    }

    fn trial() -> Trial {
        Trial {
            program: Program::Listener,
            from: "0.1.0".parse().unwrap(),
            to: "0.2.0".parse().unwrap(),
            phase: TrialPhase::Swapped,
        }
    }

    /// The replacer's own executable, probed with its self-check.
    fn own(r: &Replacer) -> Vec<Part> {
        vec![Part {
            exe: r.exe().to_owned(),
            probe: self_check_probe([]),
        }]
    }

    fn setup(new_body: &str) -> (tempfile::TempDir, Replacer, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tillup");
        script(&exe, "echo A");
        let blob = dir.path().join("blob");
        script(&blob, new_body);
        let r = Replacer::new(exe, dir.path());
        (dir, r, blob)
    }

    #[test]
    fn a_healthy_executable_is_swapped_in_probed_and_confirmed() {
        let (_dir, r, blob) = setup("[ \"$1\" = self-check ] && exit 0; echo B");
        r.stage(r.exe(), &blob, &entry(&blob)).unwrap();
        r.install(&trial(), &own(&r)).unwrap();
        assert_eq!(
            std::fs::read(r.exe()).unwrap(),
            std::fs::read(&blob).unwrap()
        );
        assert_eq!(r.trial().unwrap().unwrap().phase, TrialPhase::Probed);
        // The restart finds it probed, runs it on trial, confirms it.
        assert!(matches!(r.at_start().unwrap(), OnStart::RunOnTrial(_)));
        let build = semver::Version::new(0, 1, 0);
        assert_eq!(r.running(None, &build), semver::Version::new(0, 2, 0));
        let kept = r.kept_as(semver::Version::new(0, 2, 0)).unwrap();
        r.confirm().unwrap();
        assert_eq!(
            r.running(Some(&kept), &build),
            semver::Version::new(0, 2, 0)
        );
        // Replaced by other means, it is its build again.
        std::thread::sleep(std::time::Duration::from_millis(10));
        script(r.exe(), "echo by hand");
        assert_eq!(r.running(Some(&kept), &build), build);
        assert!(r.trial().unwrap().is_none());
        assert!(!r.kept().exists());
        assert!(matches!(r.at_start().unwrap(), OnStart::Run));
    }

    #[test]
    fn an_executable_that_fails_its_probe_is_replaced_by_the_old_one() {
        let (_dir, r, blob) = setup("echo 'cannot open the data folder' >&2; exit 3");
        let old = std::fs::read(r.exe()).unwrap();
        r.stage(r.exe(), &blob, &entry(&blob)).unwrap();
        let err = r.install(&trial(), &own(&r)).unwrap_err();
        assert!(
            err.to_string().contains("cannot open the data folder"),
            "{err}"
        );
        assert_eq!(std::fs::read(r.exe()).unwrap(), old);
        assert!(r.trial().unwrap().is_none());
    }

    #[test]
    fn a_second_start_without_confirmation_goes_back() {
        let (_dir, r, blob) = setup("exit 0");
        let old = std::fs::read(r.exe()).unwrap();
        r.stage(r.exe(), &blob, &entry(&blob)).unwrap();
        r.install(&trial(), &own(&r)).unwrap();
        assert!(matches!(r.at_start().unwrap(), OnStart::RunOnTrial(_)));
        // It died before confirming; the next start goes back.
        assert!(matches!(r.at_start().unwrap(), OnStart::GoBack(_)));
        assert_eq!(std::fs::read(r.exe()).unwrap(), old);
        assert!(r.trial().unwrap().is_none());
    }

    #[test]
    fn a_staged_file_that_is_not_the_signed_one_is_refused() {
        let (_dir, r, blob) = setup("exit 0");
        let mut e = entry(&blob);
        e.sha256 = Sha256Hex::of(b"something else");
        assert!(r.stage(r.exe(), &blob, &e).is_err());
        assert!(!incoming(r.exe()).exists());
    }

    #[test]
    fn companions_are_swapped_kept_and_put_back_together() {
        let (dir, r, blob) = setup("exit 0");
        let window = dir.path().join("tillup-window");
        script(&window, "echo window A");
        let r = r.with_companions(&Program::HOST);
        let (old_exe, old_window) = (
            std::fs::read(r.exe()).unwrap(),
            std::fs::read(&window).unwrap(),
        );
        // The window's new build does not start: both go back.
        let bad = dir.path().join("bad-window");
        script(&bad, "echo 'no display library' >&2; exit 127");
        r.stage(r.exe(), &blob, &entry(&blob)).unwrap();
        r.stage(&window, &bad, &entry(&bad)).unwrap();
        let mut parts = own(&r);
        parts.push(Part {
            exe: window.clone(),
            probe: vec!["--version".into()],
        });
        let err = r.install(&trial(), &parts).unwrap_err();
        assert!(err.to_string().contains("tillup-window"), "{err}");
        assert!(err.to_string().contains("no display library"), "{err}");
        assert_eq!(std::fs::read(r.exe()).unwrap(), old_exe);
        assert_eq!(std::fs::read(&window).unwrap(), old_window);
        assert!(r.trial().unwrap().is_none());

        // A good window: both swap in; cut before the probe passed (the
        // record says swapped), the next start puts both back.
        let good = dir.path().join("good-window");
        script(&good, "exit 0");
        r.stage(r.exe(), &blob, &entry(&blob)).unwrap();
        r.stage(&window, &good, &entry(&good)).unwrap();
        r.install(&trial(), &parts).unwrap();
        assert_eq!(
            std::fs::read(&window).unwrap(),
            std::fs::read(&good).unwrap()
        );
        let both = r.kept_as(semver::Version::new(0, 2, 0)).unwrap();
        assert_eq!(both.files.len(), 2, "{both:?}");
        write_json_atomic(&r.record, &trial()).unwrap();
        assert!(matches!(r.at_start().unwrap(), OnStart::GoBack(_)));
        assert_eq!(std::fs::read(r.exe()).unwrap(), old_exe);
        assert_eq!(std::fs::read(&window).unwrap(), old_window);
        assert!(!kept(&window).exists());
    }
}
