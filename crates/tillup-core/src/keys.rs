//! Keys that can rotate.
//!
//! Stores and terminals pin one **root** key, which the chain keeps
//! offline. The root signs **key lists**: numbered, expiring lists of the
//! **online** keys allowed to sign version logs (the one `tillup-server`
//! holds). A key list may also name the **next root**: the root signs its
//! own successor, and every list after it is signed by that successor.
//!
//! A verifier (the listener, an agent) remembers the root it trusts and the
//! newest list version it accepted ([`Trust`]); given the server's chain of
//! lists it walks them from its root ([`Trust::follow`]), so a store that
//! was switched off through any number of rotations catches up at its next
//! check, and an older list (one naming a key since withdrawn) is never
//! taken again. Without any list, logs are signed with the root itself:
//! the setup of a chain that never rotated. Signatures stay minisign.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::sign::{PublicKey, SignatureError};

/// The largest key chain read: a list is a few hundred bytes.
pub const MAX_KEY_CHAIN_BYTES: usize = 1024 * 1024;

/// A list of the keys allowed to sign logs, as the root signs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// Grows with every list; a verifier never goes back to a lower one.
    pub version: u64,
    /// After this the list no longer names anyone (sign a new one before).
    pub expires: Timestamp,
    /// The online keys (`RW…` lines) allowed to sign logs.
    pub keys: Vec<String>,
    /// The root that signs every list after this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_root: Option<String>,
}

/// A key list exactly as signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedKeyList {
    /// The list's bytes (UTF-8 JSON), as signed.
    pub list: String,
    /// Its minisign signature by the root of its time.
    pub signature: String,
}

impl SignedKeyList {
    /// The list, unverified (for the server, which stores and serves it).
    pub fn parse(&self) -> Result<KeyList, KeyRefusal> {
        serde_json::from_str(&self.list).map_err(|e| KeyRefusal::Invalid(e.to_string()))
    }
}

/// The server's key lists, oldest first: every list that names a next
/// root, and the newest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyChain {
    pub lists: Vec<SignedKeyList>,
}

/// What a verifier trusts, kept between checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    /// The root (`RW…` line): pinned at installation, then the last
    /// `next_root` followed.
    pub root: String,
    /// The newest list accepted, if any.
    #[serde(default)]
    pub list: Option<KeyList>,
}

/// Why a key chain is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error("a key list is invalid: {0}")]
    Invalid(String),
    #[error(
        "key list {version} is not signed by the trusted root ({reason}): refused; nothing was changed"
    )]
    NotByRoot { version: u64, reason: String },
    #[error(
        "the newest key list is version {got}, older than version {seen} already accepted: an old list is being replayed; nothing was changed"
    )]
    Replayed { seen: u64, got: u64 },
    #[error(
        "the newest key list (version {version}) expired at {expires}: the chain's IT must sign a new one with the root key"
    )]
    Expired { version: u64, expires: Timestamp },
}

impl Trust {
    /// Trusting `root` alone, as installed.
    pub fn pinned(root: &str) -> Self {
        Self {
            root: root.trim().to_owned(),
            list: None,
        }
    }

    /// The keys a log may be signed with: the newest list's, and the root.
    pub fn log_keys(&self) -> Vec<PublicKey> {
        self.list
            .iter()
            .flat_map(|l| l.keys.iter())
            .chain(std::iter::once(&self.root))
            .filter_map(|k| PublicKey::parse(k).ok())
            .collect()
    }

