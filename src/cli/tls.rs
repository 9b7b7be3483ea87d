//! `hubrelay tls generate`: certificates made without openssl.
//!
//! - `--cert PATH --key PATH`: a self-signed pair, for tests, the demo and a first try of STARTTLS.
//! - `--site-dir DIR`: everything a site needs for mutual TLS (`delivery_tls = "mutual"`,
//!   `admin_tls = "mutual"`): a site CA, one certificate per hub and node of the site file
//!   (`--config`) for the addresses the others reach it at, with both the server and the client
//!   usage, and one for the operator's CLI. The site file is read as TOML only (not checked), so
//!   this also runs on a file that already asks for mutual TLS and lacks the certificates.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{print_json, Failure};
use crate::smtp::{PemPair, SiteCa, Usage};

/// The `tls` subcommands.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Write a new self-signed certificate and key (`--cert`, `--key`), or a site CA with a
    /// certificate for every role of the site file (`--site-dir`), as PEM files.
    ///
    /// With --cert and --key: the certificate names every `--name` as a subject alternative
    /// name (an IP address for names that parse as one, a DNS name otherwise); it serves as its
    /// own `tls_ca`.
    ///
    /// With --site-dir DIR: DIR/ca.pem (the site's `tls_ca`) and DIR/ca.key, then for every hub
    /// and node of the site file (--config) DIR/<name>.pem and DIR/<name>.key, valid for its
    /// name and the IP addresses of its smtp and admin listeners, for TLS servers and clients;
    /// and DIR/operator.pem and DIR/operator.key for the CLI (`admin_client_certificate`). It
    /// prints the keys to set in the site file, or sets them with --update-config:
    /// `tls_ca`, `delivery_tls = "mutual"`, `admin_tls = "mutual"`, the operator's pair in
    /// [site], and each role's `tls_certificate` and `tls_private_key`. Copy each role's pair
    /// and ca.pem to its host; keep ca.key offline.
    ///
    /// Key files are created with mode 0600. Existing files are not overwritten unless
    /// `--force` is given. Send SIGHUP to a running hub or node to make it pick up replaced
    /// files.
    Generate {
        /// Where to write the self-signed certificate (PEM).
        #[arg(
            long,
            value_name = "PATH",
            requires = "key",
            conflicts_with = "site_dir"
        )]
        cert: Option<PathBuf>,
        /// Where to write its private key (PEM, PKCS#8, ECDSA P-256).
        #[arg(
            long,
            value_name = "PATH",
            requires = "cert",
            conflicts_with = "site_dir"
        )]
        key: Option<PathBuf>,
        /// A name the self-signed certificate is valid for; repeat for several.
        #[arg(
            long = "name",
            value_name = "NAME",
            default_values_t = [String::from("localhost"), String::from("127.0.0.1")],
            conflicts_with = "site_dir"
        )]
        names: Vec<String>,
        /// Make a site CA and a certificate per role of the site file (--config) in DIR.
        #[arg(long, value_name = "DIR", required_unless_present = "cert")]
        site_dir: Option<PathBuf>,
        /// How long the site's certificates are valid, in days.
        #[arg(
            long,
            value_name = "DAYS",
            default_value_t = 825,
            requires = "site_dir"
        )]
        days: u32,
        /// Write the TLS keys into the site file (keeping its comments) instead of printing them.
        #[arg(long, requires = "site_dir")]
        update_config: bool,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a `tls` subcommand; `config` is the site file (`--config`).
pub fn run(command: &TlsCommand, config: &Path, json: bool) -> Result<(), Failure> {
    match command {
        TlsCommand::Generate {
            cert: Some(cert),
            key: Some(key),
            names,
            force,
            ..
        } => generate(cert, key, names, *force, json),
        TlsCommand::Generate {
            site_dir: Some(dir),
            days,
            update_config,
            force,
            ..
        } => generate_site(config, dir, *days, *update_config, *force, json),
        TlsCommand::Generate { .. } => Err(Failure::Usage(
            "tls generate needs --cert and --key, or --site-dir".into(),
        )),
    }
}

fn generate(
    cert: &Path,
    key: &Path,
    names: &[String],
    force: bool,
    json: bool,
) -> Result<(), Failure> {
    if !force {
        refuse_existing(&[cert, key])?;
    }
    let pair = PemPair::self_signed(names)
        .map_err(|e| Failure::Usage(format!("cannot make a certificate for {names:?}: {e}")))?;
    write_pair(&pair, cert, key, force)?;
    if json {
        print_json(&serde_json::json!({
            "certificate": cert,
            "private_key": key,
            "names": names,
        }))
    } else {
        println!(
            "wrote {} and {} (self-signed, for {})",
            cert.display(),
            key.display(),
            names.join(", ")
        );
        Ok(())
    }
}

/// A hub or node of the site file, as `--site-dir` needs it.
struct Role {
    /// Its name, also the file stem of its pair.
    name: String,
    /// Which table it is in: `hub` or `cms.node`.
    section: &'static str,
    /// What the others reach it at: its name, and the IPs of its listeners.
    names: Vec<String>,
}

