//! TLS termination with rustls: certificates from PEM (text or file), chosen by SNI, ALPN
//! `h2` / `http/1.1`, replaced at run time for new handshakes (`TlsConfig::replace`).
//!
//! rustls runs on the `ring` provider: it builds with a C compiler alone on every prebuilt
//! target (aws-lc-rs needs CMake, and NASM on Windows), and the TLS 1.3 AES-GCM / ChaCha20
//! suites run at the same speed on x86-64 and aarch64. Protocol versions and suites are
//! rustls's safe defaults (TLS 1.2 and 1.3, forward-secret AEAD suites only).

pub(crate) mod handshake;

use crate::config::{TlsOptions, TlsPair};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The TLS settings new handshakes use; replaced as a whole, never edited.
pub struct TlsConfig {
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsConfig {
    pub fn new(options: &TlsOptions) -> Result<Self, String> {
        Ok(Self {
            current: RwLock::new(server_config(options)?),
        })
    }

    /// What the next handshake uses.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// New certificates for new handshakes; open connections keep theirs.
    pub fn replace(&self, options: &TlsOptions) -> Result<(), String> {
        let config = server_config(options)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }
}

/// The rustls configuration for `options`; errors name the option (`tls.cert: ...`).
pub fn server_config(options: &TlsOptions) -> Result<Arc<rustls::ServerConfig>, String> {
    let default = certified_key(&options.cert, &options.key, "tls")?;
    let mut by_name = HashMap::new();
    for (name, pair) in &options.sni {
        let TlsPair { cert, key } = pair;
        let what = format!("tls.sni[{name:?}]");
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(format!("{what}: not a host name"));
        }
        by_name.insert(name, certified_key(cert, key, &what)?);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("tls: {err}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Certificates { default, by_name }));
    config.alpn_protocols = if options.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

/// PEM text as given, or the contents of the file it names.
fn pem(source: &str, what: &str) -> Result<Vec<u8>, String> {
    if source.contains("-----BEGIN") {
        return Ok(source.as_bytes().to_vec());
    }
    std::fs::read(source).map_err(|err| format!("{what}: cannot read {source:?}: {err}"))
}

fn certified_key(cert: &str, key: &str, what: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(&pem(cert, &format!("{what}.cert"))?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{what}.cert: not PEM certificates: {err}"))?;
    if chain.is_empty() {
        return Err(format!("{what}.cert: no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem(key, &format!("{what}.key"))?)
        .map_err(|err| format!("{what}.key: no PEM private key in it: {err}"))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|err| format!("{what}.key: {err}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|err| format!("{what}: the key does not belong to the certificate ({err})"))?;
    Ok(Arc::new(certified))
}

/// Chooses the certificate by the name the client asked for (SNI): an exact name, else a
/// `*.` wildcard entry one label up, else the default certificate.
#[derive(Debug)]
struct Certificates {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.by_name.get(&name).or_else(|| {
                let parent = name.split_once('.')?.1;
                self.by_name.get(&format!("*.{parent}"))
            })
        });
        Some(Arc::clone(chosen.unwrap_or(&self.default)))
    }
}
