//! The CLI's side of the admin API: authenticated JSON calls with a short timeout, so one dead hub
//! cannot stall `stats`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ErrorBody;

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
}

/// An admin API client for one site.
#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    token: String,
}

impl AdminClient {
    /// A client sending `token` with every call.
    pub fn new(token: &str) -> AdminClient {
        Self::with_timeout(token, TIMEOUT)
    }

    /// A client with its own timeout (heartbeats must fail fast, not stall the cluster driver).
    pub fn with_timeout(token: &str, timeout: Duration) -> AdminClient {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .expect("a client with only a timeout set always builds");
        AdminClient {
            http,
            token: token.to_string(),
        }
    }

    /// `GET http://addr{path}` decoded as `T`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<T, ClientError> {
        let req = self.http.get(format!("http://{addr}{path}"));
        self.call(addr, req).await
    }

    /// `GET http://addr{path}` as raw bytes.
    pub async fn get_bytes(&self, addr: SocketAddr, path: &str) -> Result<Vec<u8>, ClientError> {
        let req = self.http.get(format!("http://{addr}{path}"));
        let resp = self.send(addr, req).await?;
        Ok(resp
            .bytes()
            .await
            .map_err(|e| unreachable(addr, e))?
            .to_vec())
    }

    /// `POST http://addr{path}` with a JSON body, decoded as `T`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let req = self.http.post(format!("http://{addr}{path}")).json(body);
        self.call(addr, req).await
    }

    /// `DELETE http://addr{path}` with a JSON body, decoded as `T`.
    pub async fn delete<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let req = self.http.delete(format!("http://{addr}{path}")).json(body);
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
