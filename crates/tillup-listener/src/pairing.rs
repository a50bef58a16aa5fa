//! The private link to each terminal (see [`tillup_core::pairing`]): TLS
//! to the agent's own certificate, pinned by its fingerprint when the
//! shop assistant pairs the terminal (`tillup pair N CODE`). After that the
//! host talks to nothing else at that terminal's address.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tillup_core::Sha256Hex;

use crate::config::Terminal;
use crate::http::{Peer, client_with};
use crate::{Config, Error};

/// What a terminal's certificate must be.
#[derive(Debug)]
enum Expect {
    /// Exactly this fingerprint.
    Pinned(Sha256Hex),
    /// Not paired yet: nothing passes.
    Unpaired(u32),
    /// Anything, noted here: only to pair, before the code is checked.
    Note(Arc<Mutex<Option<Sha256Hex>>>),
}

/// Checks a terminal's certificate by its fingerprint only (the agent's
/// certificate is self-signed and names no host), and the handshake's
/// signatures as rustls does.
#[derive(Debug)]
struct ByFingerprint {
    expect: Expect,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ByFingerprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = tillup_core::pairing::fingerprint(end_entity.as_ref());
        match &self.expect {
            Expect::Pinned(want) if *want == seen => Ok(ServerCertVerified::assertion()),
            Expect::Pinned(_) => Err(rustls::Error::General(format!(
                "{NOT_THE_TERMINAL} (its certificate {seen} is not the one paired)"
            ))),
            Expect::Unpaired(n) => Err(rustls::Error::General(format!(
                "{NOT_PAIRED}: run `tillup pair {n} CODE` with the code its agent shows"
            ))),
            Expect::Note(noted) => {
                *noted.lock().unwrap_or_else(|p| p.into_inner()) = Some(seen);
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Words of the refusals, which the listener looks for in error chains.
pub(crate) const NOT_PAIRED: &str = "this terminal is not paired";
pub(crate) const NOT_THE_TERMINAL: &str =
    "another device answers at this terminal's address, or the terminal was reinstalled";

fn client_expecting(expect: Expect) -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ByFingerprint { expect, provider }))
        .with_no_client_auth();
    client_with(reqwest::Client::builder().use_preconfigured_tls(tls))
}

/// The HTTP client for `terminal`: TLS to its pinned certificate, or
/// refusing it until it is paired. (An `http://` address uses no TLS.)
pub fn client_for(terminal: &Terminal) -> reqwest::Client {
    let expect = match terminal.cert_sha256.as_deref().map(str::parse::<Sha256Hex>) {
        Some(Ok(pin)) => Expect::Pinned(pin),
        _ => Expect::Unpaired(terminal.number),
    };
    client_expecting(expect)
}

/// Pairs terminal `n` of `config`: asks its agent for its certificate and
/// checks it against `code`, the one the agent shows. Returns the
/// fingerprint to pin (the caller writes it to the configuration).
pub async fn pair(config: &Config, n: u32, code: &str) -> Result<Sha256Hex, Error> {
    let terminal = config
        .terminals
        .iter()
        .find(|t| t.number == n)
        .ok_or_else(|| Error::Other(format!("terminal {n} is not in the configuration")))?;
    if !tillup_core::pairing::is_code(code) {
        return Err(Error::Other(format!(
            "`{code}` is not a pairing code: it has 20 letters and digits, like ABCD-EFGH-JKMN-PQRS-TVWX; the terminal's agent shows it (tillup-agent --config … pairing-code)"
        )));
    }
    if !terminal.address.starts_with("https://") {
        return Err(Error::Other(format!(
            "terminal {n}'s address `{}` is not https://: pairing pins the agent's TLS certificate",
            terminal.address
        )));
    }
    let noted = Arc::new(Mutex::new(None));
    let peer = Peer::new(
        format!("terminal {n}"),
        &terminal.address,
        &terminal.token,
        client_expecting(Expect::Note(noted.clone())),
    );
    // Any answer will do (even a refused token): the handshake showed the
    // certificate.
    let _ = tokio::time::timeout(Duration::from_secs(30), peer.probe()).await;
    let seen = noted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .ok_or_else(|| Error::Unreachable {
            peer: format!("terminal {n}"),
            what: "show its certificate".into(),
            message: format!("no TLS answer at {}", terminal.address),
        })?;
    if !tillup_core::pairing::matches(code, &seen) {
        return Err(Error::Untrusted(format!(
            "the device at {} is not the terminal showing {code}: check the code on the terminal and its address; nothing was saved",
            terminal.address
        )));
    }
    Ok(seen)
}

/// `config` with terminal `n` pinned to `fingerprint`.
pub fn pinned(config: &Config, n: u32, fingerprint: &Sha256Hex) -> Config {
    let mut new = config.clone();
    for t in new.terminals.iter_mut().filter(|t| t.number == n) {
        t.cert_sha256 = Some(fingerprint.to_string());
    }
    new
}
