//! The JSON bodies that travel between the three programs.
//!
//! Routes are listed here too, so that the server, the agent and the
//! listener cannot disagree about them.

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::hash::Sha256Hex;
pub use crate::install::SignedLog;
use crate::manifest::{Manifest, ManifestChanges};

/// Header carrying the base64 of the log's `.minisig` text, so the log and
/// its signature arrive in one response.
pub const SIGNATURE_HEADER: &str = "x-tillup-signature";

/// Header of a `409` to a pack upload: a blob of the pack resumed at
/// another byte than the bytes the receiver holds of it, given here. The
/// sender asks `blobs/missing` (whose answer has `held`) and sends again.
pub const PARTIAL_HEADER: &str = "x-tillup-partial";

/// Header on every request of the host to an agent: the host–agent
/// protocol the request speaks (see [`Protocols`]). An agent takes a
/// request without it as protocol 1, from a host older than the header.
pub const PROTOCOL_HEADER: &str = "x-tillup-protocol";

/// The host–agent protocols a program speaks, oldest to newest. A host and
/// its agents may run different tillup versions for a while (tillup
/// upgrades its agents one terminal at a time): the number grows when a
/// change breaks what a peer of the previous one understands, and each
/// side keeps speaking the older ones for as long as it says so here. The
/// agent says what it speaks in its status, which it answers whatever the
/// request speaks; the host sends the newest both speak, and each side
/// refuses, naming both ranges, a peer it shares none with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Protocols {
    #[schema(maximum = 4294967295_u64)]
    pub oldest: u32,
    #[schema(maximum = 4294967295_u64)]
    pub newest: u32,
}

impl Protocols {
    /// What this build of tillup speaks.
    pub const THIS: Protocols = Protocols {
        oldest: 1,
        newest: 1,
    };

    /// What an agent older than the protocol number speaks.
    pub const fn first() -> Self {
        Protocols {
            oldest: 1,
            newest: 1,
        }
    }

    pub fn speaks(&self, p: u32) -> bool {
        (self.oldest..=self.newest).contains(&p)
    }

    /// The newest protocol both speak, if any.
    pub fn common(&self, other: &Protocols) -> Option<u32> {
        let p = self.newest.min(other.newest);
        (self.speaks(p) && other.speaks(p)).then_some(p)
    }
}

impl std::fmt::Display for Protocols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.oldest == self.newest {
            write!(f, "{}", self.oldest)
        } else {
            write!(f, "{} to {}", self.oldest, self.newest)
        }
    }
}

/// Routes of `tillup-server`. Every one takes `Authorization: Bearer <store token>`.
pub mod server {
    /// `GET /v1/log/{channel}`: the log; ETag and `If-None-Match`.
    pub const LOG: &str = "/v1/log/{channel}";
    /// `GET /v1/log/{channel}/minisig`: the detached signature, for `minisign -V`.
    pub const LOG_SIGNATURE: &str = "/v1/log/{channel}/minisig";
    /// `GET /v1/keys`: the [`crate::keys::KeyChain`] saying which keys sign logs.
    pub const KEYS: &str = "/v1/keys";
    /// `GET /v1/blobs/{sha256}` (Range): one blob as it is, the store's own
    /// or a release's; content-addressed, so a CDN may cache it for ever.
    pub const BLOB: &str = "/v1/blobs/{sha256}";
    /// `POST /v1/blobs/missing`: [`super::HashList`] in, [`super::HashList`] out.
    pub const BLOBS_MISSING: &str = "/v1/blobs/missing";
    /// `POST`: [`super::PackRequest`] in, a pack of those blobs out;
    /// `PUT`: a pack in, [`super::PackReceipt`] out.
    pub const PACK: &str = "/v1/pack";
    /// `PUT`: [`super::Backup`]; `PATCH`: [`super::BackupChanges`].
    pub const BACKUP: &str = "/v1/stores/{store}/upgrades/{upgrade}/backup";
    /// `POST`: [`super::ProcessRequest`] in, [`super::Delivery`] out, or
    /// [`super::DeliveryDigests`] when it asks for digests.
    pub const PROCESS: &str = "/v1/stores/{store}/upgrades/{upgrade}/process";
    /// `POST`: a store report (JSON object).
    pub const REPORT: &str = "/v1/stores/{store}/reports";
}

