//! The `[site]` table: the keys that hold for the whole site (limits, retention, the admin token,
//! accepted domains), and its TLS settings, which every hub and node inherits unless its own
//! section overrides them.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::checked_domain;
use crate::config::locate::Locator;
use crate::config::raw::RawSite;
use crate::config::{AdminTls, ConfigError, DeliveryTls, Site};
use crate::smtp::TlsFiles;

/// The site's TLS settings, which a hub's or node's own section falls back on and is checked
/// against.
pub(super) struct RoleTls {
    /// The site's certificate and key, for a role that names none.
    files: Option<TlsFiles>,
    /// `site.require_tls`, for a role that does not set its own.
    require_tls: Spanned<bool>,
    /// `site.admin_tls`: every role then needs a certificate.
    admin_tls: Spanned<AdminTls>,
    /// `site.delivery_tls`: when off, no node can require STARTTLS; when mutual, every hub and
    /// node needs a certificate and nodes require STARTTLS.
    delivery_tls: Spanned<DeliveryTls>,
}

impl RoleTls {
    /// A role's certificate (its own, or the site's) and whether its SMTP listener requires
    /// STARTTLS; refused when a setting needs a certificate the role lacks.
    pub(super) fn resolve(
        &self,
        at: &Locator,
        section: &str,
        cert: Option<&Spanned<PathBuf>>,
        key: Option<&Spanned<PathBuf>>,
        require: Option<&Spanned<bool>>,
    ) -> Result<(Option<TlsFiles>, bool), ConfigError> {
        let tls = tls_files(at, section, cert, key)?.or_else(|| self.files.clone());
        let delivery_tls = *self.delivery_tls.get_ref();
        if delivery_tls == DeliveryTls::Mutual {
            if tls.is_none() {
                return Err(at.err(
                    &self.delivery_tls.span(),
                    "site.delivery_tls",
                    format!("\"mutual\": every hub and node presents a certificate, and a {section} has none: set tls_certificate and tls_private_key (hubrelay tls generate --site makes them)"),
                ));
            }
            // A node that takes mail from certified hubs only takes none in clear text.
            if section == "cms.node" {
                if let Some(r) = require.filter(|r| !*r.get_ref()) {
                    return Err(at.err(
                        &r.span(),
                        &format!("{section}.require_tls"),
                        "delivery_tls = \"mutual\": a node takes mail over TLS with a hub's certificate only, so require_tls cannot be false",
                    ));
                }
                return Ok((tls, true));
            }
        }
        let (required, span, key) = match require {
            Some(r) => (*r.get_ref(), r.span(), format!("{section}.require_tls")),
            None => (
                *self.require_tls.get_ref(),
                self.require_tls.span(),
                "site.require_tls".to_string(),
            ),
        };
        if required && tls.is_none() {
            return Err(at.err(
                &span,
                &key,
                "require_tls needs a certificate: set tls_certificate and tls_private_key",
            ));
        }
        if self.admin_tls.get_ref().is_on() && tls.is_none() {
            return Err(at.err(
            &self.admin_tls.span(),
            "site.admin_tls",
            format!("every role needs a certificate for HTTPS, and a {section} has none: set tls_certificate and tls_private_key"),
        ));
        }
        if required && section == "cms.node" && delivery_tls == DeliveryTls::Off {
            return Err(at.err(
            &span,
            &key,
            "hubs deliver in clear text (delivery_tls = \"off\") and could never deliver to this node",
        ));
        }
        Ok((tls, required))
    }
}

