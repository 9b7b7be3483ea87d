//! How a hub secures its SMTP connections to mailbox nodes (`delivery_tls`, `tls_ca`).
//!
//! Built once when the hub opens, so a missing or unreadable CA stops the hub at start-up rather
//! than failing every delivery later. Verification is against `tls_ca` only (never a public root
//! store): inside a site the nodes' certificates come from the site's own CA.

use std::net::SocketAddr;
use std::path::PathBuf;

use lettre::transport::smtp::client::{
    AsyncSmtpConnection, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;

use crate::config::{DeliveryTls, Site};
use crate::smtp::read_certificates;

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
}

/// The delivery policy with what it needs: the CA certificates for `required`.
#[derive(Clone)]
pub struct NodeTls {
    mode: DeliveryTls,
    roots: Vec<Certificate>,
}

impl NodeTls {
    /// Reads `tls_ca` if the site needs it (`delivery_tls = "required"`).
    pub fn from_site(site: &Site) -> Result<NodeTls, NodeTlsError> {
        let mut roots = Vec::new();
        if site.delivery_tls == DeliveryTls::Required {
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
        Ok(NodeTls {
            mode: site.delivery_tls,
            roots,
        })
    }

    /// The policy for one node, addressed (and, when verified, named) by its SMTP address.
    pub(crate) fn for_node(&self, addr: SocketAddr) -> Result<ForNode, NodeTlsError> {
        let builder =
            TlsParameters::builder(addr.ip().to_string()).certificate_store(CertificateStore::None);
        let built = match self.mode {
            DeliveryTls::Off => return Ok(ForNode::Off),
            DeliveryTls::Opportunistic => builder
                .dangerous_accept_invalid_certs(true)
                .dangerous_accept_invalid_hostnames(true)
                .build_rustls()
                .map(ForNode::Opportunistic),
            DeliveryTls::Required => self
                .roots
                .iter()
                .fold(builder, |b, root| b.add_root_certificate(root.clone()))
                .build_rustls()
                .map(ForNode::Required),
        };
        built.map_err(NodeTlsError::Client)
    }
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
}

impl ForNode {
    /// Applies the policy to a freshly connected, greeted connection.
    pub(crate) async fn secure(
        &self,
        conn: &mut AsyncSmtpConnection,
        client_id: &ClientId,
    ) -> Result<(), String> {
        let parameters = match self {
            ForNode::Off => return Ok(()),
            ForNode::Opportunistic(_) if !conn.can_starttls() => return Ok(()),
            ForNode::Required(_) if !conn.can_starttls() => {
                return Err("the node does not offer STARTTLS (delivery_tls = \"required\")".into())
            }
            ForNode::Opportunistic(p) | ForNode::Required(p) => p.clone(),
        };
        conn.starttls(parameters, client_id)
            .await
            .map_err(|e| format!("STARTTLS: {e}"))
    }
}