/// Routes of `tillup-server` for head office's people (the dashboard and
/// the admin API): a session cookie ([`admin::SESSION_COOKIE`]), and on
/// every unsafe request the session's CSRF token in [`admin::CSRF_HEADER`].
pub mod admin {
    /// `POST`: [`SignIn`] in, the session (name, role, CSRF token) out,
    /// with its cookie; `DELETE`: signs out.
    pub const SESSION: &str = "/v1/admin/session";
    /// `GET`: who is signed in (name, role, CSRF token).
    pub const ME: &str = "/v1/admin/me";
    /// `GET [?silent_hours=N]`: the fleet overview (versions, stores, their
    /// terminals, failures, stores silent for more than N hours, 24 by default).
    pub const FLEET: &str = "/v1/admin/fleet";
    /// `GET ?limit=N`: the audit trail, newest first.
    pub const AUDIT: &str = "/v1/admin/audit";
    /// `GET`: every channel's releases; `POST ?channel=C&version=V[&notes_en=…]
    /// [&notes_zh=…][&critical=true][&min_from=V][&model=M…][&preserve=GLOB…]
    /// [&store=S…][&held=true][&replace=true]` with a release folder's `.zip` as the body:
    /// publishes it, as `tillup-server publish` does (releasers).
    pub const RELEASES: &str = "/v1/admin/releases";
    /// `GET`: one release: its files changed against the one before it,
    /// the stores running it, its rollouts.
    pub const RELEASE: &str = "/v1/admin/releases/{channel}/{version}";
    /// `GET`: one store: its channels, terminals and upgrade history.
    pub const STORE: &str = "/v1/admin/stores/{id}";
    /// `POST`: `rotate` its token (the new one is in the answer, once) or
    /// `revoke` it (admins).
    pub const STORE_ACTION: &str = "/v1/admin/stores/{id}/{action}";
    /// `PUT` [`StoreLabels`]: replaces a store's labels, which rollouts
    /// choose stores by (admins).
    pub const STORE_LABELS: &str = "/v1/admin/stores/{id}/labels";
    /// `GET`: every rollout, newest first; `POST` [`StartRollout`]:
    /// starts one (releasers).
    pub const ROLLOUTS: &str = "/v1/admin/rollouts";
    /// `GET`: one rollout and what its stores reported.
    pub const ROLLOUT: &str = "/v1/admin/rollouts/{id}";
    /// `POST`: `approve`, `pause`, `resume`, `advance` or `abort` it (releasers).
    pub const ROLLOUT_ACTION: &str = "/v1/admin/rollouts/{id}/{action}";

    /// A rollout to start.
    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StartRollout {
        pub channel: String,
        pub version: semver::Version,
        pub plan: crate::rollout::Plan,
    }
    /// A store's labels, all of them.
    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StoreLabels {
        pub labels: Vec<String>,
    }
    /// The session cookie's name.
    pub const SESSION_COOKIE: &str = "tillup_session";
    /// The header carrying the session's CSRF token.
    pub const CSRF_HEADER: &str = "x-csrf-token";

    /// A sign-in.
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SignIn {
        pub name: String,
        pub password: String,
    }

    impl std::fmt::Debug for SignIn {
        /// Never shows the password.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignIn")
                .field("name", &self.name)
                .finish_non_exhaustive()
        }
    }
}

/// Routes of `tillup-agent`. Every one takes `Authorization: Bearer <agent token>`.
pub mod agent {
    pub const STATUS: &str = "/v1/status";
    pub const STOP: &str = "/v1/stop";
    pub const START: &str = "/v1/start";
    pub const SNAPSHOT: &str = "/v1/snapshot";
    /// `GET ?since=DIGEST`: [`super::SnapshotChanges`].
    pub const SNAPSHOT_CHANGES: &str = "/v1/snapshot/changes";
    pub const BLOBS_MISSING: &str = "/v1/blobs/missing";
    /// `POST`: [`super::PackRequest`] in, a pack of files of the folder (or
    /// received) out; `PUT`: a pack in, [`super::PackReceipt`] out.
    pub const PACK: &str = "/v1/pack";
    pub const STAGE: &str = "/v1/stage";
    /// `POST`: [`super::StageChanges`].
    pub const STAGE_CHANGES: &str = "/v1/stage/changes";
    pub const COMMIT: &str = "/v1/commit";
    pub const ROLLBACK: &str = "/v1/rollback";
    pub const HEALTH: &str = "/v1/health";
    /// `POST`: [`super::SelfUpdateRequest`]: the agent replaces its own
    /// executable with the release's, probes it and restarts on it, on trial.
    pub const SELF_UPDATE: &str = "/v1/self-update";
    /// `POST`: [`super::SelfUpdateRequest`]: the release on trial is healthy; keep it.
    pub const SELF_CONFIRM: &str = "/v1/self-update/confirm";
    /// `POST`: [`super::SelfUpdateRequest`]: put the kept executable back and restart on it.
    pub const SELF_ROLLBACK: &str = "/v1/self-update/rollback";
}

