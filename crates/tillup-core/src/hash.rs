//! SHA-256 digests as they travel: 64 lowercase hex characters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest. Parsing accepts only 64 lowercase hex digits, so a
/// digest is also always a safe file name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex([u8; 32]);

impl Sha256Hex {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Wraps a finished digest.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The two-character fan-out prefix used by content-addressed stores.
    pub fn prefix(&self) -> String {
        hex::encode(&self.0[..1])
    }
}

/// A digest that did not parse.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a SHA-256 digest (expected 64 lowercase hex digits)")]
pub struct BadDigest(String);

impl FromStr for Sha256Hex {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, BadDigest> {
        let ok = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut out = [0u8; 32];
        if !ok || hex::decode_to_slice(s, &mut out).is_err() {
            let shown: String = s.chars().take(80).collect();
            return Err(BadDigest(shown));
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = BadDigest;
    fn try_from(s: String) -> Result<Self, BadDigest> {
        s.parse()
    }
}

impl From<Sha256Hex> for String {
    fn from(h: Sha256Hex) -> String {
        h.to_string()
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hex({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_round_trips() {
        let h = Sha256Hex::of(b"abc");
        let s = h.to_string();
        assert_eq!(
            s,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(s.parse::<Sha256Hex>().unwrap(), h);
        assert_eq!(h.prefix(), "ba");
    }

    #[test]
    fn rejects_uppercase_short_and_path_like() {
        for bad in [
            "",
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "../etc",
            &"a".repeat(63),
        ] {
            assert!(bad.parse::<Sha256Hex>().is_err(), "{bad}");
        }
    }
}
