//! The etcd witness: the lease held in an etcd cluster the site already runs.
//!
//! Two keys under the CMS's prefix:
//! - `<prefix>/holder`: the holder's node name, attached to an etcd lease of the holder's with a
//!   TTL of the lease duration. etcd expires it on the server (its leader's own clock) unless the
//!   holder keeps it alive, and deletes it at once when the holder revokes it (release);
//! - `<prefix>/note`: the note board, never expiring: the last holder, the highest epoch ever
//!   active and that node's LastLogGenerated per storage group.
//!
//! Every write is one etcd transaction that compares what it read (the holder key absent, or still
//! on this node's etcd lease; the note at the revision read), so two nodes can never both take the
//! lease and epochs on the note only grow: the key revisions are the fencing order. Time:
//! - the holder counts on its lease for the lease duration from just *before* the keep-alive or
//!   grant that (re)started the TTL on the server, less the machine's safety margin;
//! - the other node takes the lease only once the holder key is gone, which etcd does no sooner
//!   than a full TTL after the holder's last keep-alive reached it. No clock of another host is
//!   read; the clocks need only run at about the same rate.
//!
//! The etcd v3 API is called through its JSON gateway (`/v3/kv/txn`, `/v3/lease/*`, part of every
//! etcd server since 3.4) with reqwest. The `etcd-client` crate speaks gRPC but compiles etcd's
//! `.proto` files in its build script, which needs `protoc` on the build machine; that would make
//! `cargo build` fail on a fresh machine for every site, including those with a file share witness.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::{Lease, Seen, WitnessError};
use crate::clock::mono_ms;
use crate::config::EtcdConfig;
use crate::smtp::{crypto_provider, read_certificates};

/// How long one request to one endpoint may take: well inside a lease duration, so a silent
/// endpoint is passed over while the holder can still renew through another.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(800);
/// How long one witness operation may take over all endpoints.
const OPERATION_TIMEOUT: Duration = Duration::from_millis(2_000);

/// One node's handle on the etcd witness of its CMS. Clones share the etcd lease and the session.
#[derive(Debug, Clone)]
pub struct EtcdWitness {
    node: String,
    endpoints: Vec<String>,
    holder_key: String,
    note_key: String,
    http: reqwest::Client,
    credentials: Option<(String, String)>,
    session: Arc<Mutex<Session>>,
}

/// What this node keeps between operations (one operation at a time).
#[derive(Debug, Default)]
struct Session {
    /// The etcd lease the holder key is attached to while we hold it.
    lease: Option<i64>,
    /// The auth token, when the cluster has authentication on.
    token: Option<String>,
    /// The endpoint that answered last: tried first next time.
    endpoint: usize,
}

/// The note board, as stored under `<prefix>/note`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// The node that held the lease when the note was written.
    pub holder: String,
    /// The highest epoch ever active.
    pub epoch: u64,
    /// That node's LastLogGenerated per storage group.
    #[serde(default)]
    pub last_log_generated: BTreeMap<String, u64>,
}

/// A key as read, with the revisions a transaction compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    /// The value.
    pub value: T,
    /// Revision of the key's last write.
    pub mod_revision: i64,
    /// The etcd lease it is attached to (0: none).
    pub lease: i64,
}

/// Both keys, read in one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    /// Who holds the lease, if anyone.
    pub holder: Option<Entry<String>>,
    /// The note board, if ever written.
    pub note: Option<Entry<Note>>,
}

/// What an acquire does with what it read: the decision, free of I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The other node holds the lease.
    Other(Lease),
    /// Ours already, and the note says what it should.
    Ours(Lease),
    /// Write the holder key (`take`) and the note in one transaction, if nothing changed since the
    /// read; the lease is ours if it succeeds.
    Write {
        /// Take the holder key (it is absent, or a previous instance of this node left it).
        take: bool,
        /// The note to write.
        note: Note,
        /// The lease once written.
        lease: Lease,
    },
}

