//! A real etcd server for the etcd witness tests: Debian's `etcd-server` (installed by
//! `tests/install-package.sh` where missing), one member on free 127.0.0.1 ports with its data in a
//! temp directory, waited for until it answers (never by sleeping), killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// One etcd member.
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    peer_port: u16,
}

/// The etcd binary, installed from Debian's package if it is not there. Panics with the reason
/// where it cannot be had: the etcd witness tests need a real etcd server.
pub fn etcd_binary() -> PathBuf {
    let found = |p: &str| Path::new(p).exists().then(|| PathBuf::from(p));
    if let Some(p) = found("/usr/bin/etcd") {
        return p;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/install-package.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("etcd-server")
        .output()
        .expect("run install-package.sh");
    assert!(
        out.status.success(),
        "the etcd witness tests need a real etcd server (Debian's etcd-server): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    found("/usr/bin/etcd").expect("etcd-server installed /usr/bin/etcd")
}

impl Etcd {
    /// Starts a one-member cluster with its data under `dir` and waits until it serves.
    pub fn start(dir: &Path) -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: dir.to_path_buf(),
            port: free_port(),
            peer_port: free_port(),
        };
        etcd.run();
        etcd
    }

    /// The witness address for a CMS with this prefix.
    pub fn witness(&self, prefix: &str) -> String {
        format!("etcd://127.0.0.1:{}/{prefix}", self.port)
    }

    fn run(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new(etcd_binary())
            .args(["--name", "witness", "--data-dir"])
            .arg(self.dir.join("etcd-data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("witness={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let start = Instant::now();
        while !self.serves() {
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "etcd exited with {status}; see {}",
                    self.dir.join("etcd.log").display()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd did not serve within 30 s; see {}",
                self.dir.join("etcd.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it answers a linearizable read (so it has a leader), through the same JSON gateway
    /// the witness uses.
    fn serves(&self) -> bool {
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import urllib.request,sys\ntry:\n urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:{}/v3/kv/range', data=b'{{\"key\":\"AA==\"}}'), timeout=1).read()\nexcept Exception: sys.exit(1)",
                self.port
            ))
            .status();
        out.is_ok_and(|s| s.success())
    }

    /// `kill -9` of the server (its data stays).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data, and waits until it serves.
    pub fn restart(&mut self) {
        self.kill9();
        self.run();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
    }
}
