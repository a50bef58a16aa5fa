//! Ed25519 signatures in the minisign format.
//!
//! The server signs with a secret key made by `tillup-server keygen`,
//! `minisign -G` or `tauri signer generate`; the listener verifies with the
//! matching public key, and so does `minisign -Vm FILE -P KEY`.

use std::io::Cursor;

use base64::Engine;

/// Why a key could not be read or a signature not made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a minisign secret key: {0}")]
    BadSecretKey(String),
    #[error(
        "the secret key is protected by a password: set TILLUP_KEY_PASSWORD (or make an unprotected key with `minisign -G -W`)"
    )]
    NeedsPassword,
    #[error("not a minisign public key (expected the `RW…` line of a .pub file): {0}")]
    BadPublicKey(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A signature that does not verify.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature is not in minisign format: {0}")]
    Malformed(String),
    #[error("the signature was made by another key than the one configured (key id differs)")]
    OtherKey,
    #[error("the signature does not match the data: it was altered or signed by another key")]
    Invalid,
}

/// Tauri's `signer generate` wraps minisign's text in one more base64 layer.
fn unwrap_tauri(text: &str) -> String {
    let t = text.trim();
    if t.starts_with("untrusted comment:")
        || t.starts_with("RW") && !t.contains('\n') && t.len() < 80
    {
        return t.to_owned();
    }
    match base64::engine::general_purpose::STANDARD.decode(t) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| t.to_owned()),
        Err(_) => t.to_owned(),
    }
}

/// C minisign 0.11 writes an all-zero checksum into the unprotected keys
/// that `minisign -G -W` makes (the C tool never checks it), and the
/// `minisign` crate refuses them as corrupted. For such a key only (no KDF,
/// zero checksum) this returns the key text with the checksum filled in:
/// BLAKE2b-256 of the algorithm, key id and secret key, as minisign defines it.
fn repair_unencrypted_checksum(text: &str) -> Option<String> {
    use blake2::Digest;
    const LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines: Vec<&str> = text.lines().collect();
    let i = lines
        .iter()
        .position(|l| !l.trim().is_empty() && !l.starts_with("untrusted comment:"))?;
    let mut raw = b64.decode(lines[i].trim()).ok()?;
    let chk = 126..LEN;
    if raw.len() != LEN
        || &raw[..2] != b"Ed"
        || raw[2..4] != [0, 0]
        || raw[chk.clone()].iter().any(|b| *b != 0)
    {
        return None;
    }
    let mut h = blake2::Blake2b::<blake2::digest::consts::U32>::new();
    h.update(&raw[..2]);
    h.update(&raw[54..126]);
    raw[chk].copy_from_slice(&h.finalize());
    let fixed = b64.encode(&raw);
    lines[i] = &fixed;
    Some(lines.join("\n") + "\n")
}

/// A secret signing key.
pub struct SecretKey {
    key: minisign::SecretKey,
}

impl SecretKey {
    /// Reads the text of a minisign secret key file (or Tauri's base64 form).
    pub fn parse(text: &str, password: Option<String>) -> Result<Self, KeyError> {
        let text = unwrap_tauri(text);
        let text = repair_unencrypted_checksum(&text).unwrap_or(text);
        let boxed = minisign::SecretKeyBox::from_string(&text)
            .map_err(|e| KeyError::BadSecretKey(e.to_string()))?;
        let key = match password {
            Some(pw) => boxed.into_secret_key(Some(pw)),
            None => {
                let key = boxed
                    .into_unencrypted_secret_key()
                    .map_err(|e| KeyError::BadSecretKey(e.to_string()))?;
                if key.is_encrypted() {
                    return Err(KeyError::NeedsPassword);
                }
                Ok(key)
            }
        }
        .map_err(|e| KeyError::BadSecretKey(e.to_string()))?;
        Ok(Self { key })
    }

    /// Signs `data`; returns the text of a `.minisig` file.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<String, KeyError> {
        let sig = minisign::sign(
            None,
            &self.key,
            Cursor::new(data),
            Some(trusted_comment),
            Some("signature from tillup-server"),
        )
        .map_err(|e| KeyError::Sign(e.to_string()))?;
        Ok(sig.into_string())
    }
}

