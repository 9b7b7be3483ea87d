//! A CMS's `witness` key: a file share directory, or `etcd://host:port[,host:port…]/prefix`
//! (`etcds://` over TLS) with the `witness_*` keys that say how to authenticate to etcd.

use std::path::PathBuf;

use crate::config::locate::Locator;
use crate::config::raw::RawCms;
use crate::config::{ConfigError, EtcdConfig, WitnessConfig};
use crate::smtp::TlsFiles;

use super::site::beside_config;

/// The keys that only an etcd witness uses: set beside a share, they would be ignored silently.
const ETCD_ONLY: &str = "witness_tls_ca, witness_tls_certificate, witness_tls_private_key, witness_user and witness_password_file";

/// Checks the witness of one CMS.
pub(super) fn build(at: &Locator, c: &RawCms) -> Result<WitnessConfig, ConfigError> {
    let value = c.witness.get_ref().trim();
    let span = c.witness.span();
    let (tls, rest) = match (
        value.strip_prefix("etcd://"),
        value.strip_prefix("etcds://"),
    ) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            if value.is_empty() {
                return Err(at.err(&span, "cms.witness", "must not be empty"));
            }
            if value.contains("://") {
                return Err(at.err(
                    &span,
                    "cms.witness",
                    format!("`{value}`: a witness is a directory, etcd://host:port/prefix or etcds://host:port/prefix"),
                ));
            }
            let etcd_only_set = c.witness_tls_ca.is_some()
                || c.witness_tls_certificate.is_some()
                || c.witness_tls_private_key.is_some()
                || c.witness_user.is_some()
                || c.witness_password_file.is_some();
            if etcd_only_set {
                return Err(at.err(
                    &span,
                    "cms.witness",
                    format!(
                        "is a file share directory, but {ETCD_ONLY} are for an etcd witness only"
                    ),
                ));
            }
            return Ok(WitnessConfig::Share(PathBuf::from(value)));
        }
    };
    let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let scheme = if tls { "https" } else { "http" };
    let mut endpoints = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        let url = reqwest::Url::parse(&format!("{scheme}://{host}"))
            .ok()
            .filter(|u| !host.is_empty() && u.port().is_some() && u.path() == "/");
        if url.is_none() {
            return Err(at.err(
                &span,
                "cms.witness",
                format!(
                    "etcd endpoint `{host}` is not host:port (for several, host:port,host:port)"
                ),
            ));
        }
        endpoints.push(format!("{scheme}://{host}"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Err(at.err(
            &span,
            "cms.witness",
            format!(
                "`{value}` names no key prefix: etcd://host:port/hubrelay/{}",
                c.name.get_ref()
            ),
        ));
    }
    let tls_ca = c
        .witness_tls_ca
        .as_ref()
        .map(|p| beside_config(at, p.get_ref()));
    if tls && tls_ca.is_none() {
        return Err(at.err(
            &span,
            "cms.witness_tls_ca",
            "missing: etcds:// needs the CA that signed the etcd servers' certificates",
        ));
    }
    let tls_client = match (&c.witness_tls_certificate, &c.witness_tls_private_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            certificate: beside_config(at, cert.get_ref()),
            private_key: beside_config(at, key.get_ref()),
        }),
        (None, None) => None,
        (Some(cert), None) => {
            return Err(at.err(
                &cert.span(),
                "cms.witness_tls_private_key",
                "missing: witness_tls_certificate needs its witness_tls_private_key",
            ))
        }
        (None, Some(key)) => {
            return Err(at.err(
                &key.span(),
                "cms.witness_tls_certificate",
                "missing: witness_tls_private_key needs its witness_tls_certificate",
            ))
        }
    };
    if !tls && (tls_ca.is_some() || tls_client.is_some()) {
        return Err(at.err(
            &span,
            "cms.witness",
            "the witness_tls_* keys need an etcds:// witness (etcd:// is plain HTTP)",
        ));
    }
    let password_file = c
        .witness_password_file
        .as_ref()
        .map(|p| beside_config(at, p.get_ref()));
    match (&c.witness_user, &password_file) {
        (Some(u), None) => {
            return Err(at.err(
                &u.span(),
                "cms.witness_password_file",
                "missing: witness_user needs the file holding its password",
            ))
        }
        (None, Some(_)) => {
            return Err(at.err(
                &span,
                "cms.witness_user",
                "missing: witness_password_file needs the user it is the password of",
            ))
        }
        _ => {}
    }
    Ok(WitnessConfig::Etcd(EtcdConfig {
        endpoints,
        prefix: format!("/{prefix}"),
        tls_ca,
        tls_client,
        user: c.witness_user.as_ref().map(|u| u.get_ref().clone()),
        password_file,
    }))
}