/// Fills `{name}` placeholders of a route.
pub fn route(template: &str, params: &[(&str, &str)]) -> String {
    let mut s = template.to_owned();
    for (k, v) in params {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// A list of content hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HashList {
    pub hashes: Vec<Sha256Hex>,
    /// In an answer to `blobs/missing`: of the missing blobs, the bytes the
    /// receiver already holds of a cut upload, where a pack resumes them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub held: std::collections::BTreeMap<Sha256Hex, u64>,
}

impl HashList {
    pub fn new(hashes: Vec<Sha256Hex>) -> Self {
        Self {
            hashes,
            held: Default::default(),
        }
    }
}

/// One blob of a pack: its hash, and the byte it starts from (what the
/// receiver holds already of a cut transfer).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct PackEntry {
    pub sha256: Sha256Hex,
    #[serde(default)]
    pub from: u64,
}

/// `POST` to a `PACK` route: the blobs wanted, in the order to send them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackRequest {
    pub blobs: Vec<PackEntry>,
}

/// The answer to a `PUT` of a pack: the blobs now held whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackReceipt {
    pub received: Vec<Sha256Hex>,
    /// Bytes of files received.
    pub bytes: u64,
}

/// The media type of a pack (`tillup_transfer::pack`).
pub const PACK_MEDIA_TYPE: &str = "application/x-tillup-pack";

/// An error body, as every endpoint of the server and the agent sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// One terminal's folder as collected by the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TerminalBackup {
    #[schema(maximum = 4294967295_u64)]
    pub number: u32,
    pub model: String,
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: Version,
    pub manifest: Manifest,
}

/// The store's backup for one upgrade; its files were sent as blobs first.
///
/// On the wire (see [`BackupWire`]) each distinct file entry is written
/// once and each terminal lists its entries by index: a store's terminals
/// hold mostly the same files, and eight copies of a release's manifest
/// were most of the bytes a backup moved and of the work of reading it.
#[derive(Clone, Debug, PartialEq)]
pub struct Backup {
    pub terminals: Vec<TerminalBackup>,
}

/// A [`Backup`] as it travels and is stored. A terminal gives either
/// `files` (indices into the backup's `files`) or, as hosts before this
/// form sent it, its whole `manifest`.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupWire<'a> {
    /// Every distinct file entry of the backup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<crate::manifest::FileEntry>)]
    pub files: Vec<std::borrow::Cow<'a, crate::manifest::FileEntry>>,
    pub terminals: Vec<TerminalWire<'a>>,
}

/// One terminal of a [`BackupWire`].
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalWire<'a> {
    #[schema(maximum = 4294967295_u64)]
    pub number: u32,
    #[schema(value_type = String)]
    pub model: std::borrow::Cow<'a, str>,
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: std::borrow::Cow<'a, Version>,
    /// Its files, as indices into the backup's `files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<u32>>,
    /// Its files, whole (the older form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
}