/// Checks the `[site]` keys: a [`Site`] with no hubs or CMSs yet, and the TLS settings theirs are
/// checked against.
pub(super) fn build(at: &Locator, site: RawSite) -> Result<(Site, RoleTls), ConfigError> {
    let admin_token = admin_token(at, &site)?;
    let (delivery_secret, delivery_secret_file) = match &site.delivery_secret_file {
        Some(f) => {
            let path = beside_config(at, f.get_ref());
            let secret = crate::config::read_secret_file(&path)
                .map_err(|e| at.err(&f.span(), "site.delivery_secret_file", e))?;
            (secret, Some(path))
        }
        None => (crate::smtp::DeliverySecret::derive(&admin_token), None),
    };
    let accepted_domains = site
        .accepted_domains
        .iter()
        .map(|d| checked_domain(at, d, "site.accepted_domains"))
        .collect::<Result<Vec<_>, _>>()?;
    for (value, key) in [
        (&site.max_recipients, "site.max_recipients"),
        (&site.max_connections, "site.max_connections"),
        (
            &site.max_connections_per_client,
            "site.max_connections_per_client",
        ),
    ] {
        if *value.get_ref() == 0 {
            return Err(at.err(&value.span(), key, "must be at least 1"));
        }
    }
    let dedup_retention = site.dedup_retention.get_ref().0;
    if dedup_retention < site.max_dumpster_time.0 {
        return Err(at.err(
            &site.dedup_retention.span(),
            "site.dedup_retention",
            format!(
                "must not be shorter than max_dumpster_time ({}; it is {}): a resubmitted copy would no longer be recognised as a duplicate",
                humantime::format_duration(site.max_dumpster_time.0),
                humantime::format_duration(dedup_retention)
            ),
        ));
    }
    if site.node_connect_timeout.get_ref().0.is_zero() {
        return Err(at.err(
            &site.node_connect_timeout.span(),
            "site.node_connect_timeout",
            "must be more than 0s: a hub would give up on every node before it answers",
        ));
    }
    let resubmit_rate = *site.resubmit_rate.get_ref();
    if resubmit_rate == 0 {
        return Err(at.err(
            &site.resubmit_rate.span(),
            "site.resubmit_rate",
            "must be at least 1 (messages per second)",
        ));
    }

    let site_tls = tls_files(
        at,
        "site",
        site.tls_certificate.as_ref(),
        site.tls_private_key.as_ref(),
    )?;
    let tls_ca = site.tls_ca.as_ref().map(|p| beside_config(at, p.get_ref()));
    let delivery_tls = *site.delivery_tls.get_ref();
    if delivery_tls.verifies_nodes() && tls_ca.is_none() {
        return Err(at.err(
            &site.delivery_tls.span(),
            "site.delivery_tls",
            format!(
                "\"{}\" verifies each node's certificate, so it needs tls_ca (the CA's PEM file)",
                if delivery_tls == DeliveryTls::Mutual {
                    "mutual"
                } else {
                    "required"
                }
            ),
        ));
    }
    let admin_tls = *site.admin_tls.get_ref();
    if admin_tls.is_on() && tls_ca.is_none() {
        return Err(at.err(
            &site.admin_tls.span(),
            "site.admin_tls",
            "every admin client verifies the role it calls, so admin_tls needs tls_ca (the CA's PEM file)",
        ));
    }
    let admin_client = file_pair(
        at,
        (
            "site.admin_client_certificate",
            site.admin_client_certificate.as_ref(),
        ),
        (
            "site.admin_client_private_key",
            site.admin_client_private_key.as_ref(),
        ),
    )?;
    if admin_tls == AdminTls::Mutual && admin_client.is_none() {
        return Err(at.err(
            &site.admin_tls.span(),
            "site.admin_client_certificate",
            "missing: with admin_tls = \"mutual\" the CLI must present a certificate from tls_ca; set admin_client_certificate and admin_client_private_key (hubrelay tls generate --site makes them)",
        ));
    }
    let checked = Site {
        file: at.file.to_path_buf(),
        name: site.name,
        accepted_domains,
        max_message_size: site.max_message_size.0,
        store_cache_size: site.store_cache_size.0,
        in_flow_delay: site.in_flow_delay.0,
        node_connect_timeout: site.node_connect_timeout.get_ref().0,
        min_free_space: site.min_free_space.0,
        max_dumpster_size_per_storage_group: site.max_dumpster_size_per_storage_group.0,
        max_dumpster_time: site.max_dumpster_time.0,
        message_expiry: site.message_expiry.0,
        retry_min: site.retry_min.0,
        retry_max: site.retry_max.0.max(site.retry_min.0),
        max_recipients: site.max_recipients.into_inner(),
        max_connections: site.max_connections.into_inner(),
        idle_timeout: site.idle_timeout.0,
        max_connections_per_client: site.max_connections_per_client.into_inner(),
        connection_limit_exceptions: site.connection_limit_exceptions,
        data_timeout: site.data_timeout.0,
        bare_newline: site.bare_newline,
        resubmit_rate,
        dedup_retention,
        admin_token,
        delivery_secret,
        delivery_secret_file,
        tls_ca,
        delivery_tls,
        admin_tls,
        admin_client,
        hubs: Vec::new(),
        cms: Vec::new(),
    };
    let roles = RoleTls {
        files: site_tls,
        require_tls: site.require_tls,
        admin_tls: site.admin_tls,
        delivery_tls: site.delivery_tls,
    };
    Ok((checked, roles))
}