/// Decides an acquire by `node`, holding etcd lease `lease_id`, at `epoch` with its `note` (an
/// active node's LastLogGenerated; `None` carries the previous note over).
pub fn plan(
    node: &str,
    lease_id: i64,
    read: &Read,
    duration_ms: u64,
    epoch: u64,
    note: Option<&BTreeMap<String, u64>>,
) -> Plan {
    let old = read
        .note
        .as_ref()
        .map(|n| n.value.clone())
        .unwrap_or_default();
    let version = read.holder.as_ref().map_or(0, |h| h.mod_revision) as u64;
    if let Some(h) = read.holder.as_ref().filter(|h| h.value != node) {
        return Plan::Other(Lease {
            holder: h.value.clone(),
            epoch: old.epoch,
            version,
            duration_ms,
            released: false,
            last_log_generated: old.last_log_generated,
        });
    }
    let next = Note {
        holder: node.to_string(),
        epoch: epoch.max(old.epoch),
        last_log_generated: note.cloned().unwrap_or(old.last_log_generated.clone()),
    };
    let lease = Lease {
        holder: node.to_string(),
        epoch: next.epoch,
        version,
        duration_ms,
        released: false,
        last_log_generated: next.last_log_generated.clone(),
    };
    let take = read.holder.as_ref().is_none_or(|h| h.lease != lease_id);
    if !take && read.note.is_some() && next == old {
        Plan::Ours(lease)
    } else {
        Plan::Write {
            take,
            note: next,
            lease,
        }
    }
}

/// What a read means to a node that does not (know it) hold(s) the lease.
pub fn judge(node: &str, read: Read, duration_ms: u64, now_ms: u64) -> Option<Seen> {
    let note = read.note.map(|n| (n.value, n.mod_revision));
    match (read.holder, note) {
        (Some(h), note) => {
            let (note, _) = note.unwrap_or_default();
            // Another node's lease stands as long as its key exists: etcd deletes it when it
            // expires. Ours from a read (a previous instance of this node) counts for nothing.
            let until_ms = if h.value == node {
                now_ms
            } else {
                now_ms + duration_ms
            };
            Some(Seen {
                lease: Lease {
                    holder: h.value,
                    epoch: note.epoch,
                    version: h.mod_revision as u64,
                    duration_ms,
                    released: false,
                    last_log_generated: note.last_log_generated,
                },
                until_ms,
            })
        }
        (None, Some((note, revision))) => Some(Seen {
            lease: Lease {
                holder: note.holder,
                epoch: note.epoch,
                version: revision as u64,
                duration_ms,
                released: true,
                last_log_generated: note.last_log_generated,
            },
            until_ms: now_ms,
        }),
        (None, None) => None,
    }
}

impl EtcdWitness {
    /// A handle for `node` on the etcd witness `config`. Reads the password and TLS files now, so a
    /// wrong path stops the node at start-up naming it; does not contact etcd (it may be down when
    /// the node starts, which is a state to report).
    pub fn new(config: &EtcdConfig, node: &str) -> Result<EtcdWitness, WitnessError> {
        let refused = |at: &PathBuf, reason: String| WitnessError::Refused {
            endpoint: at.display().to_string(),
            reason,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .no_proxy();
        if let Some(ca) = &config.tls_ca {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates(ca).map_err(|e| refused(ca, e))? {
                roots.add(cert).map_err(|e| refused(ca, e.to_string()))?;
            }
            let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| refused(ca, e.to_string()))?
                .with_root_certificates(roots);
            let tls = match &config.tls_client {
                Some(files) => {
                    use rustls::pki_types::pem::PemObject;
                    let chain = read_certificates(&files.certificate)
                        .map_err(|e| refused(&files.certificate, e))?;
                    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.private_key)
                        .map_err(|e| refused(&files.private_key, e.to_string()))?;
                    tls.with_client_auth_cert(chain, key)
                        .map_err(|e| refused(&files.certificate, e.to_string()))?
                }
                None => tls.with_no_client_auth(),
            };
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder.build().map_err(|e| WitnessError::Refused {
            endpoint: config.endpoints.join(","),
            reason: e.to_string(),
        })?;
        let credentials = match (&config.user, &config.password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file)
                    .map_err(|e| refused(file, e.to_string()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                Some((user.clone(), password))
            }
            _ => None,
        };
        let prefix = config.prefix.trim_end_matches('/');
        Ok(EtcdWitness {
            node: node.to_string(),
            endpoints: config.endpoints.clone(),
            holder_key: format!("{prefix}/holder"),
            note_key: format!("{prefix}/note"),
            http,
            credentials,
            session: Arc::default(),
        })
    }