impl Serialize for Backup {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use std::borrow::Cow;
        use std::collections::HashMap;
        let mut index: HashMap<&crate::manifest::FileEntry, u32> = HashMap::new();
        let mut files = Vec::new();
        let terminals = self
            .terminals
            .iter()
            .map(|t| TerminalWire {
                number: t.number,
                model: Cow::Borrowed(&t.model),
                version: Cow::Borrowed(&t.version),
                files: Some(
                    t.manifest
                        .files()
                        .iter()
                        .map(|f| {
                            *index.entry(f).or_insert_with(|| {
                                files.push(Cow::Borrowed(f));
                                (files.len() - 1) as u32
                            })
                        })
                        .collect(),
                ),
                manifest: None,
            })
            .collect();
        BackupWire { files, terminals }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Backup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let wire = BackupWire::deserialize(d)?;
        let terminals = wire
            .terminals
            .into_iter()
            .map(|t| {
                let manifest = match (t.files, t.manifest) {
                    (Some(indices), None) => {
                        let files = indices
                            .iter()
                            .map(|&i| {
                                wire.files.get(i as usize).map(|f| f.as_ref().clone()).ok_or_else(
                                    || {
                                        D::Error::custom(format!(
                                            "terminal {} lists file {i}, but the backup has {} files",
                                            t.number,
                                            wire.files.len()
                                        ))
                                    },
                                )
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        Manifest::new(files).map_err(|e| {
                            D::Error::custom(format!("terminal {}: {e}", t.number))
                        })?
                    }
                    (None, Some(manifest)) => manifest,
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(D::Error::custom(format!(
                            "terminal {} must give either `files` or `manifest`",
                            t.number
                        )));
                    }
                };
                Ok(TerminalBackup {
                    number: t.number,
                    model: t.model.into_owned(),
                    version: t.version.into_owned(),
                    manifest,
                })
            })
            .collect::<Result<_, D::Error>>()?;
        Ok(Backup { terminals })
    }
}

impl utoipa::PartialSchema for Backup {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <BackupWire<'static> as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for Backup {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <BackupWire<'static> as utoipa::ToSchema>::schemas(schemas);
    }
}

impl Backup {
    /// The SHA-256 of its JSON: what [`BackupChanges::base`] names.
    pub fn digest(&self) -> Sha256Hex {
        Sha256Hex::of(&serde_json::to_vec(self).expect("a backup always serialises"))
    }
}

/// `PATCH` of a backup: the store's backup after the stop, as changes to
/// the one uploaded while the programs still ran, so that what crosses
/// the WAN while the tills are stopped is what changed. The new backup
/// lists exactly these terminals, in this order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupChanges {
    /// [`Backup::digest`] of the backup the changes apply to.
    pub base: Sha256Hex,
    pub terminals: Vec<TerminalChanges>,
}

/// One terminal's folder, as changes to its folder in the base backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TerminalChanges {
    #[schema(maximum = 4294967295_u64)]
    pub number: u32,
    pub changes: ManifestChanges,
}

/// What the host asks the server to build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessRequest {
    pub channel: String,
    pub terminals: Vec<TerminalTarget>,
    /// What the server answers with; the whole folders by default.
    #[serde(default)]
    pub answer: ProcessAnswer,
    /// Built ahead of the stop, from the backup uploaded before it: the
    /// server keeps the folders to build the ones after the stop from,
    /// and stores and records nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ahead: bool,
}

/// How the server answers a [`ProcessRequest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcessAnswer {
    /// Each terminal's new folder: a [`Delivery`].
    #[default]
    Folders,
    /// Each new folder's manifest digest: [`DeliveryDigests`]. For a host
    /// that computes the same folders to check them, without the whole
    /// manifests crossing the WAN while its tills are stopped.
    Digests,
}

/// The server's result by digest: each terminal's new folder (as the
/// server built and keeps it) named by its manifest's digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryDigests {
    pub terminals: Vec<TerminalDigest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TerminalDigest {
    #[schema(maximum = 4294967295_u64)]
    pub number: u32,
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: Version,
    /// [`Manifest::digest`] of the terminal's new folder.
    pub manifest: Sha256Hex,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TerminalTarget {
    #[schema(maximum = 4294967295_u64)]
    pub number: u32,
    #[schema(value_type = crate::openapi::SemVer)]
    pub target: Version,
}

/// The server's result: each terminal's new folder, in terminal order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub terminals: Vec<TerminalResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TerminalResult {
    #[schema(maximum = 4294967295_u64)]
    pub number: u32,
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: Version,
    pub manifest: Manifest,
}

/// The state of a terminal's main program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MainState {
    Running {
        #[schema(maximum = 4294967295_u64)]
        pid: u32,
    },
    Stopped,
    /// It exited on its own.
    Exited {
        code: Option<i32>,
    },
}

