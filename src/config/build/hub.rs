//! The `[[hub]]` tables: a unique name, the listeners, and the certificate each hub offers on
//! STARTTLS (its own, or the site's).

use super::site::RoleTls;
use crate::config::locate::{Locator, Seen};
use crate::config::raw::RawHub;
use crate::config::{ConfigError, Hub};

/// Checks every hub, in file order.
pub(super) fn build(
    at: &Locator,
    raw: Vec<RawHub>,
    roles: &mut Seen,
    site_tls: &RoleTls,
) -> Result<Vec<Hub>, ConfigError> {
    let mut hubs = Vec::new();
    for h in raw {
        roles.add(&h.name, "")?;
        let (tls, require_tls) = site_tls.resolve(
            at,
            "hub",
            h.tls_certificate.as_ref(),
            h.tls_private_key.as_ref(),
            h.require_tls.as_ref(),
        )?;
        hubs.push(Hub {
            name: h.name.into_inner(),
            smtp: h.smtp,
            admin: h.admin,
            tls,
            require_tls,
        });
    }
    Ok(hubs)
}
