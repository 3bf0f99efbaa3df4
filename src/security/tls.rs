//! TLS for every listener (`[tls]`): rustls with the ring provider. The
//! server's certificate chain and key come from PEM files; with
//! `client_ca`, every client must present a certificate that CA signed
//! (mTLS), and its subject CN is the caller's principal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::rustls;

/// `[tls]` as written in the TOML file (paths relative to the file).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The same files, relative paths taken from `base` (the config file's directory).
    pub fn relative_to(&self, base: &Path) -> TlsFiles {
        let at = |p: &PathBuf| if p.is_absolute() { p.clone() } else { base.join(p) };
        TlsFiles { cert: at(&self.cert), key: at(&self.key), client_ca: self.client_ca.as_ref().map(at) }
    }
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: not PEM certificates: {e}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate in it", path.display());
    Ok(certs)
}

fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| anyhow::anyhow!("{}: not a PEM private key: {e}", path.display()))?
        .ok_or_else(|| anyhow::anyhow!("{}: no private key in it", path.display()))
}

/// ring's provider. rustls marks it deprecated only because it lacks the
/// post-quantum key exchange aws-lc-rs has; ring builds with cargo and a C
/// compiler alone, which a fresh machine here has, and runs TLS 1.3
/// AES-GCM as fast on AES-NI.
///
/// AES-128-GCM first: as safe for this use and about a third cheaper per
/// byte than AES-256-GCM, which the default order (and most clients)
/// would pick; the server's order wins (`ignore_client_order`).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// The server side of `files`: what every listener's acceptor uses.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| anyhow::anyhow!("client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| anyhow::anyhow!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    config.ignore_client_order = true;
    // gRPC needs HTTP/2; the HTTP listener speaks HTTP/1.1; Kafka has no ALPN.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The subject CN of a verified client certificate (the first one: the
/// client's own).
pub fn peer_cn(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// A client config trusting `ca` (PEM), with a client certificate when
/// given: what the CLI and tests connect with.
pub fn client_config(
    ca: Option<&Path>,
    cert_and_key: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for c in certs(ca)? {
            roots.add(c).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match cert_and_key {
        Some((cert, k)) => builder.with_client_auth_cert(certs(cert)?, key(k)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