    /// Verifies `data` with any key a log may be signed with.
    pub fn verify_log(&self, data: &[u8], signature: &str) -> Result<(), SignatureError> {
        let mut last = SignatureError::OtherKey;
        for key in self.log_keys() {
            match key.verify(data, signature) {
                Ok(()) => return Ok(()),
                // The signature is by another key: try the next.
                Err(SignatureError::OtherKey) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Walks `chain` (oldest first) from this trust: each list newer than
    /// the one accepted must verify with the root of its time, a
    /// `next_root` becomes the root for what follows, and the newest list
    /// must not be older than the one accepted nor expired at `now`.
    pub fn follow(&self, chain: &KeyChain, now: Timestamp) -> Result<Trust, KeyRefusal> {
        let mut trust = self.clone();
        let seen = self.list.as_ref().map_or(0, |l| l.version);
        let mut newest = None;
        for signed in &chain.lists {
            let list = signed.parse()?;
            newest = Some(newest.map_or(list.version, |n: u64| n.max(list.version)));
            let accepted = trust.list.as_ref().map_or(0, |l| l.version);
            if list.version <= accepted {
                // Known already (or older): nothing to learn from it.
                continue;
            }
            let root = PublicKey::parse(&trust.root).map_err(|e| KeyRefusal::NotByRoot {
                version: list.version,
                reason: e.to_string(),
            })?;
            root.verify(signed.list.as_bytes(), &signed.signature)
                .map_err(|e| KeyRefusal::NotByRoot {
                    version: list.version,
                    reason: e.to_string(),
                })?;
            for k in list.keys.iter().chain(&list.next_root) {
                PublicKey::parse(k).map_err(|e| {
                    KeyRefusal::Invalid(format!("list {} names `{k}`: {e}", list.version))
                })?;
            }
            if let Some(next) = &list.next_root {
                trust.root = next.trim().to_owned();
            }
            trust.list = Some(list);
        }
        if let Some(got) = newest.filter(|n| *n < seen) {
            return Err(KeyRefusal::Replayed { seen, got });
        }
        if let Some(list) = &trust.list
            && list.expires <= now
        {
            return Err(KeyRefusal::Expired {
                version: list.version,
                expires: list.expires,
            });
        }
        Ok(trust)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{SecretKey, generate_keys};

    struct Key {
        secret: SecretKey,
        public: String,
    }

    fn key() -> Key {
        let k = generate_keys().unwrap();
        Key {
            secret: SecretKey::parse(&k.secret_file, None).unwrap(),
            public: k.public_line,
        }
    }

    fn list(by: &Key, version: u64, keys: &[&Key], next_root: Option<&Key>) -> SignedKeyList {
        let list = serde_json::to_string(&KeyList {
            version,
            expires: "2027-06-01T00:00:00Z".parse().unwrap(),
            keys: keys.iter().map(|k| k.public.clone()).collect(),
            next_root: next_root.map(|k| k.public.clone()),
        })
        .unwrap();
        SignedKeyList {
            signature: by.secret.sign(list.as_bytes(), "key list").unwrap(),
            list,
        }
    }

    fn now() -> Timestamp {
        "2026-12-01T00:00:00Z".parse().unwrap()
    }

    fn signs_logs(trust: &Trust, k: &Key) -> bool {
        let sig = k.secret.sign(b"log", "log").unwrap();
        trust.verify_log(b"log", &sig).is_ok()
    }

    #[test]
    fn without_a_list_the_root_signs_logs() {
        let root = key();
        let trust = Trust::pinned(&root.public)
            .follow(&KeyChain::default(), now())
            .unwrap();
        assert!(signs_logs(&trust, &root));
        assert!(!signs_logs(&trust, &key()));
    }

    #[test]
    fn an_online_key_rotates_and_the_old_one_is_withdrawn_for_good() {
        let (root, k1, k2) = (key(), key(), key());
        let v1 = list(&root, 1, &[&k1], None);
        let v2 = list(&root, 2, &[&k2], None);
        let pinned = Trust::pinned(&root.public);
        let t1 = pinned
            .follow(
                &KeyChain {
                    lists: vec![v1.clone()],
                },
                now(),
            )
            .unwrap();
        assert!(signs_logs(&t1, &k1) && !signs_logs(&t1, &k2));
        let t2 = t1.follow(&KeyChain { lists: vec![v2] }, now()).unwrap();
        assert!(signs_logs(&t2, &k2) && !signs_logs(&t2, &k1));
        // The list that named k1, served again: a replay.
        assert!(matches!(
            t2.follow(&KeyChain { lists: vec![v1] }, now()),
            Err(KeyRefusal::Replayed { seen: 2, got: 1 })
        ));
    }

    #[test]
    fn a_store_off_through_a_root_rotation_catches_up_from_its_old_root() {
        let (r1, r2, k1, k2) = (key(), key(), key(), key());
        let chain = KeyChain {
            lists: vec![
                list(&r1, 1, &[&k1], None),
                list(&r1, 2, &[&k2], Some(&r2)),
                list(&r2, 3, &[&k2], None),
            ],
        };
        let t = Trust::pinned(&r1.public).follow(&chain, now()).unwrap();
        assert_eq!(t.root, r2.public);
        assert_eq!(t.list.as_ref().unwrap().version, 3);
        assert!(signs_logs(&t, &k2) && signs_logs(&t, &r2));
        assert!(!signs_logs(&t, &k1) && !signs_logs(&t, &r1));
        // A store that saw version 1 only follows the same way.
        let mid = Trust::pinned(&r1.public)
            .follow(
                &KeyChain {
                    lists: chain.lists[..1].to_vec(),
                },
                now(),
            )
            .unwrap();
        assert_eq!(mid.follow(&chain, now()).unwrap(), t);
    }

    #[test]
    fn a_list_by_anyone_else_or_expired_is_refused() {
        let (root, mallory, k) = (key(), key(), key());
        let forged = list(&mallory, 5, &[&mallory], None);
        assert!(matches!(
            Trust::pinned(&root.public).follow(
                &KeyChain {
                    lists: vec![forged]
                },
                now()
            ),
            Err(KeyRefusal::NotByRoot { version: 5, .. })
        ));
        let v1 = list(&root, 1, &[&k], None);
        let mut tampered = v1.clone();
        tampered.list = tampered.list.replace(&k.public, &mallory.public);
        assert!(matches!(
            Trust::pinned(&root.public).follow(
                &KeyChain {
                    lists: vec![tampered]
                },
                now()
            ),
            Err(KeyRefusal::NotByRoot { .. })
        ));
        let later: Timestamp = "2027-07-01T00:00:00Z".parse().unwrap();
        assert!(matches!(
            Trust::pinned(&root.public).follow(&KeyChain { lists: vec![v1] }, later),
            Err(KeyRefusal::Expired { version: 1, .. })
        ));
    }
}
