//! How a hub secures its SMTP connections to mailbox nodes (`delivery_tls`, `tls_ca`), and, under
//! `delivery_tls = "mutual"`, which certificate it presents to them.
//!
//! Built when the hub opens, so a missing or unreadable CA or certificate stops the hub at
//! start-up rather than failing every delivery later, and again on SIGHUP (a renewed certificate;
//! a failed reload keeps what was in use). Verification is against `tls_ca` only (never a public
//! root store): inside a site the nodes' certificates come from the site's own CA.

use std::net::SocketAddr;
use std::path::PathBuf;

use lettre::transport::smtp::client::{
    AsyncSmtpConnection, Certificate, CertificateStore, Identity, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;

use crate::config::{DeliveryTls, Site};
use crate::smtp::{read_certificates, TlsFiles};

/// Why the hub's TLS settings for delivery cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NodeTlsError {
    /// The CA file is missing, unreadable or holds no certificate.
    #[error("tls_ca {path}: {message}")]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// lettre refused to build the client configuration.
    #[error("delivery_tls: cannot set up the TLS client: {0}")]
    Client(#[source] lettre::transport::smtp::Error),
    /// `delivery_tls = "mutual"` and the hub's certificate or key cannot be used.
    #[error("delivery_tls = \"mutual\": the hub's certificate {path}: {message}")]
    Identity {
        /// The certificate or key file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// The delivery policy with what it needs: the CA certificates for `required` and `mutual`, and
/// the hub's own certificate for `mutual`.
#[derive(Clone)]
pub struct NodeTls {
    mode: DeliveryTls,
    roots: Vec<Certificate>,
    identity: Option<Identity>,
}

impl NodeTls {
    /// What hub `name` of `site` delivers with: its own certificate is the identity.
    pub fn for_hub(site: &Site, name: &str) -> Result<NodeTls, NodeTlsError> {
        Self::from_site(site, site.hub(name).and_then(|h| h.tls.as_ref()))
    }

    /// Reads `tls_ca` if the site needs it, and `identity` (the hub's certificate) under
    /// `delivery_tls = "mutual"`.
    fn from_site(site: &Site, identity: Option<&TlsFiles>) -> Result<NodeTls, NodeTlsError> {
        let mut roots = Vec::new();
        if site.delivery_tls.verifies_nodes() {
            if let Some(path) = &site.tls_ca {
                let ca_error = |message| NodeTlsError::Ca {
                    path: path.clone(),
                    message,
                };
                for der in read_certificates(path).map_err(ca_error)? {
                    roots.push(
                        Certificate::from_der(der.to_vec()).map_err(|e| ca_error(e.to_string()))?,
                    );
                }
            }
        }
        let identity = match (site.delivery_tls, identity) {
            (DeliveryTls::Mutual, Some(files)) => Some(hub_identity(files)?),
            (DeliveryTls::Mutual, None) => {
                return Err(NodeTlsError::Identity {
                    path: site.file.clone(),
                    message: "this hub has no tls_certificate".into(),
                })
            }
            _ => None,
        };
        Ok(NodeTls {
            mode: site.delivery_tls,
            roots,
            identity,
        })
    }

    /// The policy for one node, addressed (and, when verified, named) by its SMTP address.
    pub(crate) fn for_node(&self, addr: SocketAddr) -> Result<ForNode, NodeTlsError> {
        let builder =
            TlsParameters::builder(addr.ip().to_string()).certificate_store(CertificateStore::None);
        let verified = |builder| {
            self.roots.iter().fold(
                builder,
                |b: lettre::transport::smtp::client::TlsParametersBuilder, root| {
                    b.add_root_certificate(root.clone())
                },
            )
        };
        let built = match (self.mode, &self.identity) {
            (DeliveryTls::Off, _) => return Ok(ForNode::Off),
            (DeliveryTls::Opportunistic, _) => builder
                .dangerous_accept_invalid_certs(true)
                .dangerous_accept_invalid_hostnames(true)
                .build_rustls()
                .map(ForNode::Opportunistic),
            (DeliveryTls::Mutual, Some(identity)) => verified(builder)
                .identify_with(identity.clone())
                .build_rustls()
                .map(ForNode::Mutual),
            (DeliveryTls::Required | DeliveryTls::Mutual, _) => {
                verified(builder).build_rustls().map(ForNode::Required)
            }
        };
        built.map_err(NodeTlsError::Client)
    }
}

/// The hub's certificate and key as lettre takes them.
///
/// lettre 0.11's rustls backend takes `Identity::from_pem`'s first argument as the certificate's
/// DER bytes as they are (despite the name), and one certificate only: so the leaf is read here
/// and handed over in DER; an intermediate in the file is not sent (a site CA signs the roles'
/// certificates directly, as `hubrelay tls generate --site` does).
fn hub_identity(files: &TlsFiles) -> Result<Identity, NodeTlsError> {
    let failed = |path: &PathBuf, message: String| NodeTlsError::Identity {
        path: path.clone(),
        message,
    };
    let chain = read_certificates(&files.certificate).map_err(|m| failed(&files.certificate, m))?;
    let key = std::fs::read(&files.private_key)
        .map_err(|e| failed(&files.private_key, format!("cannot read: {e}")))?;
    Identity::from_pem(&chain[0], &key).map_err(|e| failed(&files.private_key, e.to_string()))
}

/// What to do on a new connection to one node.
#[derive(Clone)]
pub(crate) enum ForNode {
    /// Stay in clear text.
    Off,
    /// STARTTLS if offered, certificate unchecked.
    Opportunistic(TlsParameters),
    /// STARTTLS or no delivery, certificate verified.
    Required(TlsParameters),
    /// As `Required`, presenting the hub's certificate, which is what authenticates it.
    Mutual(TlsParameters),
}

impl ForNode {
    /// Applies the policy to a freshly connected, greeted connection; true when the hub is then
    /// authenticated by its certificate (no AUTH needed).
    pub(crate) async fn secure(
        &self,
        conn: &mut AsyncSmtpConnection,
        client_id: &ClientId,
    ) -> Result<bool, String> {
        let parameters =
            match self {
                ForNode::Off => return Ok(false),
                ForNode::Opportunistic(_) if !conn.can_starttls() => return Ok(false),
                ForNode::Required(_) | ForNode::Mutual(_) if !conn.can_starttls() => return Err(
                    "the node does not offer STARTTLS (delivery_tls = \"required\" or \"mutual\")"
                        .into(),
                ),
                ForNode::Opportunistic(p) | ForNode::Required(p) | ForNode::Mutual(p) => p.clone(),
            };
        conn.starttls(parameters, client_id)
            .await
            .map_err(|e| format!("STARTTLS: {e}"))?;
        Ok(matches!(self, ForNode::Mutual(_)))
    }
}