    /// Reads the lease: see [`judge`].
    pub async fn observe(&self, duration_ms: u64) -> Result<Option<Seen>, WitnessError> {
        let mut session = self.session.lock().await;
        let read = self.timed(self.read(&mut session)).await?;
        Ok(judge(&self.node, read, duration_ms, mono_ms()))
    }

    /// Takes or renews the lease: keeps this node's etcd lease alive (or grants a new one), reads
    /// both keys and writes what [`plan`] says in one transaction.
    pub async fn acquire(
        &self,
        duration_ms: u64,
        epoch: u64,
        note: Option<&BTreeMap<String, u64>>,
    ) -> Result<Seen, WitnessError> {
        let start_ms = mono_ms();
        let mut session = self.session.lock().await;
        self.timed(async {
            let (lease_id, ttl_ms) = self.keep_alive(&mut session, duration_ms).await?;
            // The holder counts on no more than etcd gave (it may raise a TTL, never lower it).
            let counted = duration_ms.min(ttl_ms);
            let read = self.read(&mut session).await?;
            match plan(&self.node, lease_id, &read, duration_ms, epoch, note) {
                Plan::Other(lease) => Ok(Seen {
                    lease,
                    until_ms: mono_ms() + duration_ms,
                }),
                Plan::Ours(lease) => Ok(Seen {
                    lease,
                    until_ms: start_ms + counted,
                }),
                Plan::Write {
                    take,
                    note,
                    mut lease,
                } => {
                    let revision = self.write(&mut session, &read, lease_id, take, &note).await?;
                    if take {
                        info!(node = %self.node, epoch = note.epoch, revision, "took the etcd witness lease");
                    }
                    lease.version = revision as u64;
                    Ok(Seen {
                        lease,
                        until_ms: start_ms + counted,
                    })
                }
            }
        })
        .await
    }

    /// Revokes this node's etcd lease, which deletes the holder key at once. A holder key left by
    /// a previous instance of this node is revoked too; another node's is left alone.
    pub async fn release(&self) -> Result<(), WitnessError> {
        let mut session = self.session.lock().await;
        self.timed(async {
            let mut ids: Vec<i64> = session.lease.take().into_iter().collect();
            let read = self.read(&mut session).await?;
            if let Some(h) = read.holder.filter(|h| h.value == self.node && h.lease != 0) {
                ids.push(h.lease);
            }
            ids.dedup();
            for id in ids {
                match self
                    .call(
                        &mut session,
                        "/v3/lease/revoke",
                        json!({ "ID": id.to_string() }),
                    )
                    .await
                {
                    Ok(_) | Err(Call::Etcd { code: 5, .. }) => {}
                    Err(e) => return Err(self.failed(e)),
                }
            }
            Ok(())
        })
        .await
    }

