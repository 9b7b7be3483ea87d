//! The listener's certificate for STARTTLS: loaded from PEM files, swapped in place on reload.
//!
//! Each handshake takes the configuration current at that moment, so a SIGHUP after the files
//! were replaced serves the new certificate to the next client without touching the sessions
//! already encrypted. A reload that fails (a missing file, a key that does not match) keeps the
//! old certificate: a typo during a renewal must not take the listener's TLS down.
//!
//! A listener that only the site's own roles may use (`delivery_tls = "mutual"` on a node's SMTP,
//! `admin_tls = "mutual"`) also asks every client for a certificate and completes the handshake
//! only with one the site's CA (`tls_ca`) signed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key could not be used; each names the config key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file is missing, unreadable or not PEM.
    #[error("tls_certificate {path}: {message}")]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The file is missing, unreadable, not PEM or holds no private key.
    #[error("tls_private_key {path}: {message}")]
    PrivateKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the pair (e.g. the key does not belong to the certificate).
    #[error("tls_certificate {certificate} with tls_private_key {private_key}: {source}")]
    Pair {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        private_key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The CA that client certificates are verified against cannot be used.
    #[error("tls_ca {path} (verifying client certificates): {message}")]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// A certificate chain and its private key, as PEM files (resolved against the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate, followed by any intermediates.
    pub certificate: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

/// A listener's TLS configuration, reloadable while the listener runs.
pub struct ServerTls {
    files: TlsFiles,
    /// The CA every client must present a certificate from; none: clients are not asked.
    clients: Option<PathBuf>,
    current: ArcSwap<ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads `files`; an error here is a start-up error (the operator asked for TLS).
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        Self::load_verifying(files, None)
    }

    /// Loads `files` for a listener that completes a handshake only with a client whose
    /// certificate `clients` (a CA's PEM file) signed, when given.
    pub fn load_verifying(
        files: TlsFiles,
        clients: Option<PathBuf>,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let config = server_config(&files, clients.as_deref())?;
        Ok(Arc::new(ServerTls {
            files,
            clients,
            current: ArcSwap::from(config),
        }))
    }

    /// Reads the files (and the clients' CA) again and serves them from the next handshake on;
    /// on error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files, self.clients.as_deref())?;
        self.current.store(config);
        Ok(())
    }

    /// Whether a handshake completes only with a client certificate from the site's CA, so a
    /// session that completed one is a site role's.
    pub fn verifies_clients(&self) -> bool {
        self.clients.is_some()
    }

    /// The files this configuration comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An acceptor with the configuration current now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

/// The ring provider, named explicitly so that no process-wide default has to be installed.
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file (a leaf and its intermediates, or CA certificates).
/// The message is for the caller's typed error, which names the key and the file.
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&e))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block in the file".into());
    }
    Ok(certs)
}

/// The site's CA as a root store, for verifying either side of a connection.
pub(crate) fn root_store(ca: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca)? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    Ok(roots)
}

fn server_config(files: &TlsFiles, clients: Option<&Path>) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certificates(&files.certificate).map_err(|message| TlsError::Certificate {
        path: files.certificate.clone(),
        message,
    })?;
    let key =
        PrivateKeyDer::from_pem_file(&files.private_key).map_err(|e| TlsError::PrivateKey {
            path: files.private_key.clone(),
            message: pem_error(&e),
        })?;
    let pair = |source| TlsError::Pair {
        certificate: files.certificate.clone(),
        private_key: files.private_key.clone(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(pair)?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let failed = |message: String| TlsError::ClientCa {
                path: ca.to_path_buf(),
                message,
            };
            let roots = root_store(ca).map_err(failed)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
                    .build()
                    .map_err(|e| failed(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(pair)?;
    Ok(Arc::new(config))
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        rustls::pki_types::pem::Error::NoItemsFound => "no matching PEM block in the file".into(),
        other => format!("not valid PEM: {other}"),
    }
}