/// The operator's file stem in the site directory.
const OPERATOR: &str = "operator";

fn generate_site(
    config: &Path,
    dir: &Path,
    days: u32,
    update: bool,
    force: bool,
    json: bool,
) -> Result<(), Failure> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", config.display())))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| Failure::Usage(format!("{}: not TOML: {e}", config.display())))?;
    let roles = roles(&doc).map_err(|m| Failure::Usage(format!("{}: {m}", config.display())))?;
    if roles.is_empty() {
        return Err(Failure::Usage(format!(
            "{}: no [[hub]] or [[cms.node]] to make certificates for",
            config.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::Failed(format!("cannot create {}: {e}", dir.display())))?;
    let path = |stem: &str, ext: &str| dir.join(format!("{stem}.{ext}"));
    let stems = std::iter::once("ca").chain(std::iter::once(OPERATOR));
    let stems: Vec<&str> = stems.chain(roles.iter().map(|r| r.name.as_str())).collect();
    if !force {
        let files: Vec<PathBuf> = stems
            .iter()
            .flat_map(|s| [path(s, "pem"), path(s, "key")])
            .collect();
        refuse_existing(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
    }
    let site_name = doc
        .get("site")
        .and_then(|s| s.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("site")
        .to_string();
    let failed = |what: &str, e: rcgen::Error| Failure::Failed(format!("cannot make {what}: {e}"));
    let ca = SiteCa::new(&site_name, days).map_err(|e| failed("the site CA", e))?;
    write_new(&path("ca", "key"), ca.key_pem().as_bytes(), 0o600, force)?;
    write_new(&path("ca", "pem"), ca.cert_pem().as_bytes(), 0o644, force)?;
    let operator = ca
        .issue(OPERATOR, &[OPERATOR.to_string()], Usage::Client)
        .map_err(|e| failed("the operator's certificate", e))?;
    write_pair(
        &operator,
        &path(OPERATOR, "pem"),
        &path(OPERATOR, "key"),
        force,
    )?;
    for role in &roles {
        let pair = ca
            .issue(&role.name, &role.names, Usage::Role)
            .map_err(|e| failed(&format!("{}'s certificate", role.name), e))?;
        write_pair(
            &pair,
            &path(&role.name, "pem"),
            &path(&role.name, "key"),
            force,
        )?;
    }
    // Paths as the site file will name them: relative to it when the directory is beside it.
    let named = |p: PathBuf| -> String { as_config_names(config, &p) };
    let settings = Settings {
        ca: named(path("ca", "pem")),
        operator: (named(path(OPERATOR, "pem")), named(path(OPERATOR, "key"))),
        roles: roles
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    (named(path(&r.name, "pem")), named(path(&r.name, "key"))),
                )
            })
            .collect(),
    };
    if update {
        settings.apply(&mut doc);
        replace_file(config, doc.to_string().as_bytes())?;
    }
    if json {
        return print_json(&serde_json::json!({
            "directory": dir,
            "ca": path("ca", "pem"),
            "ca_key": path("ca", "key"),
            "operator": {"certificate": path(OPERATOR, "pem"), "private_key": path(OPERATOR, "key")},
            "roles": roles.iter().map(|r| serde_json::json!({
                "name": r.name,
                "names": r.names,
                "certificate": path(&r.name, "pem"),
                "private_key": path(&r.name, "key"),
            })).collect::<Vec<_>>(),
            "config_updated": update,
        }));
    }
    println!(
        "wrote the site CA {} (its key {}: keep it offline), {} role certificates and the operator's to {}",
        path("ca", "pem").display(),
        path("ca", "key").display(),
        roles.len(),
        dir.display()
    );
    for r in &roles {
        println!("  {:<12} {}  ({})", r.name, r.section, r.names.join(", "));
    }
    if update {
        println!("{} now asks for mutual TLS with them", config.display());
    } else {
        println!(
            "\nset in {} (or run again with --update-config):\n",
            config.display()
        );
        print!("{}", settings.describe(&roles));
    }
    Ok(())
}

/// Every hub and node of the site file with the names its certificate needs.
fn roles(doc: &toml_edit::DocumentMut) -> Result<Vec<Role>, String> {
    let mut roles = Vec::new();
    let mut add = |table: &toml_edit::Table, section: &'static str| -> Result<(), String> {
        let name = table
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| format!("a [[{section}]] without a name"))?
            .to_string();
        let mut names = vec![name.clone()];
        for key in ["smtp", "admin"] {
            let Some(addr) = table.get(key).and_then(|a| a.as_str()) else {
                continue;
            };
            let addr: SocketAddr = addr
                .parse()
                .map_err(|e| format!("{section} {name}: {key} = {addr:?}: {e}"))?;
            let ip = addr.ip();
            // A wildcard is no address anyone connects to.
            if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
                names.push(ip.to_string());
            }
            if ip.is_loopback() && !names.iter().any(|n| n == "localhost") {
                names.push("localhost".into());
            }
        }
        roles.push(Role {
            name,
            section,
            names,
        });
        Ok(())
    };
    if let Some(hubs) = doc.get("hub").and_then(|h| h.as_array_of_tables()) {
        for hub in hubs {
            add(hub, "hub")?;
        }
    }
    if let Some(cms) = doc.get("cms").and_then(|c| c.as_array_of_tables()) {
        for c in cms {
            if let Some(nodes) = c.get("node").and_then(|n| n.as_array_of_tables()) {
                for node in nodes {
                    add(node, "cms.node")?;
                }
            }
        }
    }
    Ok(roles)
}

