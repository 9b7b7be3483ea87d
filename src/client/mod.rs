//! Calling a role's admin API: authenticated JSON calls with a short timeout, so one dead hub
//! cannot stall `stats`. With `admin_tls` the calls are HTTPS, each role's certificate verified
//! against `tls_ca` and the role's admin address. Below hubs and nodes, so that a node asks hubs
//! to resubmit, and the CLI and the dashboard ask every role, through the same client.

pub mod cms;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

use crate::config::{AdminTls, Site};
use crate::smtp::{crypto_provider, read_certificates, root_store, TlsFiles};
use crate::wire::ErrorBody;

/// How long the CLI waits for one role before calling it unreachable.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered (refused, timed out).
    #[error("{addr}: unreachable: {reason}")]
    Unreachable {
        /// The role's admin address.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// It answered with an error status.
    #[error("{addr}: {status}: {message}")]
    Status {
        /// The role's admin address.
        addr: SocketAddr,
        /// The HTTP status.
        status: u16,
        /// The error body's text.
        message: String,
    },
    /// The CA for `admin_tls`, or the certificate this caller presents, cannot be used, so no
    /// call is made.
    #[error("{path}: {message}")]
    Tls {
        /// The file at fault (the CA, the certificate or key, or the site file).
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// An admin API client for one site.
#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    token: String,
    /// `http`, or `https` with `admin_tls`.
    scheme: &'static str,
}

impl AdminClient {
    /// A client for the roles of `site` as the operator (the CLI, the embedded site's
    /// programs), sending its admin token with every call.
    pub fn new(site: &Site) -> Result<AdminClient, ClientError> {
        Self::with_timeout(site, TIMEOUT)
    }

    /// The operator's client with its own timeout; under `admin_tls = "mutual"` it presents
    /// `admin_client_certificate`.
    pub fn with_timeout(site: &Site, timeout: Duration) -> Result<AdminClient, ClientError> {
        Self::presenting(site, site.admin_client.as_ref(), timeout)
    }

    /// A client for one role calling the others (heartbeats, log shipping, resubmission
    /// requests, the dashboard): under `admin_tls = "mutual"` it presents `identity`, the
    /// role's own certificate. Its own timeout, as heartbeats must fail fast, not stall the
    /// cluster driver.
    pub fn presenting(
        site: &Site,
        identity: Option<&TlsFiles>,
        timeout: Duration,
    ) -> Result<AdminClient, ClientError> {
        let builder = reqwest::Client::builder().timeout(timeout).no_proxy();
        let (builder, scheme) = match (site.admin_tls, &site.tls_ca) {
            (AdminTls::Off, _) => (builder, "http"),
            (_, None) => {
                return Err(ClientError::Tls {
                    path: site.file.clone(),
                    message: "admin_tls is set but tls_ca is not".into(),
                })
            }
            (AdminTls::On, Some(ca)) => (
                builder.use_preconfigured_tls(tls_config(ca, None)?),
                "https",
            ),
            (AdminTls::Mutual, Some(ca)) => {
                let Some(identity) = identity else {
                    return Err(ClientError::Tls {
                        path: site.file.clone(),
                        message:
                            "admin_tls is \"mutual\" and this caller has no certificate to present"
                                .into(),
                    });
                };
                (
                    builder.use_preconfigured_tls(tls_config(ca, Some(identity))?),
                    "https",
                )
            }
        };
        let http = builder.build().map_err(|e| ClientError::Tls {
            path: site.tls_ca.clone().unwrap_or_else(|| site.file.clone()),
            message: e.to_string(),
        })?;
        Ok(AdminClient {
            http,
            token: site.admin_token.clone(),
            scheme,
        })
    }

    fn url(&self, addr: SocketAddr, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }

    /// `GET addr{path}` decoded as `T`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<T, ClientError> {
        let req = self.http.get(self.url(addr, path));
        self.call(addr, req).await
    }

    /// `GET addr{path}` as raw bytes.
    pub async fn get_bytes(&self, addr: SocketAddr, path: &str) -> Result<Vec<u8>, ClientError> {
        let req = self.http.get(self.url(addr, path));
        let resp = self.send(addr, req).await?;
        Ok(resp
            .bytes()
            .await
            .map_err(|e| unreachable(addr, e))?
            .to_vec())
    }

    /// `GET addr{path}` whose body is read piece by piece as it arrives (a snapshot).
    pub async fn download(&self, addr: SocketAddr, path: &str) -> Result<Download, ClientError> {
        let req = self.http.get(self.url(addr, path));
        let resp = self.send(addr, req).await?;
        Ok(Download { resp, addr })
    }

    /// `POST addr{path}` with a JSON body, decoded as `T`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let req = self.http.post(self.url(addr, path)).json(body);
        self.call(addr, req).await
    }

    /// `DELETE addr{path}` with a JSON body, decoded as `T`.
    pub async fn delete<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let req = self.http.delete(self.url(addr, path)).json(body);
        self.call(addr, req).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.send(addr, req).await?;
        resp.json::<T>().await.map_err(|e| unreachable(addr, e))
    }

    /// Sends with the token; a non-success status becomes [`ClientError::Status`].
    async fn send(
        &self,
        addr: SocketAddr,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| unreachable(addr, e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(status_error(addr, resp).await)
        }
    }
}

/// A response body read as it arrives.
pub struct Download {
    resp: reqwest::Response,
    addr: SocketAddr,
}

impl Download {
    /// The next piece, `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.resp.chunk().await {
            Ok(piece) => Ok(piece.map(|b| b.to_vec())),
            Err(e) => Err(unreachable(self.addr, e)),
        }
    }
}

/// Trusts the certificates of `ca` only (the ring provider, as everywhere in hubrelay), and
/// presents `identity` to servers that ask for a client certificate.
fn tls_config(ca: &Path, identity: Option<&TlsFiles>) -> Result<rustls::ClientConfig, ClientError> {
    let failed = |path: &Path, message: String| ClientError::Tls {
        path: path.to_path_buf(),
        message,
    };
    let roots = root_store(ca).map_err(|m| failed(ca, format!("tls_ca: {m}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(ca, format!("tls_ca: {e}")))?
        .with_root_certificates(roots);
    let Some(files) = identity else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = read_certificates(&files.certificate)
        .map_err(|m| failed(&files.certificate, format!("client certificate: {m}")))?;
    let key = PrivateKeyDer::from_pem_file(&files.private_key)
        .map_err(|e| failed(&files.private_key, format!("client certificate's key: {e}")))?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| failed(&files.certificate, format!("client certificate: {e}")))
}

fn unreachable(addr: SocketAddr, e: reqwest::Error) -> ClientError {
    ClientError::Unreachable {
        addr,
        reason: e.without_url().to_string(),
    }
}

/// Turns an error reply into [`ClientError::Status`] with the body's reason.
async fn status_error(addr: SocketAddr, resp: reqwest::Response) -> ClientError {
    let status = resp.status();
    let message = match resp.json::<ErrorBody>().await {
        Ok(b) => b.error,
        Err(_) => status.canonical_reason().unwrap_or("error").to_string(),
    };
    ClientError::Status {
        addr,
        status: status.as_u16(),
        message,
    }
}

/// URL-encodes a query value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
