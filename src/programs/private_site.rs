//! A private site for `demo` and `bench`: four processes of this binary (hub1, hub2, node1, node2)
//! in a temporary directory, on free 127.0.0.1 ports, with a generated site file. Each process is
//! waited for by its `ready` line, never by sleeping. Dropping the [`PrivateSite`] kills the
//! processes and removes the directory, so an error, the end of the run and a Ctrl-C (through
//! [`until_interrupted`], which drops the run) all leave nothing behind.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ProgramError;
use crate::client::AdminClient;
use crate::config::Site;
use crate::smtp::PemPair;
use crate::telemetry::logging::LogFormat;

/// How long a process may take to print `ready`.
const READY_WAIT: Duration = Duration::from_secs(30);

/// What differs between the private sites: the rest (two hubs, one CMS of two nodes, the witness)
/// is the same for every one.
pub struct SiteSpec<'a> {
    /// The site's name; the temporary directory is named after it too.
    pub name: &'a str,
    /// Every admin call carries it.
    pub admin_token: &'a str,
    /// `[site]` keys besides the name, the token and TLS: accepted domains, limits, retry timing.
    pub site_keys: &'a str,
    /// Whether hubs and nodes offer STARTTLS, with a self-signed certificate generated here (the
    /// hubs then deliver to the nodes over it, `delivery_tls` being opportunistic by default).
    pub tls: bool,
    /// The CMS's `log_file_size`: how much a log generation holds before it closes and ships.
    pub log_file_size: &'a str,
    /// The `[[cms.storage_group]]` tables.
    pub storage_groups: &'a str,
}

/// A running private site; torn down when dropped.
pub struct PrivateSite {
    /// The generated site, as loaded.
    pub site: Site,
    /// An admin client for it.
    pub client: AdminClient,
    /// The role processes, by name.
    children: Vec<(String, Child)>,
    /// Declared last: dropped after [`Drop`] has killed the processes that write into it.
    dir: Scratch,
}

/// The temporary directory, removed when dropped (also when starting the site fails half-way).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl PrivateSite {
    /// Writes the site of `spec` into a new temporary directory and starts node1, node2, hub1 and
    /// hub2, each logging in `log` format to `<dir>/data/<name>.log`; returns once all are ready.
    pub async fn start(spec: &SiteSpec<'_>, log: LogFormat) -> Result<PrivateSite, ProgramError> {
        let dir = Scratch(std::env::temp_dir().join(format!(
            "hubrelay-{}-{}",
            spec.name,
            std::process::id()
        )));
        // A directory left by a killed run of a process with the same id would mix state in.
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).map_err(fail)?;
        let config = write_site(&dir.0, spec)?;
        let site = Site::load(&config).map_err(fail)?;
        let client = AdminClient::new(&site).map_err(fail)?;
        let exe = std::env::current_exe().map_err(fail)?;
        let data = dir.0.join("data");
        std::fs::create_dir_all(&data).map_err(fail)?;
        let mut ps = PrivateSite {
            site,
            client,
            children: Vec::new(),
            dir,
        };
        for (kind, name) in [
            ("node", "node1"),
            ("node", "node2"),
            ("hub", "hub1"),
            ("hub", "hub2"),
        ] {
            ps.spawn(&exe, &config, &data, kind, name, log).await?;
        }
        Ok(ps)
    }

    async fn spawn(
        &mut self,
        exe: &Path,
        config: &Path,
        data: &Path,
        kind: &str,
        name: &str,
        log_format: LogFormat,
    ) -> Result<(), ProgramError> {
        let log_path = data.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(fail)?;
        let mut child = Command::new(exe)
            .args([
                kind,
                "--name",
                name,
                "--log-format",
                log_format.as_arg(),
                "--config",
            ])
            .arg(config)
            .arg("--data")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(fail)?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| ProgramError::Failed("no stdout".into()))?;
        self.children.push((name.to_string(), child));
        // Read on a blocking thread, so a Ctrl-C meanwhile is seen; if the wait is abandoned,
        // killing the process ends the read.
        let ready = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|l| l == "ready")
        });
        match tokio::time::timeout(READY_WAIT, ready).await {
            Ok(Ok(true)) => Ok(()),
            _ => Err(ProgramError::Failed(format!(
                "{name} did not start; see {}",
                log_path.display()
            ))),
        }
    }

    /// The temporary directory: the site file, `data/` and one log file per process.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// `kill -9` of one process (the demo's crash of the active node).
    pub fn kill9(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The running processes: role name and process id.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .map(|(n, c)| (n.clone(), c.id()))
            .collect()
    }
}

impl Drop for PrivateSite {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `run`; on Ctrl-C, drops it (which tears down any [`PrivateSite`] it holds) and fails.
pub async fn until_interrupted<T>(
    run: impl Future<Output = Result<T, ProgramError>>,
) -> Result<T, ProgramError> {
    tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => {
            Err(ProgramError::Failed("interrupted; the private site was torn down".into()))
        }
    }
}

/// Any error of the private site's machinery, as a failed run (exit 1).
pub(super) fn fail(e: impl std::fmt::Display) -> ProgramError {
    ProgramError::Failed(e.to_string())
}

fn free_port() -> Result<u16, ProgramError> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .map_err(fail)?
        .local_addr()
        .map_err(fail)?
        .port())
}

fn write_site(dir: &Path, spec: &SiteSpec<'_>) -> Result<PathBuf, ProgramError> {
    let mut p = Vec::new();
    for _ in 0..8 {
        p.push(free_port()?);
    }
    let tls = if spec.tls {
        let pair = PemPair::self_signed(&["localhost".into(), "127.0.0.1".into()]).map_err(fail)?;
        std::fs::write(dir.join("site.crt"), pair.cert_pem).map_err(fail)?;
        std::fs::write(dir.join("site.key"), pair.key_pem).map_err(fail)?;
        "tls_certificate = \"site.crt\"\ntls_private_key = \"site.key\"\n"
    } else {
        ""
    };
    let text = format!(
        r#"[site]
name = "{name}"
admin_token = "{token}"
{keys}
{tls}
[[hub]]
name = "hub1"
smtp = "127.0.0.1:{}"
admin = "127.0.0.1:{}"

[[hub]]
name = "hub2"
smtp = "127.0.0.1:{}"
admin = "127.0.0.1:{}"

[[cms]]
name = "cms1"
auto_database_mount_dial = "GoodAvailability"
witness = "witness/cms1"
log_file_size = "{log_file_size}"

[[cms.node]]
name = "node1"
smtp = "127.0.0.1:{}"
admin = "127.0.0.1:{}"

[[cms.node]]
name = "node2"
smtp = "127.0.0.1:{}"
admin = "127.0.0.1:{}"

{storage_groups}"#,
        p[0],
        p[1],
        p[2],
        p[3],
        p[4],
        p[5],
        p[6],
        p[7],
        name = spec.name,
        token = spec.admin_token,
        keys = spec.site_keys,
        log_file_size = spec.log_file_size,
        storage_groups = spec.storage_groups,
    );
    let path = dir.join("site.toml");
    std::fs::write(&path, text).map_err(fail)?;
    Ok(path)
}