/// The site file's TLS keys for the files just written.
struct Settings {
    ca: String,
    operator: (String, String),
    roles: Vec<(String, (String, String))>,
}

impl Settings {
    /// Sets them in the site file's tables.
    fn apply(&self, doc: &mut toml_edit::DocumentMut) {
        use toml_edit::value;
        if !doc.contains_key("site") {
            doc["site"] = toml_edit::table();
        }
        let site = &mut doc["site"];
        site["tls_ca"] = value(&self.ca);
        site["delivery_tls"] = value("mutual");
        site["admin_tls"] = value("mutual");
        site["admin_client_certificate"] = value(&self.operator.0);
        site["admin_client_private_key"] = value(&self.operator.1);
        let pair_of = |name: &str| {
            self.roles
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, pair)| pair.clone())
        };
        let set = |table: &mut toml_edit::Table| {
            let name = table.get("name").and_then(|n| n.as_str()).map(String::from);
            if let Some((cert, key)) = name.as_deref().and_then(pair_of) {
                table["tls_certificate"] = value(cert);
                table["tls_private_key"] = value(key);
            }
        };
        if let Some(hubs) = doc.get_mut("hub").and_then(|h| h.as_array_of_tables_mut()) {
            hubs.iter_mut().for_each(set);
        }
        if let Some(cms) = doc.get_mut("cms").and_then(|c| c.as_array_of_tables_mut()) {
            for c in cms.iter_mut() {
                if let Some(nodes) = c.get_mut("node").and_then(|n| n.as_array_of_tables_mut()) {
                    nodes.iter_mut().for_each(set);
                }
            }
        }
    }

    /// The same, as lines to paste.
    fn describe(&self, roles: &[Role]) -> String {
        let mut out = format!(
            "[site]\ntls_ca = {:?}\ndelivery_tls = \"mutual\"\nadmin_tls = \"mutual\"\nadmin_client_certificate = {:?}\nadmin_client_private_key = {:?}\n",
            self.ca, self.operator.0, self.operator.1
        );
        for (role, (name, (cert, key))) in roles.iter().zip(&self.roles) {
            out.push_str(&format!(
                "\n# in the [[{}]] named {name:?}\ntls_certificate = {cert:?}\ntls_private_key = {key:?}\n",
                role.section
            ));
        }
        out
    }
}

/// `path` as the site file should name it: relative to the file's directory when it lies under
/// it (the site moves as one directory), absolute otherwise.
fn as_config_names(config: &Path, path: &Path) -> String {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let base = absolute(config.parent().unwrap_or(Path::new(".")));
    let path = absolute(path);
    path.strip_prefix(&base)
        .map(Path::to_path_buf)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn refuse_existing(paths: &[&Path]) -> Result<(), Failure> {
    match paths.iter().find(|p| p.exists()) {
        Some(existing) => Err(Failure::Failed(format!(
            "{} exists (use --force to replace it)",
            existing.display()
        ))),
        None => Ok(()),
    }
}

fn write_pair(pair: &PemPair, cert: &Path, key: &Path, force: bool) -> Result<(), Failure> {
    write_new(key, pair.key_pem.as_bytes(), 0o600, force)?;
    write_new(cert, pair.cert_pem.as_bytes(), 0o644, force)
}

/// Replaces the site file whole (a temporary file beside it, then a rename), so a crash never
/// leaves half a config.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let tmp = path.with_extension("toml.tmp");
    let failed =
        |e: std::io::Error| Failure::Failed(format!("cannot write {}: {e}", path.display()));
    let mode = std::fs::metadata(path).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    write_new(&tmp, bytes, mode.unwrap_or(0o644), true)?;
    std::fs::rename(&tmp, path).map_err(failed)
}

/// Creates `path` with `mode` from the start (a key is never readable by others, not even
/// briefly), refusing to replace an existing file unless `force`.
fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), Failure> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let failed = |e: std::io::Error| {
        let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
            " (use --force to replace it)"
        } else {
            ""
        };
        Failure::Failed(format!("cannot write {}: {e}{hint}", path.display()))
    };
    let mut file = options.open(path).map_err(failed)?;
    // A replaced file keeps its old mode otherwise.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)
}
