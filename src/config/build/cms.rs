//! The `[[cms]]` tables: each clustered mailbox server with its two nodes (names unique among all
//! roles, certificates as for hubs) and its storage groups, whose mailboxes and hosted domains
//! each belong to one storage group of the site.

use toml::Spanned;

use super::checked_domain;
use super::site::RoleTls;
use crate::config::locate::{Locator, Seen};
use crate::config::raw::RawCms;
use crate::config::{Cms, ConfigError, Node, StorageGroup};

/// Checks every CMS, in file order.
pub(super) fn build(
    at: &Locator,
    raw: Vec<RawCms>,
    roles: &mut Seen,
    site_tls: &RoleTls,
) -> Result<Vec<Cms>, ConfigError> {
    let mut sgs = Seen::new(at, "cms.storage_group.name", "storage group");
    let mut mailboxes = Seen::new(at, "cms.storage_group.mailboxes", "mailbox");
    let mut domains = Seen::new(at, "cms.storage_group.domains", "hosted domain");
    let mut cms_list = Vec::new();
    for c in raw {
        roles.add(&c.name, "")?;
        if c.node.len() != 2 {
            return Err(at.err(
                &c.name.span(),
                "cms.node",
                format!(
                    "CMS `{}` has {} node(s); a clustered mailbox server has exactly two ([[cms.node]])",
                    c.name.get_ref(),
                    c.node.len()
                ),
            ));
        }
        if c.log_file_size.0 < 4096 {
            return Err(at.err(&c.name.span(), "cms.log_file_size", "must be at least 4KiB"));
        }
        // Default 1 GiB, and never less than two generations: a copy one behind is normal, so a
        // smaller bound (set, or left below a huge log_file_size) counts as two.
        let max_log_backlog = c
            .max_log_backlog
            .map_or(1 << 30, |b| b.0)
            .max(c.log_file_size.0.saturating_mul(2));
        let witness = super::witness::build(at, &c)?;
        let mut nodes = Vec::new();
        for n in c.node {
            roles.add(&n.name, c.name.get_ref())?;
            let (tls, require_tls) = site_tls.resolve(
                at,
                "cms.node",
                n.tls_certificate.as_ref(),
                n.tls_private_key.as_ref(),
                n.require_tls.as_ref(),
            )?;
            nodes.push(Node {
                name: n.name.into_inner(),
                smtp: n.smtp,
                admin: n.admin,
                tls,
                require_tls,
            });
        }
        let mut storage_groups = Vec::new();
        for sg in c.storage_group {
            sgs.add(&sg.name, c.name.get_ref())?;
            let mut mbx = Vec::new();
            for m in &sg.mailboxes {
                let addr = checked_address(at, m)?;
                mailboxes.add(m, sg.name.get_ref())?;
                mbx.push(addr);
            }
            let mut doms = Vec::new();
            for d in &sg.domains {
                let dom = checked_domain(at, d, "cms.storage_group.domains")?;
                domains.add(d, sg.name.get_ref())?;
                doms.push(dom);
            }
            storage_groups.push(StorageGroup {
                name: sg.name.into_inner(),
                mailboxes: mbx,
                domains: doms,
            });
        }
        cms_list.push(Cms {
            name: c.name.into_inner(),
            auto_database_mount_dial: c.auto_database_mount_dial,
            witness,
            log_file_size: c.log_file_size.0,
            max_log_backlog,
            log_tail: c.log_tail,
            nodes,
            storage_groups,
        });
    }
    Ok(cms_list)
}

/// A mailbox address, lower-cased as routing compares it.
fn checked_address(at: &Locator, m: &Spanned<String>) -> Result<String, ConfigError> {
    let addr = m.get_ref().trim().to_ascii_lowercase();
    match addr.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(addr)
        }
        _ => Err(at.err(
            &m.span(),
            "cms.storage_group.mailboxes",
            format!("`{}` is not a mailbox address (local@domain)", m.get_ref()),
        )),
    }
}
