//! What a valid site file leaves open to the network. The one setting no site should run with
//! (the example admin token on an address beyond loopback) is refused when the file is read; the
//! weaker ones are warnings, logged at start-up and reported by `hubrelay health` (`Exposure`).

use std::net::SocketAddr;

use super::{DeliveryTls, Site};

/// The admin token of the example site file: anyone who has read the README knows it.
pub const EXAMPLE_ADMIN_TOKEN: &str = "change-me";

/// A part of the site that other hosts could reach without a real secret or in clear text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExposureWarning {
    /// Hubs deliver to this node without verifying it (`delivery_tls` neither `required` nor
    /// `mutual`) while it
    /// listens beyond loopback: mail crosses the network readable and to whoever answers there.
    ClearTextDelivery {
        /// The node.
        node: String,
        /// Its SMTP listener.
        smtp: SocketAddr,
        /// The site's `delivery_tls`.
        delivery_tls: DeliveryTls,
    },
    /// The role's admin API is plain HTTP (`admin_tls = false`) beyond loopback: the bearer
    /// token and the mailbox listings cross the network readable.
    AdminOverHttp {
        /// The hub or node.
        role: String,
        /// Its admin listener.
        admin: SocketAddr,
    },
}

impl std::fmt::Display for ExposureWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExposureWarning::ClearTextDelivery {
                node,
                smtp,
                delivery_tls,
            } => write!(
                f,
                "{node} takes deliveries on {smtp}, beyond loopback, and delivery_tls is {}: hubs send mail to it \
                 without verifying who answers; set delivery_tls = \"required\" (or \"mutual\", hubs proven by certificate) with tls_ca",
                match delivery_tls {
                    DeliveryTls::Off => "\"off\" (clear text)",
                    DeliveryTls::Opportunistic => "\"opportunistic\" (the node's certificate is not checked)",
                    DeliveryTls::Required | DeliveryTls::Mutual => "verified",
                }
            ),
            ExposureWarning::AdminOverHttp { role, admin } => write!(
                f,
                "{role}'s admin API listens on {admin}, beyond loopback, over plain HTTP: the admin token \
                 and mailbox listings cross the network readable; set admin_tls = true"
            ),
        }
    }
}

/// True for an address only this host can reach.
fn local(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The example admin token on an admin API beyond loopback: the role named and its address, the
/// first such in config order. Reading the site file refuses it.
pub fn example_token_exposed(site: &Site) -> Option<(String, SocketAddr)> {
    if site.admin_token != EXAMPLE_ADMIN_TOKEN {
        return None;
    }
    admin_listeners(site).find(|(_, admin)| !local(admin))
}

fn admin_listeners(site: &Site) -> impl Iterator<Item = (String, SocketAddr)> + '_ {
    let hubs = site.hubs.iter().map(|h| (h.name.clone(), h.admin));
    let nodes = site
        .cms
        .iter()
        .flat_map(|c| &c.nodes)
        .map(|n| (n.name.clone(), n.admin));
    hubs.chain(nodes)
}

/// Everything weaker than it should be once roles listen beyond loopback.
pub fn exposure(site: &Site) -> Vec<ExposureWarning> {
    let delivery = site
        .cms
        .iter()
        .flat_map(|c| &c.nodes)
        .filter(|n| !site.delivery_tls.verifies_nodes() && !local(&n.smtp))
        .map(|n| ExposureWarning::ClearTextDelivery {
            node: n.name.clone(),
            smtp: n.smtp,
            delivery_tls: site.delivery_tls,
        });
    let admin = admin_listeners(site)
        .filter(|(_, admin)| !site.admin_tls.is_on() && !local(admin))
        .map(|(role, admin)| ExposureWarning::AdminOverHttp { role, admin });
    delivery.chain(admin).collect()
}