/// `GET /v1/status` of an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentStatus {
    #[schema(maximum = 4294967295_u64)]
    pub terminal: u32,
    pub model: String,
    /// The version the program folder holds, if it can be read.
    #[schema(value_type = Option<crate::openapi::SemVer>)]
    pub version: Option<Version>,
    pub main: MainState,
    pub busy: bool,
    pub free_bytes: u64,
    /// The version staged beside the folder, if any.
    #[schema(value_type = Option<crate::openapi::SemVer>)]
    pub staged: Option<Version>,
    /// The version kept for rollback, if any.
    #[schema(value_type = Option<crate::openapi::SemVer>)]
    pub previous: Option<Version>,
    pub agent_version: String,
    /// The host–agent protocols it speaks; an agent without this field
    /// speaks the first only.
    #[serde(default = "Protocols::first")]
    pub protocols: Protocols,
    /// What the agent did on its own (finished a cut swap, restarted the
    /// main program when the host went silent, rolled back an unhealthy
    /// release), newest last.
    #[serde(default)]
    pub notices: Vec<Notice>,
    /// Whether `agent_version` is a release of tillup on trial (just
    /// installed by `self-update`, not yet confirmed).
    #[serde(default)]
    pub agent_on_trial: bool,
}

/// `POST /v1/self-update` and its confirmation or rollback: a release of
/// tillup's own programs (see [`crate::selfupdate`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SelfUpdateRequest {
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: Version,
    /// The channel of tillup's releases, signed. Only the update itself
    /// needs it.
    #[serde(default)]
    pub release: Option<crate::install::SignedLog>,
}

/// What the agent did with a [`SelfUpdateRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SelfUpdateReport {
    /// The release of tillup-agent it runs, or restarts on.
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: Version,
    /// Whether it restarts now (the host asks its status until it answers).
    pub restarting: bool,
    pub message: String,
}

/// Something the agent did on its own, for the host to report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notice {
    pub at: Timestamp,
    pub message: String,
}

/// `POST /v1/stop`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StopRequest {
    /// Overrides the configured wait while busy.
    #[serde(default)]
    pub busy_timeout_secs: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StopReport {
    pub stopped_at: Timestamp,
    /// How long it waited for a sale to finish.
    pub waited_busy_ms: u64,
    /// Whether it had to kill the main program.
    pub forced: bool,
    pub was_running: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StartReport {
    pub started_at: Timestamp,
    #[schema(maximum = 4294967295_u64)]
    pub pid: u32,
    pub was_running: bool,
}

/// `GET /v1/snapshot`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    #[schema(value_type = Option<crate::openapi::SemVer>)]
    pub version: Option<Version>,
    pub manifest: Manifest,
    /// [`Manifest::digest`] of `manifest`: names this snapshot in a later
    /// `GET /v1/snapshot/changes?since=`. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Sha256Hex>,
}

/// `GET /v1/snapshot/changes?since=…`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotSince {
    pub since: Sha256Hex,
}

/// `GET /v1/snapshot/changes?since=DIGEST`: the folder now, as changes to
/// a recent whole snapshot of the agent's (named by its
/// [`Snapshot::digest`]). Taken while the main program is stopped, what
/// crosses the LAN is what it changed since that snapshot, not the whole
/// folder's manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotChanges {
    #[schema(value_type = Option<crate::openapi::SemVer>)]
    pub version: Option<Version>,
    /// The digest of the snapshot the changes apply to.
    pub since: Sha256Hex,
    pub changes: ManifestChanges,
}

/// `POST /v1/stage`: build the new folder beside the current one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageRequest {
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: Version,
    pub manifest: Manifest,
    /// The signed version log naming `version`; the release's manifest
    /// (named there by its digest) must be among the files the agent holds.
    pub release: SignedLog,
}

/// `POST /v1/stage/changes`: the folder to stage as changes to the one
/// staged already (the release, staged before the stop), so that what
/// crosses the LAN while the till is stopped is what changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageChanges {
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: Version,
    /// [`Manifest::digest`] of the staged folder the changes apply to.
    pub base: Sha256Hex,
    pub changes: ManifestChanges,
    /// [`Manifest::digest`] of the folder they lead to.
    pub result: Sha256Hex,
    /// As in [`StageRequest::release`].
    pub release: SignedLog,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageReport {
    /// Bytes taken from the current folder rather than sent.
    pub reused_bytes: u64,
    pub received_bytes: u64,
}

