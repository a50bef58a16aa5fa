//! The agent's own TLS identity (see [`tillup_core::pairing`]): a key and a
//! self-signed certificate made at first start in `STATE/tls/`, and the
//! pairing code that names the certificate for the host.

use std::path::{Path, PathBuf};

use tillup_core::Sha256Hex;

/// The agent's certificate (DER) and its key (PKCS#8 DER).
pub struct Identity {
    /// The self-signed certificate.
    pub cert_der: Vec<u8>,
    /// Its private key.
    pub key_der: Vec<u8>,
}

impl Identity {
    /// The identity kept in `state_dir`, made there first if there is none.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Self> {
        let dir = state_dir.join("tls");
        let (cert, key) = (dir.join("agent.crt.der"), dir.join("agent.key.der"));
        if let (Ok(cert_der), Ok(key_der)) = (std::fs::read(&cert), std::fs::read(&key)) {
            return Ok(Self { cert_der, key_der });
        }
        tillup_fs::private_dir(&dir)?;
        let made = rcgen::generate_simple_self_signed(vec!["tillup-agent".to_owned()])?;
        let identity = Self {
            cert_der: made.cert.der().to_vec(),
            key_der: made.signing_key.serialize_der(),
        };
        // The key first: a certificate is never there without its key.
        tillup_fs::write_atomic(&key, &identity.key_der)?;
        tillup_fs::write_atomic(&cert, &identity.cert_der)?;
        tracing::info!(
            "made this terminal's TLS certificate in {}; its pairing code is {}",
            dir.display(),
            identity.pairing_code()
        );
        Ok(identity)
    }

    /// What the host pins.
    pub fn fingerprint(&self) -> Sha256Hex {
        tillup_core::pairing::fingerprint(&self.cert_der)
    }

    /// What the shop assistant types on the host.
    pub fn pairing_code(&self) -> String {
        tillup_core::pairing::code(&self.fingerprint())
    }

    /// The folder it lives in.
    pub fn dir(state_dir: &Path) -> PathBuf {
        state_dir.join("tls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.cert_der, again.cert_der);
        assert!(tillup_core::pairing::matches(
            &first.pairing_code(),
            &again.fingerprint()
        ));
        tillup_serve::tls_config(first.cert_der, first.key_der).unwrap();
    }
}
