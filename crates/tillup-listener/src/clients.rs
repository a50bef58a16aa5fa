//! Typed clients of the server and of an agent: one method per thing the
//! listener asks, so no use case spells a route, a method or a query
//! string. Both sit on [`Peer`] (retries, bounded reads) and move blobs
//! with the one pack protocol (`tillup_transfer`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use reqwest::Method;
use semver::Version;
use tillup_core::Sha256Hex;
use tillup_core::api::{
    self, AgentStatus, Backup, BackupChanges, DeliveryDigests, HealthReport, ProcessRequest,
    Protocols, SelfUpdateReport, SelfUpdateRequest, Snapshot, SnapshotChanges, StageChanges,
    StageReport, StageRequest, StartReport, StopReport, StopRequest, SwapReport, SwapRequest,
    route,
};
use tillup_fs::BlobStore;
use tillup_transfer::Size;
use tillup_transfer::pack::{LAN_LEVEL, WAN_LEVEL};

use crate::Error;
use crate::http::Peer;
use crate::progress::Transfers;

/// `tillup-server`, as one store.
#[derive(Clone, Debug)]
pub struct ServerClient {
    peer: Peer,
    store: String,
}

impl ServerClient {
    pub fn new(peer: Peer, store: &str) -> Self {
        Self {
            peer,
            store: store.to_owned(),
        }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    fn upgrade_route(&self, template: &str, upgrade: &str) -> String {
        route(template, &[("store", &self.store), ("upgrade", upgrade)])
    }

    /// The channel's log; a `304` when it still has `etag`.
    pub async fn log(&self, channel: &str, etag: Option<&str>) -> Result<reqwest::Response, Error> {
        let path = route(api::server::LOG, &[("channel", channel)]);
        self.peer
            .get_conditional("fetch the version log", &path, etag)
            .await
    }

    /// The server's key chain; empty from a server without one (the root
    /// signs its logs itself, or it is older than key lists).
    pub async fn keys(&self) -> Result<tillup_core::keys::KeyChain, Error> {
        match self
            .peer
            .get_json("fetch the key lists", api::server::KEYS)
            .await
        {
            Err(Error::Refused { status: 404, .. }) => Ok(Default::default()),
            other => other,
        }
    }

    /// Fetches `wanted` (hash → signed size) into `store`, in packs.
    pub async fn fetch(
        &self,
        wanted: &BTreeMap<Sha256Hex, Size>,
        store: &BlobStore,
        progress: &Arc<AtomicU64>,
    ) -> Result<u64, Error> {
        self.peer
            .fetch_pack(api::server::PACK, wanted, store, progress)
            .await
    }

    /// Fetches the blob `h` (a release's manifest, at most `max` bytes) into `store`.
    pub async fn fetch_one(&self, h: &Sha256Hex, max: u64, store: &BlobStore) -> Result<(), Error> {
        let wanted = BTreeMap::from([(*h, Size::AtMost(max))]);
        self.fetch(&wanted, store, &Arc::default())
            .await
            .map(|_| ())
    }

    /// Sends the server the blobs of `hashes` it lacks, from `store`.
    pub async fn send(&self, hashes: Vec<Sha256Hex>, store: &BlobStore) -> Result<u64, Error> {
        self.peer
            .send_pack(
                api::server::BLOBS_MISSING,
                api::server::PACK,
                hashes,
                store,
                WAN_LEVEL,
                None,
            )
            .await
    }

    pub async fn put_backup(&self, upgrade: &str, backup: &Backup) -> Result<(), Error> {
        let _: serde_json::Value = self
            .peer
            .send_json(
                "take the store's backup",
                Method::PUT,
                &self.upgrade_route(api::server::BACKUP, upgrade),
                backup,
            )
            .await?;
        Ok(())
    }

    /// The store's backup as changes to the one it holds; a 409 or 404
    /// says it holds another (send the whole backup).
    pub async fn patch_backup(&self, upgrade: &str, changes: &BackupChanges) -> Result<(), Error> {
        let _: serde_json::Value = self
            .peer
            .send_json(
                "take the store's backup",
                Method::PATCH,
                &self.upgrade_route(api::server::BACKUP, upgrade),
                changes,
            )
            .await?;
        Ok(())
    }

    /// The server builds the terminals' new folders and names each by its
    /// digest (the host computes the same folders and compares).
    pub async fn process(
        &self,
        upgrade: &str,
        req: &ProcessRequest,
    ) -> Result<DeliveryDigests, Error> {
        let req = ProcessRequest {
            answer: api::ProcessAnswer::Digests,
            ..req.clone()
        };
        self.peer
            .send_json(
                "build the terminals' new folders",
                Method::POST,
                &self.upgrade_route(api::server::PROCESS, upgrade),
                &req,
            )
            .await
    }

    pub async fn report(&self, report: &serde_json::Value) -> Result<(), Error> {
        let path = route(api::server::REPORT, &[("store", &self.store)]);
        let _: serde_json::Value = self
            .peer
            .send_json("receive the store's report", Method::POST, &path, report)
            .await?;
        Ok(())
    }
}

/// One terminal's `tillup-agent`.
#[derive(Clone, Debug)]
pub struct AgentClient {
    peer: Peer,
}

impl AgentClient {
    /// The agent at `peer`, spoken to in this build's host–agent protocol.
    pub fn new(peer: Peer) -> Self {
        let protocol = reqwest::header::HeaderValue::from(Protocols::THIS.newest);
        Self {
            peer: peer.with_header(api::PROTOCOL_HEADER, protocol),
        }
    }