/// A freshly generated, unprotected key pair, as file texts.
pub struct GeneratedKeys {
    /// The `.pub` file: a comment line and the `RW…` key line.
    pub public_file: String,
    /// The `RW…` key line alone, as the listener's config takes it.
    pub public_line: String,
    /// The secret key file.
    pub secret_file: String,
}

/// Makes a new key pair.
pub fn generate_keys() -> Result<GeneratedKeys, KeyError> {
    let kp = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| KeyError::Sign(e.to_string()))?;
    let public_file = kp
        .pk
        .to_box()
        .map_err(|e| KeyError::Sign(e.to_string()))?
        .into_string();
    let public_line = kp.pk.to_base64();
    let secret_file = kp
        .sk
        .to_box(Some("tillup-server secret key"))
        .map_err(|e| KeyError::Sign(e.to_string()))?
        .into_string();
    Ok(GeneratedKeys {
        public_file,
        public_line,
        secret_file,
    })
}

/// A public key that verifies signatures.
#[derive(Clone)]
pub struct PublicKey {
    key: minisign_verify::PublicKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublicKey(..)")
    }
}

impl PublicKey {
    /// Reads the `RW…` line, a whole `.pub` file, or Tauri's base64 form.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = unwrap_tauri(text);
        let line = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .unwrap_or("");
        let key = minisign_verify::PublicKey::from_base64(line)
            .map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
        Ok(Self { key })
    }

    /// Verifies `data` against the text of a `.minisig` file.
    pub fn verify(&self, data: &[u8], signature: &str) -> Result<(), SignatureError> {
        let sig = minisign_verify::Signature::decode(signature)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        self.key.verify(data, &sig, false).map_err(|e| match e {
            minisign_verify::Error::UnexpectedKeyId => SignatureError::OtherKey,
            minisign_verify::Error::InvalidSignature => SignatureError::Invalid,
            other => SignatureError::Malformed(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_refuses_tampering_and_other_keys() {
        let keys = generate_keys().unwrap();
        let sk = SecretKey::parse(&keys.secret_file, None).unwrap();
        let sig = sk.sign(b"hello", "sequence:1").unwrap();
        let pk = PublicKey::parse(&keys.public_line).unwrap();
        pk.verify(b"hello", &sig).unwrap();
        assert!(matches!(
            pk.verify(b"hellO", &sig),
            Err(SignatureError::Invalid)
        ));
        let other = PublicKey::parse(&generate_keys().unwrap().public_file).unwrap();
        assert!(matches!(
            other.verify(b"hello", &sig),
            Err(SignatureError::OtherKey)
        ));
        assert!(matches!(
            pk.verify(b"hello", "garbage"),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn accepts_tauri_wrapped_keys() {
        let keys = generate_keys().unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let sk = SecretKey::parse(&b64(&keys.secret_file), None).unwrap();
        let pk = PublicKey::parse(&b64(&keys.public_file)).unwrap();
        pk.verify(b"x", &sk.sign(b"x", "t").unwrap()).unwrap();
    }

    #[test]
    fn a_zero_checksum_of_an_unprotected_key_is_repaired_and_nothing_else() {
        let keys = generate_keys().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut lines: Vec<String> = keys.secret_file.lines().map(str::to_owned).collect();
        let mut raw = b64.decode(&lines[1]).unwrap();
        let good = raw.clone();
        raw[126..].fill(0);
        lines[1] = b64.encode(&raw);
        let broken = lines.join("\n");
        let fixed = repair_unencrypted_checksum(&broken).unwrap();
        assert_eq!(b64.decode(fixed.lines().nth(1).unwrap()).unwrap(), good);
        SecretKey::parse(&broken, None).unwrap();
        assert_eq!(repair_unencrypted_checksum(&keys.secret_file), None);
    }

    #[test]
    fn bad_keys_say_what_they_expected() {
        assert!(
            PublicKey::parse("hello")
                .unwrap_err()
                .to_string()
                .contains("RW")
        );
        assert!(SecretKey::parse("hello", None).is_err());
    }
}
