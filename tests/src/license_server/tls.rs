//! TLS for `serve --tls`: a private CA generated once into the state dir (`ca.pem`, `ca-key.pem`), and a
//! server certificate for the configured names issued by it at every start (names may change between
//! runs; the CA, which clients trust through `SSL_CERT_FILE`, does not). Must not: accept connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::state::write_atomic;
use super::{Error, io_err};

pub const CA_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Names the server certificate covers when none are given.
pub const DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1"];

pub fn ca_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CA_FILE)
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{what}: {e}"))
}

/// The CA's parameters. Deterministic, so the CA certificate can be rebuilt from its stored key on
/// every start: a certificate issued by the rebuilt one verifies against the `ca.pem` clients hold.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "privitty-license-server test CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    params
}

/// Builds the rustls server config: loads or creates the CA, issues a certificate for `names`.
pub fn server_config(
    state_dir: &Path,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let key_path = state_dir.join(CA_KEY_FILE);
    let ca_key = match std::fs::read_to_string(&key_path) {
        Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| Error::BadKeyFile {
            path: key_path.clone(),
            problem: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate().map_err(|e| tls_err("generating the CA key", e))?;
            write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            key
        }
        Err(e) => return Err(io_err(&key_path, e)),
    };
    let ca_cert = ca_params()
        .self_signed(&ca_key)
        .map_err(|e| tls_err("signing the CA certificate", e))?;
    let ca_file = ca_path(state_dir);
    if !ca_file.exists() {
        write_atomic(&ca_file, ca_cert.pem().as_bytes(), 0o644)?;
    }

    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| tls_err(&format!("server names {names:?}"), e))?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map_or("localhost", String::as_str),
    );
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().map_err(|e| tls_err("generating the server key", e))?;
    let leaf = params
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .map_err(|e| tls_err("issuing the server certificate", e))?;

    let chain = vec![CertificateDer::from(leaf.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("tls protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls_err("server certificate", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