    /// Its status; refused if it speaks no host–agent protocol this host
    /// speaks (it is then left out of upgrades, with why).
    pub async fn status(&self) -> Result<AgentStatus, Error> {
        let status: AgentStatus = self
            .peer
            .get_json("report its status", api::agent::STATUS)
            .await?;
        if Protocols::THIS.common(&status.protocols).is_none() {
            return Err(Error::Other(format!(
                "{}'s agent (tillup-agent {}) speaks the host–agent protocol {}, this host (tillup {}) speaks {}: upgrade the older of the two to a tillup version that shares one",
                self.peer.name,
                status.agent_version,
                status.protocols,
                env!("CARGO_PKG_VERSION"),
                Protocols::THIS
            )));
        }
        Ok(status)
    }

    pub async fn stop(&self) -> Result<StopReport, Error> {
        self.peer
            .send_json(
                "stop its main program",
                Method::POST,
                api::agent::STOP,
                &StopRequest::default(),
            )
            .await
    }

    pub async fn start(&self) -> Result<StartReport, Error> {
        self.peer
            .send_json(
                "start its main program",
                Method::POST,
                api::agent::START,
                &serde_json::json!({}),
            )
            .await
    }

    /// The manifest of its program folder (hashed with its cache: cheap
    /// when nothing changed).
    pub async fn snapshot(&self) -> Result<Snapshot, Error> {
        self.peer
            .get_json("describe its program folder", api::agent::SNAPSHOT)
            .await
    }

    /// Its program folder as changes to the whole snapshot of digest
    /// `since` it served lately (refused with 409 when it no longer holds
    /// that one, 404 from agents before this call).
    pub async fn snapshot_changes(&self, since: &Sha256Hex) -> Result<SnapshotChanges, Error> {
        self.peer
            .get_json_query(
                "describe the changes to its program folder",
                api::agent::SNAPSHOT_CHANGES,
                &[("since", &since.to_string())],
            )
            .await
    }

    /// Fetches files it holds (hash → size, from its snapshot) into `store`.
    pub async fn fetch(
        &self,
        wanted: &BTreeMap<Sha256Hex, Size>,
        store: &BlobStore,
        progress: &Arc<AtomicU64>,
    ) -> Result<u64, Error> {
        self.peer
            .fetch_pack(api::agent::PACK, wanted, store, progress)
            .await
    }

    /// Sends it the blobs of `hashes` it lacks, from `store`, counting
    /// them in `progress`.
    pub async fn send(
        &self,
        hashes: Vec<Sha256Hex>,
        store: &BlobStore,
        progress: &Transfers,
    ) -> Result<u64, Error> {
        self.peer
            .send_pack(
                api::agent::BLOBS_MISSING,
                api::agent::PACK,
                hashes,
                store,
                LAN_LEVEL,
                Some(progress),
            )
            .await
    }

    pub async fn stage(&self, req: &StageRequest) -> Result<StageReport, Error> {
        self.peer
            .send_json("stage the new folder", Method::POST, api::agent::STAGE, req)
            .await
    }

    /// Stages the folder `req.changes` make of the one staged already; a
    /// 409 says the staging folder holds another, or lacks files (send the
    /// whole folder).
    pub async fn stage_changes(&self, req: &StageChanges) -> Result<StageReport, Error> {
        self.peer
            .send_json(
                "stage the new folder",
                Method::POST,
                api::agent::STAGE_CHANGES,
                req,
            )
            .await
    }

    pub async fn commit(&self, version: &Version) -> Result<SwapReport, Error> {
        self.peer
            .send_json(
                "swap in the new folder",
                Method::POST,
                api::agent::COMMIT,
                &SwapRequest {
                    version: version.clone(),
                },
            )
            .await
    }

    pub async fn rollback(&self, version: &Version) -> Result<SwapReport, Error> {
        self.peer
            .send_json(
                "put the old folder back",
                Method::POST,
                api::agent::ROLLBACK,
                &SwapRequest {
                    version: version.clone(),
                },
            )
            .await
    }

    /// Asks it to replace its own executable with tillup `req.version`'s
    /// (whose manifest and file it was sent); it restarts on it, on trial.
    pub async fn self_update(&self, req: &SelfUpdateRequest) -> Result<SelfUpdateReport, Error> {
        self.peer
            .send_json(
                "update tillup-agent",
                Method::POST,
                api::agent::SELF_UPDATE,
                req,
            )
            .await
    }

    /// Keeps the release of tillup-agent on trial.
    pub async fn self_confirm(&self, version: &Version) -> Result<SelfUpdateReport, Error> {
        self.peer
            .send_json(
                "keep the new tillup-agent",
                Method::POST,
                api::agent::SELF_CONFIRM,
                &SelfUpdateRequest {
                    version: version.clone(),
                    release: None,
                },
            )
            .await
    }

    /// Puts back the tillup-agent the release on trial replaced.
    pub async fn self_rollback(&self, version: &Version) -> Result<SelfUpdateReport, Error> {
        self.peer
            .send_json(
                "put the previous tillup-agent back",
                Method::POST,
                api::agent::SELF_ROLLBACK,
                &SelfUpdateRequest {
                    version: version.clone(),
                    release: None,
                },
            )
            .await
    }

    /// Whether the main program runs `version` and is healthy.
    pub async fn health(&self, version: &Version) -> Result<HealthReport, Error> {
        self.peer
            .get_json_query(
                "check the main program's health",
                api::agent::HEALTH,
                &[("version", &version.to_string())],
            )
            .await
    }
}
