//! Helpers for black-box tests: a site file on free 127.0.0.1 ports, `hubrelay` processes that are
//! waited for by their `ready` line (never by sleeping), CLI calls, admin API calls over HTTP, and a
//! Python smtplib client (a client this project did not write).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cluster;
pub mod etcd;
pub mod load;

/// The admin token of every test site.
pub const TOKEN: &str = "test-token";

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hubrelay")
}

/// A port nothing listens on right now. It is taken below the kernel's ephemeral range when that
/// range is known, because a port from port 0 is itself ephemeral: between its release here and
/// the bind of the process it is meant for (or that process's restart), an outgoing connection of
/// a test running alongside can get it as its local port. Falls back to port 0.
pub fn free_port() -> u16 {
    const FLOOR: u16 = 10_000;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(0);
    if ephemeral_low > FLOOR + 1_000 {
        let span = usize::from(ephemeral_low - FLOOR);
        // Test binaries run at the same time (other engineers' too) start at different points.
        let offset = std::process::id() as usize * 7_919;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = FLOOR + ((offset + n) % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Ports of a two-hub, two-node site.
#[derive(Debug, Clone)]
pub struct Ports {
    pub hub1: u16,
    pub hub1_admin: u16,
    pub hub2: u16,
    pub hub2_admin: u16,
    pub node1: u16,
    pub node1_admin: u16,
    pub node2: u16,
    pub node2_admin: u16,
}

impl Ports {
    pub fn new() -> Ports {
        Ports {
            hub1: free_port(),
            hub1_admin: free_port(),
            hub2: free_port(),
            hub2_admin: free_port(),
            node1: free_port(),
            node1_admin: free_port(),
            node2: free_port(),
            node2_admin: free_port(),
        }
    }
}

/// A test site: a temp directory with `site.toml` and the data directory.
pub struct TestSite {
    pub dir: tempfile::TempDir,
    pub ports: Ports,
}

impl TestSite {
    /// A site with SG1 = alice, bob (+ `extra_mailboxes`) and the given extra `[site]` lines.
    pub fn new(site_extra: &str, extra_mailboxes: &[&str]) -> TestSite {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = Ports::new();
        let t = TestSite { dir, ports };
        t.write_config("site.toml", site_extra, extra_mailboxes);
        t
    }

    /// Writes a config file of this site's ports under `name`.
    pub fn write_config(&self, name: &str, site_extra: &str, extra_mailboxes: &[&str]) -> PathBuf {
        let p = &self.ports;
        let mut mailboxes = vec!["alice@example.test", "bob@example.test"];
        mailboxes.extend_from_slice(extra_mailboxes);
        let mailboxes = mailboxes
            .iter()
            .map(|m| format!("\"{m}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            r#"[site]
name = "test"
accepted_domains = ["example.test"]
admin_token = "test-token"
retry_min = "200ms"
retry_max = "1s"
{site_extra}

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
witness = "witness/cms1"

[[cms.node]]
name = "node1"
smtp = "127.0.0.1:{}"
admin = "127.0.0.1:{}"

[[cms.node]]
name = "node2"
smtp = "127.0.0.1:{}"
admin = "127.0.0.1:{}"

[[cms.storage_group]]
name = "SG1"
mailboxes = [{mailboxes}]

[[cms.storage_group]]
name = "SG2"
mailboxes = ["carol@example.test"]
"#,
            p.hub1,
            p.hub1_admin,
            p.hub2,
            p.hub2_admin,
            p.node1,
            p.node1_admin,
            p.node2,
            p.node2_admin
        );
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("site.toml")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `hubrelay <args> --config site.toml --data data` and waits for `ready`.
    pub fn start(&self, args: &[&str]) -> Proc {
        self.start_with(&self.config(), args)
    }

    /// Like [`start`] with another config file.
    pub fn start_with(&self, config: &Path, args: &[&str]) -> Proc {
        Proc::start(config, &self.data(), args)
    }

    /// Runs a CLI command with `--json` and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> (i32, Value) {
        let out = Command::new(bin())
            .args(args)
            .arg("--json")
            .arg("--config")
            .arg(self.config())
            .output()
            .expect("run hubrelay");
        let code = out.status.code().unwrap_or(-1);
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            Value::String(format!(
                "stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        });
        (code, v)
    }

    /// One stored message as `hubrelay mailbox --message-id` prints it (the command must succeed).
    pub fn stored_message(&self, address: &str, message_id: &str) -> Vec<u8> {
        let out = Command::new(bin())
            .args([
                "mailbox",
                "--address",
                address,
                "--message-id",
                message_id,
                "--config",
            ])
            .arg(self.config())
            .output()
            .expect("run hubrelay");
        assert!(
            out.status.success(),
            "mailbox --message-id {message_id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Message-IDs listed in a mailbox (via `hubrelay mailbox --json`).
    pub fn mailbox_ids(&self, address: &str) -> Vec<String> {
        let (code, v) = self.cli_json(&["mailbox", "--address", address]);
        assert_eq!(code, 0, "mailbox listing failed: {v}");
        v["messages"]
            .as_array()
            .expect("messages array")
            .iter()
            .map(|m| m["message_id"].as_str().expect("message_id").to_string())
            .collect()
    }

    /// Polls the mailbox listing until `pred` holds (deliveries are asynchronous); panics after `limit`.
    pub fn wait_mailbox(
        &self,
        address: &str,
        limit: Duration,
        pred: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let start = Instant::now();
        loop {
            let (code, v) = self.cli_json(&["mailbox", "--address", address]);
            if code == 0 {
                let ids: Vec<String> = v["messages"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| m["message_id"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if pred(&ids) {
                    return ids;
                }
            }
            assert!(
                start.elapsed() < limit,
                "mailbox {address} never reached the expected state: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestSite {
    /// A failed test keeps its site (config, data, one log per process) for inspection.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = std::env::temp_dir().join(format!(
                "hubrelay-failed-{}-{}",
                std::process::id(),
                self.ports.hub1
            ));
            let copied = Command::new("cp")
                .arg("-a")
                .arg(self.dir.path())
                .arg(&kept)
                .status()
                .is_ok_and(|s| s.success());
            if copied {
                eprintln!("test site kept in {}", kept.display());
            }
        }
    }
}

/// A running `hubrelay` process; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub lines: Vec<String>,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn start(config: &Path, data: &Path, args: &[&str]) -> Proc {
        Proc::start_env(config, data, args, &[])
    }

    /// [`Proc::start`] with extra environment variables (a preloaded fake clock, say).
    pub fn start_env(config: &Path, data: &Path, args: &[&str], env: &[(&str, &Path)]) -> Proc {
        std::fs::create_dir_all(data).expect("data dir");
        let stderr = data.join(format!(
            "{}-{}.log",
            args.join("-").replace(['/', ' '], "_"),
            free_port()
        ));
        let mut child = Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(config)
            .arg("--data")
            .arg(data)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("log file"))
            .spawn()
            .expect("spawn hubrelay");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if l == "ready" => break,
                Ok(l) => lines.push(l),
                Err(_) => {
                    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
                    panic!("hubrelay {args:?} did not become ready; output {lines:?}; log:\n{log}");
                }
            }
        }
        Proc {
            child,
            lines,
            stderr,
        }
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().ok().and_then(|s| s.code())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGHUP: reload certificates and secrets.
    pub fn sighup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "SIGHUP");
    }
}

/// One message from bob to alice through hub `port`, which must answer 250.
pub fn through_hub(port: u16, message_id: &str) {
    let (code, out) = smtplib_send(
        port,
        "bob@example.test",
        &["alice@example.test"],
        &message(Some(message_id), "through a hub"),
    );
    assert_eq!(code, 0, "the hub acknowledges: {out}");
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one message with Python's smtplib; returns (exit code, stdout+stderr).
pub fn smtplib_send(port: u16, from: &str, to: &[&str], message: &str) -> (i32, String) {
    let script = r#"
import smtplib, sys, json
port, sender, rcpts, msg = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.stdin.read()
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.ehlo("client.test")
    refused = s.sendmail(sender, rcpts, msg.encode())
    print("refused", json.dumps(refused))
"#;
    let to = serde_json::to_string(to).expect("json");
    run_python(script, &[&port.to_string(), from, &to], message)
}

/// Runs a Python `script` with `args`, `stdin` on its standard input; returns (exit code,
/// stdout+stderr).
fn run_python(script: &str, args: &[&str], stdin: &str) -> (i32, String) {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed for the tests");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Sends one message with Python's smtplib, with ESMTP parameters: `mail_options` on MAIL FROM
/// (e.g. `RET=FULL`) and each recipient's own (e.g. `NOTIFY=SUCCESS`). Every command must be
/// accepted; returns (exit code, stdout+stderr).
pub fn smtplib_send_with(
    port: u16,
    from: &str,
    mail_options: &[&str],
    to: &[(&str, &[&str])],
    message: &str,
) -> (i32, String) {
    let script = r#"
import smtplib, sys, json
port, sender, mail_options, rcpts = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
msg = sys.stdin.read()
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.ehlo("client.test")
    assert s.has_extn("dsn"), "DSN is not advertised"
    code, reply = s.mail(sender, mail_options)
    assert code == 250, (code, reply)
    for addr, options in rcpts:
        code, reply = s.rcpt(addr, options)
        assert code == 250, (addr, code, reply)
    code, reply = s.data(msg.encode())
    assert code == 250, (code, reply)
    print("sent")
"#;
    let rcpts: Vec<(&str, &[&str])> = to.to_vec();
    let mail_options = serde_json::to_string(mail_options).expect("json");
    let rcpts = serde_json::to_string(&rcpts).expect("json");
    run_python(
        script,
        &[&port.to_string(), from, &mail_options, &rcpts],
        message,
    )
}

/// One long-lived Python smtplib client for tests that send many messages: the interpreter starts
/// once, and each message is one SMTP session of its own, as with [`smtplib_send`].
pub struct Smtplib {
    child: Child,
    replies: BufReader<std::process::ChildStdout>,
}

impl Smtplib {
    /// Starts the interpreter; it serves one message per [`Smtplib::send`] until dropped.
    pub fn start() -> Smtplib {
        let script = r#"
import smtplib, sys, json
for line in sys.stdin:
    req = json.loads(line)
    try:
        with smtplib.SMTP("127.0.0.1", req["port"], timeout=20) as s:
            s.ehlo("client.test")
            refused = s.sendmail(req["from"], req["to"], req["msg"].encode())
        print("refused", json.dumps(refused), flush=True)
    except Exception as e:
        print("error", repr(e).replace("\n", " "), flush=True)
"#;
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed for the tests");
        let replies = BufReader::new(child.stdout.take().expect("stdout"));
        Smtplib { child, replies }
    }

    /// Sends one message; returns the client's one-line outcome (`refused {...}` or `error ...`).
    pub fn send(&mut self, port: u16, from: &str, to: &[&str], message: &str) -> String {
        let req = serde_json::json!({"port": port, "from": from, "to": to, "msg": message});
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{req}").expect("write to python3");
        stdin.flush().expect("flush to python3");
        let mut line = String::new();
        self.replies
            .read_line(&mut line)
            .expect("read from python3");
        line
    }
}

impl Drop for Smtplib {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw SMTP connection for dialogs smtplib cannot express (pipelining, smuggling, limits).
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut r = Raw {
            stream,
            buf: Vec::new(),
        };
        let greeting = r.reply();
        assert!(greeting.starts_with("220"), "{greeting}");
        r
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one (possibly multi-line) reply.
    pub fn reply(&mut self) -> String {
        let mut text = String::new();
        loop {
            let line = self.line();
            let last = line.as_bytes().get(3) != Some(&b'-');
            text.push_str(&line);
            if last {
                return text;
            }
        }
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return String::from_utf8_lossy(&line).into_owned();
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("read reply");
            assert!(
                n > 0,
                "connection closed; partial: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command line and returns its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }
}

/// A small RFC 5322 message with a given Message-ID.
pub fn message(message_id: Option<&str>, subject: &str) -> String {
    let mid = message_id
        .map(|m| format!("Message-ID: {m}\r\n"))
        .unwrap_or_default();
    format!("From: bob@example.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n{mid}\r\nHello from {subject}.\r\n")
}

/// One HTTP call to an admin API on 127.0.0.1: `method path`, with `Authorization: Bearer token`
/// when given and `body` as JSON when given. Returns the status and the body text.
pub fn api(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut req = client.request(method, format!("http://127.0.0.1:{port}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} on port {port}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("response body");
        (status, text)
    })
}

/// An authenticated admin call that must answer 200 with JSON; returns the document.
pub fn api_json(port: u16, method: &str, path: &str, body: Option<&str>) -> Value {
    let (status, text) = api(port, method, path, Some(TOKEN), body);
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
}

/// Polls `probe` until it returns `Some`, panicking with `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a hub's delivery queue (`GET /api/queue`) is empty.
pub fn wait_queue_empty(admin_port: u16) {
    wait_for(
        Duration::from_secs(20),
        &format!("the queue of the hub on admin port {admin_port} to drain"),
        || {
            let v = api_json(admin_port, "GET", "/api/queue", None);
            (v["messages"].as_u64() == Some(0)).then_some(())
        },
    )
}

/// The value of a hub's `/metrics` sample `name` (a series with only the `hub` label).
pub fn metric(admin_port: u16, name: &str) -> u64 {
    let (status, text) = api(admin_port, "GET", "/metrics", Some(TOKEN), None);
    assert_eq!(status, 200, "{text}");
    let prefix = format!("{name}{{hub=");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

/// The value of a node's `hubrelay_smtp_auth_refused_total{reason}` in its `/metrics` text.
pub fn auth_refused_in(text: &str, reason: &str) -> u64 {
    text.lines()
        .find(|l| {
            l.starts_with("hubrelay_smtp_auth_refused_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!("no hubrelay_smtp_auth_refused_total{{reason={reason}}} in:\n{text}")
        })
}

/// Sends `ids` to alice through `port` in one SMTP session (Python's smtplib), each with a body of
/// `body_bytes` bytes; panics unless every message got its 250.
pub fn send_to_alice(port: u16, ids: &[String], body_bytes: usize) {
    let script = r#"
import smtplib, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
    for mid in sys.stdin.read().split():
        msg = "From: bob@example.test\r\nTo: alice@example.test\r\nSubject: load\r\nMessage-ID: %s\r\n\r\n%s\r\n" % (mid, "x" * size)
        s.sendmail("bob@example.test", ["alice@example.test"], msg.encode())
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, &port.to_string(), &body_bytes.to_string()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(ids.join("\n").as_bytes())
        .expect("write");
    assert!(
        child.wait().expect("python3").success(),
        "sending through {port} failed"
    );
}

/// Message-IDs `<prefix-N@client.test>` for N in `range`.
pub fn message_ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("<{prefix}-{i}@client.test>"))
        .collect()
}

/// Waits until alice's mailbox (on whichever node is active) holds exactly `want`, each once.
pub fn wait_alice_exactly(site: &TestSite, want: &[String], limit: Duration) {
    let want_set: std::collections::BTreeSet<&String> = want.iter().collect();
    let got = site.wait_mailbox("alice@example.test", limit, |got| {
        got.len() >= want.len() && want.iter().all(|w| got.contains(w))
    });
    let got_set: std::collections::BTreeSet<&String> = got.iter().collect();
    assert_eq!(got.len(), got_set.len(), "a Message-ID is listed twice");
    assert_eq!(got_set, want_set);
}