    /// Bounds a whole operation: a witness that answers slowly is unavailable, not a stall.
    async fn timed<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, WitnessError>>,
    ) -> Result<T, WitnessError> {
        tokio::time::timeout(OPERATION_TIMEOUT, op)
            .await
            .unwrap_or_else(|_| {
                Err(WitnessError::Unavailable {
                    at: self.endpoints.join(","),
                    reason: format!("no answer within {OPERATION_TIMEOUT:?}"),
                })
            })
    }

    /// Keeps our etcd lease alive, or grants a new one if we have none or it expired. Returns its
    /// id and the TTL etcd reports, in ms.
    async fn keep_alive(
        &self,
        session: &mut Session,
        duration_ms: u64,
    ) -> Result<(i64, u64), WitnessError> {
        if let Some(id) = session.lease {
            let answer = self
                .call(
                    session,
                    "/v3/lease/keepalive",
                    json!({ "ID": id.to_string() }),
                )
                .await
                .map_err(|e| self.failed(e))?;
            let ttl = answer
                .get("result")
                .and_then(|r| r.get("TTL"))
                .map(number)
                .unwrap_or(0);
            if ttl > 0 {
                return Ok((id, ttl as u64 * 1000));
            }
            debug!(node = %self.node, lease = id, "etcd lease expired; granting a new one");
            session.lease = None;
        }
        let ttl_s = duration_ms.div_ceil(1000).max(1);
        let answer = self
            .call(session, "/v3/lease/grant", json!({ "TTL": ttl_s }))
            .await
            .map_err(|e| self.failed(e))?;
        let id = answer.get("ID").map(number).unwrap_or(0);
        let ttl = answer.get("TTL").map(number).unwrap_or(0);
        if id == 0 || ttl <= 0 {
            return Err(self.corrupt(&format!("lease grant answered {answer}")));
        }
        session.lease = Some(id);
        Ok((id, ttl as u64 * 1000))
    }

    /// Reads both keys in one revision.
    async fn read(&self, session: &mut Session) -> Result<Read, WitnessError> {
        let body = json!({
            "success": [
                { "request_range": { "key": B64.encode(&self.holder_key) } },
                { "request_range": { "key": B64.encode(&self.note_key) } },
            ]
        });
        let answer: TxnAnswer = self.txn(session, body).await?;
        let mut kvs = answer
            .responses
            .into_iter()
            .map(|r| r.response_range.and_then(|r| r.kvs.into_iter().next()));
        let holder = match kvs.next().flatten() {
            Some(kv) => Some(Entry {
                value: String::from_utf8(kv.bytes(&self.holder_key)?)
                    .map_err(|e| self.corrupt(&e.to_string()))?,
                mod_revision: kv.mod_revision,
                lease: kv.lease,
            }),
            None => None,
        };
        let note = match kvs.next().flatten() {
            Some(kv) => match serde_json::from_slice::<Note>(&kv.bytes(&self.note_key)?) {
                Ok(value) => Some(Entry {
                    value,
                    mod_revision: kv.mod_revision,
                    lease: kv.lease,
                }),
                Err(e) => {
                    // Like a corrupt lease file: the note is rewritten by the next holder.
                    warn!(key = %self.note_key, error = %e, "corrupt etcd witness note counts as empty");
                    None
                }
            },
            None => None,
        };
        Ok(Read { holder, note })
    }

    /// Writes the note (and the holder key if `take`) if both keys are as `read` found them.
    /// Returns the revision of the write; `Busy` if something changed in between.
    async fn write(
        &self,
        session: &mut Session,
        read: &Read,
        lease_id: i64,
        take: bool,
        note: &Note,
    ) -> Result<i64, WitnessError> {
        let holder_key = B64.encode(&self.holder_key);
        let note_key = B64.encode(&self.note_key);
        let mut compare = vec![match (&read.holder, take) {
            (None, _) => json!({ "target": "CREATE", "key": holder_key, "create_revision": "0" }),
            (Some(h), true) => {
                json!({ "target": "MOD", "key": holder_key, "mod_revision": h.mod_revision.to_string() })
            }
            (Some(_), false) => {
                json!({ "target": "LEASE", "key": holder_key, "lease": lease_id.to_string() })
            }
        }];
        compare.push(match &read.note {
            None => json!({ "target": "CREATE", "key": note_key, "create_revision": "0" }),
            Some(n) => {
                json!({ "target": "MOD", "key": note_key, "mod_revision": n.mod_revision.to_string() })
            }
        });
        let value = serde_json::to_vec(note).expect("a Note (strings and integers) serialises");
        let mut success =
            vec![json!({ "request_put": { "key": note_key, "value": B64.encode(value) } })];
        if take {
            success.push(json!({ "request_put": {
                "key": holder_key,
                "value": B64.encode(&self.node),
                "lease": lease_id.to_string(),
            } }));
        }
        let answer: TxnAnswer = self
            .txn(session, json!({ "compare": compare, "success": success }))
            .await?;
        if answer.succeeded {
            Ok(answer.header.revision)
        } else {
            Err(WitnessError::Busy)
        }
    }

    async fn txn(&self, session: &mut Session, body: Value) -> Result<TxnAnswer, WitnessError> {
        let answer = self
            .call(session, "/v3/kv/txn", body)
            .await
            .map_err(|e| self.failed(e))?;
        serde_json::from_value(answer.clone())
            .map_err(|e| self.corrupt(&format!("{e} in the answer {answer}")))
    }

    /// One call, to the endpoint that answered last first, then the others. Authenticates first
    /// when credentials are configured, and once more if etcd says the token is no longer valid.
    async fn call(&self, session: &mut Session, path: &str, body: Value) -> Result<Value, Call> {
        let mut last = Call::Transport {
            endpoint: String::new(),
            reason: "no endpoint".into(),
        };
        for i in 0..self.endpoints.len() {
            let at = (session.endpoint + i) % self.endpoints.len();
            let endpoint = &self.endpoints[at];
            for attempt in 0..2 {
                if self.credentials.is_some() && session.token.is_none() {
                    match self.authenticate(endpoint).await {
                        Ok(token) => session.token = Some(token),
                        Err(e) => {
                            last = e;
                            break;
                        }
                    }
                }
                match self
                    .post(endpoint, path, &body, session.token.as_deref())
                    .await
                {
                    Ok(answer) => {
                        session.endpoint = at;
                        return Ok(answer);
                    }
                    Err(Call::Etcd { code: 16, .. }) if attempt == 0 && session.token.is_some() => {
                        session.token = None;
                    }
                    // An answer from etcd about the request itself: another endpoint says the same.
                    Err(e @ Call::Etcd { code, .. }) if code != 14 && code != 4 => return Err(e),
                    Err(e) => {
                        last = e;
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    async fn authenticate(&self, endpoint: &str) -> Result<String, Call> {
        let (name, password) = self.credentials.as_ref().expect("called with credentials");
        let answer = self
            .post(
                endpoint,
                "/v3/auth/authenticate",
                &json!({ "name": name, "password": password }),
                None,
            )
            .await?;
        match answer.get("token").and_then(Value::as_str) {
            Some(token) => Ok(token.to_string()),
            None => Err(Call::Etcd {
                endpoint: endpoint.to_string(),
                code: 16,
                message: format!("authenticate answered without a token: {answer}"),
            }),
        }
    }

    async fn post(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<Value, Call> {
        let transport = |e: reqwest::Error| Call::Transport {
            endpoint: endpoint.to_string(),
            reason: e.without_url().to_string(),
        };
        let mut req = self.http.post(format!("{endpoint}{path}")).json(body);
        if let Some(token) = token {
            req = req.header("Authorization", token);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let answer: Value = resp.json().await.map_err(transport)?;
        if let Some(message) = answer.get("error").or(answer.get("message")) {
            return Err(Call::Etcd {
                endpoint: endpoint.to_string(),
                code: answer.get("code").and_then(Value::as_i64).unwrap_or(2),
                message: message.as_str().unwrap_or_default().to_string(),
            });
        }
        if !status.is_success() {
            return Err(Call::Etcd {
                endpoint: endpoint.to_string(),
                code: 2,
                message: format!("HTTP {status}: {answer}"),
            });
        }
        Ok(answer)
    }

    fn failed(&self, e: Call) -> WitnessError {
        match e {
            Call::Etcd {
                endpoint,
                code: 7 | 16,
                message,
            } => WitnessError::Refused {
                endpoint,
                reason: message,
            },
            Call::Etcd {
                endpoint, message, ..
            } => WitnessError::Unavailable {
                at: endpoint,
                reason: message,
            },
            Call::Transport { endpoint, reason } => WitnessError::Unavailable {
                at: endpoint,
                reason,
            },
        }
    }

    fn corrupt(&self, reason: &str) -> WitnessError {
        WitnessError::Corrupt {
            at: format!("{} ({})", self.holder_key, self.endpoints.join(",")),
            reason: reason.to_string(),
        }
    }
}

/// How a call failed: no answer, or an answer that is an etcd error (gRPC status `code`).
#[derive(Debug)]
enum Call {
    Transport {
        endpoint: String,
        reason: String,
    },
    Etcd {
        endpoint: String,
        code: i64,
        message: String,
    },
}

/// The gateway's answer to a transaction (int64 fields come as strings, defaults are left out).
#[derive(Debug, Deserialize)]
struct TxnAnswer {
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<TxnResponse>,
}

#[derive(Debug, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct TxnResponse {
    #[serde(default)]
    response_range: Option<RangeAnswer>,
}

#[derive(Debug, Deserialize)]
struct RangeAnswer {
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Debug, Deserialize)]
struct Kv {
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    lease: i64,
}

impl Kv {
    fn bytes(&self, key: &str) -> Result<Vec<u8>, WitnessError> {
        B64.decode(&self.value).map_err(|e| WitnessError::Corrupt {
            at: key.to_string(),
            reason: format!("value is not base64: {e}"),
        })
    }
}

/// An int64 of the gateway: a JSON string of digits (or a number).
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(number(&Value::deserialize(d)?))
}

fn number(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_i64().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests;
