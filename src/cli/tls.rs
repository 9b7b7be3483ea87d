//! `hubrelay tls generate`: a self-signed certificate and key for tests, the demo and a first
//! try of STARTTLS, so nobody needs openssl to see TLS work. Production sites use certificates
//! from their own CA (`tls_ca`), which this command does not make.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{print_json, Failure};
use crate::smtp::SelfSigned;

/// The `tls` subcommands.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Write a new self-signed certificate and its private key as PEM files, for
    /// `tls_certificate` and `tls_private_key` in the site file.
    ///
    /// The certificate names every `--name` as a subject alternative name (an IP address for
    /// names that parse as one, a DNS name otherwise). Because it is self-signed it also serves
    /// as its own `tls_ca`. The key file is created with mode 0600. Existing files are not
    /// overwritten unless `--force` is given. Send SIGHUP to a running hub or node to make it
    /// pick up replaced files.
    Generate {
        /// Where to write the certificate (PEM).
        #[arg(long, value_name = "PATH")]
        cert: PathBuf,
        /// Where to write the private key (PEM, PKCS#8, ECDSA P-256).
        #[arg(long, value_name = "PATH")]
        key: PathBuf,
        /// A name the certificate is valid for; repeat for several.
        #[arg(
            long = "name",
            value_name = "NAME",
            default_values_t = [String::from("localhost"), String::from("127.0.0.1")]
        )]
        names: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a `tls` subcommand.
pub fn run(command: &TlsCommand, json: bool) -> Result<(), Failure> {
    match command {
        TlsCommand::Generate {
            cert,
            key,
            names,
            force,
        } => generate(cert, key, names, *force, json),
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
        if let Some(existing) = [cert, key].into_iter().find(|p| p.exists()) {
            return Err(Failure::Failed(format!(
                "{} exists (use --force to replace it)",
                existing.display()
            )));
        }
    }
    let pair = SelfSigned::new(names)
        .map_err(|e| Failure::Usage(format!("cannot make a certificate for {names:?}: {e}")))?;
    write_new(key, pair.key_pem.as_bytes(), 0o600, force)?;
    write_new(cert, pair.cert_pem.as_bytes(), 0o644, force)?;
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