/// `POST /v1/commit` and `POST /v1/rollback`: idempotent by target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SwapRequest {
    /// The version the folder must hold afterwards.
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: Version,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SwapReport {
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: Version,
    /// False when the folder already held `version` (a repeated call).
    pub swapped: bool,
}

/// `GET /v1/health?version=…`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthQuery {
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: Version,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthReport {
    pub healthy: bool,
    /// The version the running main program reports.
    #[schema(value_type = Option<crate::openapi::SemVer>)]
    pub version: Option<Version>,
    /// The program's own words when it is not healthy.
    pub message: String,
    /// Set when the agent, finding the release it just swapped in
    /// unhealthy, put this version back and started it.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::SemVer>)]
    pub rolled_back_to: Option<Version>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::FileEntry;
    use crate::manifest::tests::entry;

    #[test]
    fn host_and_agent_speak_the_newest_protocol_they_share_or_none() {
        let p = |oldest, newest| Protocols { oldest, newest };
        assert_eq!(p(1, 3).common(&p(2, 5)), Some(3));
        assert_eq!(p(2, 5).common(&p(1, 3)), Some(3));
        assert_eq!(p(1, 1).common(&Protocols::THIS), Some(1));
        assert_eq!(p(1, 2).common(&p(3, 4)), None);
        assert_eq!(p(3, 4).common(&p(1, 2)), None);
        assert_eq!(p(2, 4).to_string(), "2 to 4");
        // An agent from before the field speaks the first protocol.
        let old: AgentStatus = serde_json::from_value(serde_json::json!({
            "terminal": 1, "model": "m", "version": null, "main": {"state": "stopped"},
            "busy": false, "free_bytes": 0, "staged": null, "previous": null,
            "agent_version": "0.1.0"
        }))
        .unwrap();
        assert_eq!(old.protocols, Protocols::first());
    }

    fn store() -> Backup {
        let shared: Vec<FileEntry> = (0..50)
            .map(|i| entry(&format!("lib/file{i}.dll"), &format!("{i}")))
            .collect();
        Backup {
            terminals: (1..=3)
                .map(|number| {
                    let mut files = shared.clone();
                    files.push(entry("data/pos.db", &format!("till {number}")));
                    TerminalBackup {
                        number,
                        model: "POS-1".into(),
                        version: Version::new(1, 0, 0),
                        manifest: Manifest::new(files).unwrap(),
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn a_backup_writes_each_shared_entry_once_and_reads_back_the_same() {
        let backup = store();
        let json = serde_json::to_vec(&backup).unwrap();
        assert_eq!(serde_json::from_slice::<Backup>(&json).unwrap(), backup);
        let wire: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(wire["files"].as_array().unwrap().len(), 50 + 3);
        let whole: usize = backup
            .terminals
            .iter()
            .map(|t| serde_json::to_vec(&t.manifest).unwrap().len())
            .sum();
        assert!(json.len() * 2 < whole, "{} against {whole}", json.len());
    }

    #[test]
    fn a_backup_with_whole_manifests_as_older_hosts_send_it_is_read() {
        let backup = store();
        let older = serde_json::json!({
            "terminals": backup.terminals.iter().map(|t| serde_json::json!({
                "number": t.number, "model": t.model, "version": t.version, "manifest": t.manifest,
            })).collect::<Vec<_>>(),
        });
        let read: Backup = serde_json::from_value(older).unwrap();
        assert_eq!(read, backup);
    }

    #[test]
    fn a_backup_naming_a_file_it_lacks_or_two_forms_at_once_is_refused() {
        let one = |terminal: serde_json::Value| {
            serde_json::from_value::<Backup>(serde_json::json!({
                "files": [entry("a.txt", "a")],
                "terminals": [terminal],
            }))
            .unwrap_err()
            .to_string()
        };
        let base = serde_json::json!({"number": 2, "model": "m", "version": "1.0.0"});
        let with = |k: &str, v: serde_json::Value| {
            let mut t = base.clone();
            t[k] = v;
            t
        };
        assert!(one(with("files", serde_json::json!([0, 1]))).contains("lists file 1"));
        assert!(one(with("files", serde_json::json!([0, 0]))).contains("twice"));
        assert!(one(base.clone()).contains("either"));
        let mut both = with("files", serde_json::json!([0]));
        both["manifest"] = serde_json::json!({"files": []});
        assert!(one(both).contains("either"));
    }
}
