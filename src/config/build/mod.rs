//! From the file as written to a checked [`Site`], one file per part of the site it configures, in
//! the order their errors are reported: the `[site]` keys (`site.rs`), the hubs (`hub.rs`), then the
//! CMSs with their nodes and storage groups (`cms.rs`). The first mistake found is the one reported.

use toml::Spanned;

use super::exposure::{self, EXAMPLE_ADMIN_TOKEN};
use super::locate::{Locator, Seen};
use super::raw::RawConfig;
use super::{ConfigError, Site};

mod cms;
mod hub;
mod site;
mod witness;

/// Checks a parsed site file and turns it into the [`Site`] every role runs from.
pub(super) fn build(at: &Locator, raw: RawConfig) -> Result<Site, ConfigError> {
    let token_at = (raw.site.admin_token.as_ref().map(Spanned::span))
        .or_else(|| raw.site.admin_token_file.as_ref().map(Spanned::span))
        .unwrap_or(0..0);
    let (mut site, tls) = site::build(at, raw.site)?;
    // Hubs, CMSs and nodes share one namespace: `--name` picks any of them.
    let mut roles = Seen::new(at, "name", "role");
    site.hubs = hub::build(at, raw.hub, &mut roles, &tls)?;
    site.cms = cms::build(at, raw.cms, &mut roles, &tls)?;
    if let Some((role, admin)) = exposure::example_token_exposed(&site) {
        return Err(at.err(
            &token_at,
            "site.admin_token",
            format!(
                "is the example token \"{EXAMPLE_ADMIN_TOKEN}\" while {role}'s admin API listens on {admin}, beyond loopback: \
                 anyone could run the site's admin commands; set a secret of your own (or admin_token_file)"
            ),
        ));
    }
    Ok(site)
}

/// An accepted or hosted domain, lower-cased as addresses are compared.
fn checked_domain(at: &Locator, d: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let dom = d.get_ref().trim().to_ascii_lowercase();
    if dom.is_empty() || dom.contains('@') || dom.contains(char::is_whitespace) {
        return Err(at.err(
            &d.span(),
            key,
            format!("`{}` is not a domain name", d.get_ref()),
        ));
    }
    Ok(dom)
}