/// A relative path in the config is relative to the config file, not to the working directory.
pub(super) fn beside_config(at: &Locator, path: &Path) -> PathBuf {
    match at.file.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// The certificate and key of one section: both or neither (the files are read when the role
/// starts, so that parsing opens nothing).
fn tls_files(
    at: &Locator,
    section: &str,
    cert: Option<&Spanned<PathBuf>>,
    key: Option<&Spanned<PathBuf>>,
) -> Result<Option<TlsFiles>, ConfigError> {
    file_pair(
        at,
        (&format!("{section}.tls_certificate"), cert),
        (&format!("{section}.tls_private_key"), key),
    )
}

/// A certificate and its key under the keys named: both or neither.
fn file_pair(
    at: &Locator,
    (cert_key, cert): (&str, Option<&Spanned<PathBuf>>),
    (key_key, key): (&str, Option<&Spanned<PathBuf>>),
) -> Result<Option<TlsFiles>, ConfigError> {
    // The message names the keys as written in the section; the error's key says which section.
    fn short(k: &str) -> &str {
        k.rsplit('.').next().unwrap_or(k)
    }
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some(TlsFiles {
            certificate: beside_config(at, c.get_ref()),
            private_key: beside_config(at, k.get_ref()),
        })),
        (None, None) => Ok(None),
        (Some(c), None) => Err(at.err(
            &c.span(),
            key_key,
            format!("missing: {} needs its {}", short(cert_key), short(key_key)),
        )),
        (None, Some(k)) => Err(at.err(
            &k.span(),
            cert_key,
            format!("missing: {} needs its {}", short(key_key), short(cert_key)),
        )),
    }
}

/// The token every admin call must carry: given inline or in a file, never both, never empty.
fn admin_token(at: &Locator, site: &RawSite) -> Result<String, ConfigError> {
    match (&site.admin_token, &site.admin_token_file) {
        (Some(t), None) if !t.get_ref().trim().is_empty() => Ok(t.get_ref().trim().to_string()),
        (Some(t), None) => Err(at.err(&t.span(), "site.admin_token", "must not be empty")),
        (None, Some(f)) => {
            let path = beside_config(at, f.get_ref());
            let token = std::fs::read_to_string(&path).map_err(|e| {
                at.err(
                    &f.span(),
                    "site.admin_token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let token = token.trim().to_string();
            if token.is_empty() {
                return Err(at.err(
                    &f.span(),
                    "site.admin_token_file",
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(token)
        }
        (Some(t), Some(_)) => Err(at.err(
            &t.span(),
            "site.admin_token",
            "give either admin_token or admin_token_file, not both",
        )),
        (None, None) => Err(at.err(
            &(0..0),
            "site.admin_token",
            "missing: every admin call is authenticated; set admin_token or admin_token_file",
        )),
    }
}
