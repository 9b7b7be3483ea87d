#!/usr/bin/env python3
"""Fault campaign: hubrelay's promise under continuous load with faults injected.

The four roles of a site (hub1, hub2, node1, node2) run as separate processes. Client threads
(Python's smtplib: not the code under test) send continuously through both hubs, each message with a
unique Message-ID to a random subset of alice and bob (SG1) and carol (SG2). Meanwhile a seeded
schedule injects faults. Then the load stops, every process is resumed or restarted, and, once the
site has settled by itself (no manual command: no resubmit, no move), the campaign checks:

- every (Message-ID, recipient) a hub answered 250 for is in that mailbox exactly once;
- no Message-ID is in any mailbox twice (acknowledged or not);
- a final scheduled move loses nothing (the passive's copy equals the active's);
- from the nodes' own logs, no node acknowledged a delivery in an epoch older than one in which the
  other node had already acknowledged (no overlapping authority);
- nothing panicked, and exactly one node is active.

Exit status 0 only if all of that holds. See tests/campaign/README.md for the commands.
"""

import argparse
import atexit
import datetime
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "netns"))
import netns  # noqa: E402  (tests/netns/netns.py, stdlib only)

TOKEN = "campaign-token"
MAILBOXES = ["alice@example.test", "bob@example.test", "carol@example.test"]
KINDS = [
    "kill-active",
    "kill-passive",
    "kill-hub",
    "pause-active",
    "move",
    "move-interrupted",
    "lossy-failover",
    "sigterm-active",
    "disk-full",
    "clock-step",
    "reseed",
    "truncate-kill",
]
# Partitions: only with --netns, where every role has a network namespace of its own.
PARTITIONS = ["cut-nodes", "oneway-nodes", "cut-hub-active", "link-down-active", "lossy-nodes",
              "lossy-hub-active", "slow-hub-active"]
# Faults of the network or the witness that need more than the default site: what each needs
# ("netns": --netns, "etcd": --witness etcd). Requested where they cannot be, they are skipped
# with a note, as clock-step is without libfaketime.
NEEDS = {
    "cut-active-witness": ("netns", "etcd"),
    "cut-passive-witness": ("netns", "etcd"),
    "isolate-active": ("netns", "etcd"),
    "flap-nodes": ("netns",),
    "kill-witness": ("etcd",),
}
WITNESS_KINDS = list(NEEDS)
# Faults followed by the after-heal measurement (an active node, a probe through each hub).
HEALED = PARTITIONS + WITNESS_KINDS
# The etcd witness's key prefix (the holder key and the note board live under it).
ETCD_PREFIX = "hubrelay/cms1"
# Set in the process that runs inside the clients' namespace: the network's state (netns.Net).
NETNS_ENV = "HUBRELAY_CAMPAIGN_NETNS"
# A mailbox only the probes after a heal go to: small to list while the load fills the others.
PROBE_BOX = "probe@example.test"
# How long libfaketime keeps a role's clock offset before it reads its file again (seconds): a step
# takes effect within this, and no role reads a file on every clock call.
CLOCK_CACHE_S = 1
# The site's min_free_space (bytes): a disk-full fault leaves half of it free, or nothing.
MIN_FREE = 64 << 20
MOUNT_LINE = re.compile(r"^(\S+)\s+(?:INFO|WARN)\s.*\bdatabases mounted\b.*\bnode=(\S+).*\bepoch=(\d+)")
ACK_LINE = re.compile(r"^(\S+)\s+INFO\s.*\backnowledged\b.*\bnode=(\S+).*\bepoch=(\d+)")
# When an acknowledging node checked its authority (its own clock), if the line says: the 250 may go
# out later (a pause of the process after the check), which the hubs' epoch fence covers.
FENCED_AT = re.compile(r"\bfenced_at=(\S+)")


class Failure(Exception):
    """The site did something the campaign cannot go on from."""


def free_ports(rng, n):
    ports = []
    while len(ports) < n:
        p = rng.randrange(20000, 30000)
        if p in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        ports.append(p)
    return ports


def etcd_binary():
    """Debian's etcd server (etcd-server), installed by tests/install-package.sh where missing, as
    the etcd witness tests do; None if it cannot be had."""
    if not os.path.exists("/usr/bin/etcd"):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "install-package.sh")
        subprocess.run(["bash", script, "etcd-server"], capture_output=True)
    return "/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None


class Etcd:
    """A one-member etcd cluster for the etcd witness: with a network, alone in the `witness`
    namespace (so a cut between it and a node is like any other); without, on free 127.0.0.1
    ports. Its data and its log (etcd.log) are in the site directory; killed when the site stops,
    and at exit."""

    def __init__(self, site_dir, net):
        self.bin = etcd_binary()
        self.net = net
        self.data = os.path.join(site_dir, "etcd-data")
        self.log = os.path.join(site_dir, "etcd.log")
        if net:
            self.host, (self.port, self.peer_port) = net.ip["witness"], (2379, 2380)
        else:
            # Not the campaign's seeded generator: the fault schedule is the same for either witness.
            self.host, (self.port, self.peer_port) = "127.0.0.1", free_ports(random.Random(), 2)
        self.proc = None
        atexit.register(self.kill9)

    def witness(self):
        return f"etcd://{self.host}:{self.port}/{ETCD_PREFIX}"

    def start(self, limit=30):
        """Starts it (on the same data as before, if any) and waits until it serves."""
        client, peer = f"http://{self.host}:{self.port}", f"http://{self.host}:{self.peer_port}"
        argv = [self.bin, "--name", "witness", "--data-dir", self.data,
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"witness={peer}"]
        with open(self.log, "ab") as err:
            err.write(f"--- campaign: etcd started at {time.time():.3f}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(self.net.wrap("witness", argv) if self.net else argv,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)
        deadline = time.time() + limit
        while not self.serves():
            if self.proc.poll() is not None:
                raise Failure(f"etcd exited with {self.proc.returncode}; see {self.log}")
            if time.time() > deadline:
                raise Failure(f"etcd did not serve within {limit}s; see {self.log}")
            time.sleep(0.05)

    def serves(self):
        """Whether it answers a linearizable read (it has a leader), through the JSON gateway the
        witness uses."""
        req = urllib.request.Request(f"http://{self.host}:{self.port}/v3/kv/range",
                                     data=b'{"key":"AA=="}')
        try:
            with urllib.request.urlopen(req, timeout=1) as r:
                return r.status == 200
        except Exception:
            return False

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Site:
    def __init__(self, binary, rng, keep, net=None, witness="share"):
        self.bin = os.path.abspath(binary)
        self.dir = tempfile.mkdtemp(prefix="hubrelay-campaign-")
        self.keep = keep
        self.net = net
        names = ("hub1", "hub2", "node1", "node2")
        if net:
            # Each role alone at its address in its namespace: the same ports everywhere.
            self.host = {n: net.ip[n] for n in names}
            self.addr = {n: (2525, 8025) for n in names}
        else:
            self.host = {n: "127.0.0.1" for n in names}
            p = free_ports(rng, 8)
            self.addr = {n: (p[2 * i], p[2 * i + 1]) for i, n in enumerate(names)}
        self.etcd = Etcd(self.dir, net) if witness == "etcd" else None
        # The probes after a heal (partitions, the etcd witness's faults) have a mailbox of their own.
        probes = bool(net or self.etcd)
        self.mailboxes = MAILBOXES + ([PROBE_BOX] if probes else [])
        # Faults healed, as partition() measured them (a dict each: kind, what, started, healed, ...
        self.recoveries = []
        # Expectations a fault broke without stopping the run (they fail it at the end).
        self.problems = []
        self.load = None
        self.config = os.path.join(self.dir, "site.toml")
        roles = "".join(
            f'\n[[hub]]\nname = "{h}"\nsmtp = "{self.host[h]}:{self.addr[h][0]}"\nadmin = "{self.host[h]}:{self.addr[h][1]}"\n'
            for h in ("hub1", "hub2")
        )
        nodes = "".join(
            f'\n[[cms.node]]\nname = "{n}"\nsmtp = "{self.host[n]}:{self.addr[n][0]}"\nadmin = "{self.host[n]}:{self.addr[n][1]}"\n'
            for n in ("node1", "node2")
        )
        with open(self.config, "w") as f:
            f.write(
                '[site]\nname = "campaign"\naccepted_domains = ["example.test"]\n'
                f'admin_token = "{TOKEN}"\nretry_min = "200ms"\nretry_max = "1s"\n'
                f'min_free_space = {MIN_FREE}\n'
                f"{roles}\n[[cms]]\nname = \"cms1\"\nwitness = \"{self.etcd.witness() if self.etcd else 'witness/cms1'}\"\n"
                'log_file_size = "64KiB"\nauto_database_mount_dial = "BestAvailability"\n'
                # Logs behind every checkpoint go within seconds: every fault meets truncation.
                'log_tail = 2\n'
                f"{nodes}\n[[cms.storage_group]]\nname = \"SG1\"\n"
                'mailboxes = ["alice@example.test", "bob@example.test"]\n\n'
                '[[cms.storage_group]]\nname = "SG2"\nmailboxes = ["carol@example.test"'
                + (f', "{PROBE_BOX}"' if probes else "") + "]\n"
            )
        self.procs = {}
        self.paused = set()
        self.mounts = []
        self.faketime = None
        # Clock steps made, for reading the roles' log times back: (role, offset s, start, end).
        self.steps = []

    def use_faketime(self):
        """Starts every role under libfaketime, its wall clock shifted by the offset in a file of its
        own (`step_clock`), its monotonic clock untouched. Returns why not, if it cannot."""
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clocks",
                              "install-faketime.sh")
        r = subprocess.run(["bash", script], capture_output=True)
        if r.returncode != 0:
            return r.stderr.decode().strip() or f"install-faketime.sh exited {r.returncode}"
        self.faketime = r.stdout.decode().strip()
        for name in self.addr:
            self.step_clock(name, "+0")
        return None

    def clock_file(self, name):
        return os.path.join(self.dir, f"clock-{name}")

    def step_clock(self, name, offset):
        """Sets `name`'s wall clock to real time + `offset` (libfaketime syntax: `+1h`, `-1h`, `+0`)."""
        with open(self.clock_file(name), "w") as f:
            f.write(offset + "\n")
        now = time.time()
        if self.steps and self.steps[-1][0] == name and self.steps[-1][3] is None:
            self.steps[-1] = self.steps[-1][:3] + (now,)
        if offset != "+0":
            hours = int(offset.rstrip("h"))
            self.steps.append((name, hours * 3600, now, None))

    def real_time(self, name, logged):
        """The real time of a log line `name` wrote at `logged` (seconds): a line written while its
        clock was stepped (within the cache time around the step) is moved back by the step. The
        steps are an hour and a run minutes, so no unstepped line can be mistaken for one."""
        slack = CLOCK_CACHE_S + 1
        for role, offset, start, end in self.steps:
            end = time.time() if end is None else end
            if role == name and start - slack <= logged - offset <= end + slack:
                return logged - offset
        return logged

    def mount_data(self):
        """Puts each role's data directory on a filesystem of its own that `fill` can fill up.
        Returns why not, if it cannot (mounting needs root)."""
        for n in ("node1", "node2", "hub1", "hub2"):
            path = os.path.join(self.dir, "data", n)
            os.makedirs(path, exist_ok=True)
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g", f"campaign-{n}", path],
                               capture_output=True)
            if r.returncode != 0:
                return r.stderr.decode().strip() or f"mount exited {r.returncode}"
            self.mounts.append(path)
        return None

    def fill(self, name, seconds, leave):
        """Keeps `name`'s data filesystem with at most `leave` bytes free for `seconds` (taking
        back whatever the role frees meanwhile), then frees it."""
        path = os.path.join(self.dir, "data", name)
        fillers = []
        deadline = time.time() + seconds
        while time.time() < deadline:
            st = os.statvfs(path)
            free = st.f_bavail * st.f_frsize
            if free > leave:
                filler = os.path.join(path, f"campaign-filler-{len(fillers)}")
                fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
                fillers.append(filler)
                try:
                    os.posix_fallocate(fd, 0, free - leave)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            time.sleep(0.05)
        for filler in fillers:
            os.remove(filler)

    def mail_refused(self, hub):
        """The reply to MAIL FROM at `hub`, if it is not 250 (a disk short of its reserve: 452)."""
        try:
            with smtplib.SMTP(self.host[hub], self.addr[hub][0], timeout=5) as s:
                s.ehlo("campaign.test")
                code, text = s.mail("probe@campaign.test")
                return None if code == 250 else f"{code} {text.decode(errors='replace')}"
        except (OSError, smtplib.SMTPException) as e:
            return repr(e)

    def log(self, name):
        return os.path.join(self.dir, f"{name}.log")

    def start(self, name):
        role = "hub" if name.startswith("hub") else "node"
        err = open(self.log(name), "ab")
        env = dict(os.environ)
        # Truncations are logged at debug: truncate-kill waits for one.
        env.setdefault("HUBRELAY_LOG", "info,hubrelay::node::checkpoint=debug")
        if self.faketime:
            env.update(LD_PRELOAD=self.faketime, FAKETIME_TIMESTAMP_FILE=self.clock_file(name),
                       FAKETIME_CACHE_DURATION=str(CLOCK_CACHE_S), DONT_FAKE_MONOTONIC="1")
        argv = [self.bin, role, "--name", name, "--config", self.config, "--data",
                os.path.join(self.dir, "data")]
        proc = subprocess.Popen(
            self.net.wrap(name, argv) if self.net else argv,
            stdout=subprocess.PIPE, stderr=err, start_new_session=True, env=env,
        )
        err.close()
        ready = threading.Event()

        def read():
            for line in proc.stdout:
                if line.strip() == b"ready":
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            proc.kill()
            raise Failure(f"{name} did not become ready; see {self.log(name)}")
        self.procs[name] = proc

    def signal(self, name, sig):
        proc = self.procs.get(name)
        if proc and proc.poll() is None:
            os.kill(proc.pid, sig)

    def kill9(self, name):
        self.paused.discard(name)
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()

    def pause(self, name):
        self.signal(name, signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name):
        self.signal(name, signal.SIGCONT)
        self.paused.discard(name)

    def terminate(self, name, limit=60):
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(limit)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise Failure(f"{name} did not stop within {limit}s of SIGTERM")

    def ensure_up(self):
        for name in ("node1", "node2", "hub1", "hub2"):
            if name in self.paused:
                self.resume(name)
            if name not in self.procs or self.procs[name].poll() is not None:
                self.procs.pop(name, None)
                self.start(name)

    def stop_all(self):
        for name in list(self.procs):
            self.resume(name)
            self.kill9(name)
        if self.etcd:
            self.etcd.kill9()
        for path in self.mounts:
            if self.keep:
                # Keep the logs for inspection: copy them off the filesystem before it goes.
                shutil.copytree(path, path + ".kept", dirs_exist_ok=True)
            subprocess.run(["umount", path], capture_output=True)
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def api(self, name, path, method="GET", timeout=3):
        req = urllib.request.Request(
            f"http://{self.host[name]}:{self.addr[name][1]}{path}", method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            data=b"{}" if method == "POST" else None,
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def node_status(self, name, timeout=1):
        try:
            return self.api(name, "/api/status", timeout=timeout)
        except Exception:
            return None

    def roles(self, timeout=1):
        return {n: self.node_status(n, timeout) for n in ("node1", "node2")}

    def active(self, timeout=1):
        actives = [n for n, s in self.roles(timeout).items() if s and s.get("mounted")]
        return actives[0] if len(actives) == 1 else None

    def wait_active(self, limit=40):
        deadline = time.time() + limit
        while time.time() < deadline:
            a = self.active()
            if a:
                return a
            time.sleep(0.2)
        raise Failure(f"no active node within {limit}s: {self.roles()}")

    def cli(self, *args, timeout=90):
        return subprocess.run([self.bin, *args, "--config", self.config], capture_output=True,
                              timeout=timeout)


class Load:
    """Client threads sending through both hubs; every 250 is recorded."""

    def __init__(self, site, rng, clients, seed, pause_s):
        self.site, self.seed, self.pause_s = site, seed, pause_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked = {}  # message id -> recipients a 250 covered
        self.latencies = []  # (start of the DATA transaction, seconds to its 250)
        self.sent = 0
        self.threads = [
            threading.Thread(target=self.run, args=(i, random.Random(rng.random())), daemon=True)
            for i in range(clients)
        ]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def run(self, idx, rng):
        n = 0
        body_pad = "x" * 76 + "\r\n"
        while not self.stop.is_set():
            hub = rng.choice(["hub1", "hub2"])
            try:
                with smtplib.SMTP(self.site.host[hub], self.site.addr[hub][0], timeout=20) as s:
                    for _ in range(rng.randint(1, 5)):
                        if self.stop.is_set():
                            break
                        n += 1
                        mid = f"<campaign-{self.seed}-{idx}-{n}@campaign.test>"
                        rcpts = rng.sample(MAILBOXES, rng.randint(1, 3))
                        msg = (f"From: load@campaign.test\r\nTo: {', '.join(rcpts)}\r\n"
                               f"Message-ID: {mid}\r\nSubject: {n}\r\n\r\n" + body_pad * 52)
                        with self.lock:
                            self.sent += 1
                        began = time.time()
                        try:
                            refused = s.sendmail("load@campaign.test", rcpts, msg.encode())
                        except smtplib.SMTPRecipientsRefused:
                            continue
                        except (smtplib.SMTPResponseException, smtplib.SMTPDataError):
                            continue
                        with self.lock:
                            self.acked[mid] = [r for r in rcpts if r not in refused]
                            self.latencies.append((began, time.time() - began))
            except (OSError, smtplib.SMTPException):
                pass
            self.stop.wait(self.pause_s)


def disk_errors(site, active, note):
    """A disk that fails every write (a switch only fault-injection builds read), past the 10 s
    after which the active gives its databases to a healthy passive."""
    switch = os.path.join(site.dir, "data", active, "logs", "FAIL-WRITES")
    open(switch, "w").close()
    try:
        deadline = time.time() + 30
        while time.time() < deadline and site.active() in (active, None):
            time.sleep(0.2)
        if site.active() in (active, None):
            if "injected disk error" in open(site.log(active), errors="replace").read():
                raise Failure(f"{active}'s log failed for 30 s and it kept the databases")
            note("disk-full: persistent variant not injected (build with --features fault-injection)")
    finally:
        os.remove(switch)


def probe(site, hub, mid):
    """Sends one message through `hub` to the probe mailbox; True once a hub answered 250 (it is
    then acknowledged like the load's, and checked with them)."""
    msg = f"From: probe@campaign.test\r\nTo: {PROBE_BOX}\r\nMessage-ID: {mid}\r\n\r\nprobe\r\n"
    try:
        with smtplib.SMTP(site.host[hub], site.addr[hub][0], timeout=5) as s:
            s.sendmail("probe@campaign.test", [PROBE_BOX], msg.encode())
    except (OSError, smtplib.SMTPException):
        return False
    with site.load.lock:
        site.load.acked[mid] = [PROBE_BOX]
    return True


def log_time(stamp):
    """A log line's timestamp (RFC 3339, UTC) as seconds since the epoch."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def log_size(site, name):
    try:
        return os.path.getsize(site.log(name))
    except FileNotFoundError:
        return 0


def decided(m, text_line):
    """The time of an `acknowledged` line's authority check (`fenced_at`), else of the line."""
    fenced = FENCED_AT.search(text_line)
    return fenced.group(1) if fenced else m.group(1)


def acks_since(site, node, offset, since, line=ACK_LINE):
    """`node`'s own `acknowledged` log lines (or `line`'s) written after byte `offset` of its log
    and at or after `since` (real time, s): a list of (time, epoch)."""
    out = []
    try:
        with open(site.log(node), "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return out
    for text_line in text.splitlines():
        m = line.match(text_line)
        if m and m.group(2) == node:
            ts = site.real_time(node, log_time(decided(m, text_line)))
            if ts >= since:
                out.append((ts, int(m.group(3))))
    return out


def failovers(site, offsets, active, since):
    """From the nodes' `databases mounted` log lines since `since`: how many times the other node
    than the one active before became active (failovers), and how many times the same node
    mounted again in a new epoch (remounts)."""
    mounts = sorted((t, n) for n in ("node1", "node2")
                    for t, _ in acks_since(site, n, offsets[n], since, MOUNT_LINE))
    moved = again = 0
    for _, n in mounts:
        if n == active:
            again += 1
        else:
            moved += 1
            active = n
    return moved, again


def max_epoch(site):
    """The highest epoch either node reports (None if neither answers)."""
    epochs = [s["epoch"] for s in site.roles(timeout=3).values() if s]
    return max(epochs) if epochs else None


# An active cut off from its peer and the witness must stop acknowledging within the lease time
# (3 s, of which it counts on 2) of its last renewal; the bound allows for the log line's delay.
STOP_ACK_BOUND_S = 3.5


def partition(site, kind, rng, active, passive, note):
    """A silent partition (or the etcd witness killed) for a few seconds, then healed; the site
    must then serve again by itself: an active node, and a message through each hub delivered to
    it, each within a bound. Some kinds check more: see the README's table."""
    net, seconds = site.net, rng.uniform(3, 8)
    ahead = None
    epoch0 = max_epoch(site)
    offsets = {n: log_size(site, n) for n in ("node1", "node2")}
    failures = []
    takeover = stop_ack = back_passive = None
    started = time.time()
    if kind == "cut-nodes":
        if site.faketime and rng.random() < 0.5:
            # The passive's wall clock an hour ahead while the nodes lose each other (sequence 2
            # of the issue about real hosts): it must not take the lease from the live active, and
            # an active node must serve once the link is back.
            ahead = passive
            site.step_clock(passive, "+1h")
            time.sleep(CLOCK_CACHE_S + 0.5)
        started = time.time()
        net.cut("node1", "node2")
        what = "node1 <-> node2" + (f", {passive}'s clock 1 h ahead" if ahead else "")
    elif kind == "oneway-nodes":
        src, dst = rng.choice([(active, passive), (passive, active)])
        net.drop_one_way(src, dst)
        what = f"{src} -> {dst} ({'active' if src == active else 'passive'} -> peer)"
    elif kind == "cut-hub-active":
        hub = rng.choice(["hub1", "hub2"])
        net.cut(hub, active)
        what = f"{hub} <-> {active} (active)"
    elif kind == "link-down-active":
        net.link_down(active)
        what = f"{active} (active) link down"
    elif kind == "lossy-nodes":
        percent = rng.randint(20, 60)
        net.lossy("node1", "node2", percent)
        what = f"node1 <-> node2 losing {percent}% of packets"
    elif kind == "lossy-hub-active":
        hub, percent = rng.choice(["hub1", "hub2"]), rng.randint(10, 40)
        net.lossy(hub, active, percent)
        what = f"{hub} <-> {active} (active) losing {percent}% of packets"
    elif kind == "slow-hub-active":
        hub, ms = rng.choice(["hub1", "hub2"]), rng.randint(100, 400)
        net.delay(hub, active, ms)
        what = f"{hub} <-> {active} (active) delayed {ms} ms each way"
    elif kind in ("cut-active-witness", "cut-passive-witness"):
        node = active if kind == "cut-active-witness" else passive
        net.cut(node, "witness")
        what = f"{node} ({'active' if node == active else 'passive'}) <-> witness"
    elif kind == "isolate-active":
        seconds = rng.uniform(6, 10)
        started = net.isolate(active, [passive, "witness"])
        what = f"{active} (active) <-> {passive} and witness (hubs still reach it)"
    elif kind == "flap-nodes":
        seconds = 8
        what = "node1 <-> node2 cut and healed"
    elif kind == "kill-witness":
        site.etcd.kill9()
        what = "etcd kill -9, restarted on its data"
    else:
        raise ValueError(kind)
    end = started + seconds
    passive_state = None
    if kind == "isolate-active":
        # The failover: when the passive says it holds the databases (its admin API, from the
        # clients' namespace, which no cut here touches).
        while time.time() < end:
            st = site.node_status(passive, timeout=1)
            if st and st.get("mounted"):
                takeover = time.time() - started
                break
            passive_state = st and (st.get("role"), st.get("reason"))
            time.sleep(0.1)
    elif kind == "flap-nodes":
        flaps = 0
        while time.time() < end:
            net.cut("node1", "node2")
            time.sleep(rng.uniform(0.2, 1.5))
            net.heal()
            flaps += 1
            time.sleep(min(rng.uniform(0.2, 1.5), max(0, end - time.time())))
        what += f" {flaps} times"
    time.sleep(max(0, end - time.time()))
    if kind == "kill-witness":
        site.etcd.start()
        what += f" after {time.time() - started:.1f}s"
    else:
        net.heal()
    healed = time.time()
    # Polled with a long timeout: the time until a node answers that it is active, not a guess
    # from requests given up on while a node just back on the network is busy.
    while site.active(timeout=5) is None and time.time() < healed + 30:
        time.sleep(0.1)
    to_active = time.time() - healed
    if ahead and site.active() not in (active, None):
        raise Failure(f"{kind} ({what}): {site.active()} took the databases from {active}, which "
                      "kept the witness lease all along: a clock ahead must not steal a lease")
    site.wait_active(1)
    # What the probes queue behind: a hub delivers its backlog first.
    try:
        backlog = ", ".join(f"{h} {site.api(h, '/api/queue')['messages']}" for h in ("hub1", "hub2"))
    except Exception as e:
        backlog = f"unknown ({e})"
    n = len(site.recoveries)
    mids = {h: f"<probe-{n}-{h}@campaign.test>" for h in ("hub1", "hub2")}
    pending = dict(mids)
    deadline = healed + 60
    while time.time() < deadline:
        for h in [h for h, m in pending.items() if m not in site.load.acked]:
            probe(site, h, pending[h])
        a = site.active()
        if a:
            try:
                box = site.api(a, f"/api/mailbox?address={urllib.request.quote(PROBE_BOX)}", timeout=5)
                there = {m["message_id"] for m in box["messages"]}
            except Exception:
                there = set()
            pending = {h: m for h, m in pending.items() if m not in there}
        if not pending:
            break
        time.sleep(0.2)
    to_served = time.time() - healed
    if ahead:
        site.step_clock(ahead, "+0")
    extra = ""
    if kind == "isolate-active" and takeover is not None:
        # The old active must come back by itself as the passive of the new one: following it
        # (sees it), its copies Healthy again (a diverged tail discarded, copying on).
        while time.time() < healed + 60:
            st = site.node_status(active, timeout=3)
            if (st and st.get("role") == "Passive" and st.get("sees_peer")
                    and all(g.get("summary_copy_status") == "Healthy" for g in st["storage_groups"])):
                back_passive = time.time() - healed
                break
            time.sleep(0.2)
        # From the isolated node's own log lines of acknowledged deliveries (written after its
        # last authority check, just before the 250 goes out).
    if kind == "isolate-active":
        # Until the heal: after it, the old active may rightly serve again (no failover happened).
        mine = [a for a in acks_since(site, active, offsets[active], started) if a[0] <= healed]
        theirs = acks_since(site, passive, offsets[passive], started)
        stop_ack = max((t for t, _ in mine), default=started) - started
        first_new = min((t for t, _ in theirs), default=None)
        extra = (f"; {active} acknowledged {len(mine)} deliveries after the cut, the last "
                 f"{stop_ack:.2f}s after it; {passive} mounted "
                 + (f"{takeover:.1f}s after the cut" if takeover is not None
                    else f"never during the cut (it was {passive_state})")
                 + (f", first acknowledged {first_new - started:.1f}s after it" if first_new else "")
                 + ("" if takeover is None else f"; {active} passive again {back_passive:.1f}s after the heal"
                    if back_passive is not None else f"; {active} NOT passive 60 s after the heal"))
        if stop_ack > STOP_ACK_BOUND_S:
            failures.append(f"{active}, cut off from its peer and the witness, acknowledged "
                            f"{stop_ack:.2f}s after the cut (bound {STOP_ACK_BOUND_S}s)")
        if takeover is None and "AutoDatabaseMountDial" not in str(passive_state):
            # Staying dismounted because more logs than the dial allows were not copied yet is
            # the dial doing its job (the note says so); anything else is not.
            failures.append(f"{passive} did not take the databases over in the {seconds:.1f}s "
                            f"{active} was cut off: {passive_state}")
        if takeover is not None and back_passive is None:
            failures.append(f"{active} was not a Healthy passive 60 s after the heal: "
                            f"{site.node_status(active, timeout=3)}")
    epoch1 = max_epoch(site)
    moved, again = failovers(site, offsets, active, started)
    if kind in ("cut-active-witness", "cut-passive-witness", "kill-witness"):
        # The nodes see each other throughout: quorum without the witness; mail flows on.
        acked = [t for t, _ in acks_since(site, active, offsets[active], started) if t <= healed]
        late = [t for t in acked if t >= healed - 1]
        extra = f"; {active} acknowledged {len(acked)} deliveries during it ({len(late)} in its last second)"
        if site.active() != active or moved or again:
            failures.append(f"the active changed ({active} -> {site.active()}, epoch {epoch0} -> "
                            f"{epoch1}) although the nodes saw each other")
        if not late:
            failures.append(f"{active} acknowledged nothing in the last second before the heal")
    utc = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    note(f"{kind}: {what} from {utc(started)} to {utc(healed)} UTC ({healed - started:.1f}s); "
         f"{moved} failover(s), {again} remount(s) (epoch {epoch0} -> {epoch1}){extra}; after the heal an active "
         f"node in {to_active:.1f}s, a message through each hub delivered in {to_served:.1f}s "
         f"(queued at the hubs then: {backlog})")
    site.recoveries.append({"kind": kind, "what": what, "started": started, "healed": healed,
                            "to_active": to_active, "to_served": to_served,
                            "failovers": moved, "remounts": again, "takeover": takeover, "stop_ack": stop_ack,
                            "back_passive": back_passive})
    for f in failures:
        # A broken expectation fails the run but does not end it: the remaining faults still say
        # how often it happens (and the final checks still run).
        site.problems.append(f"{kind} ({what}) at {utc(started)} UTC: {f}")
        print(f"  problem: {site.problems[-1]}", file=sys.stderr, flush=True)
    if pending:
        raise Failure(f"{kind} ({what}): 60 s after the heal, nothing sent through "
                      f"{sorted(pending)} since had reached the active node ({site.roles()})")


TRUNCATED_LINE = b"log generations behind the checkpoint deleted"


def copy_state(site, node, sg):
    """SummaryCopyStatus and error of `sg`'s copy on `node` (None if it does not answer)."""
    st = site.node_status(node, timeout=3)
    for g in (st or {}).get("storage_groups", []):
        if g["name"] == sg:
            return g.get("summary_copy_status"), g.get("error")
    return None, None


def update_until_healthy(site, sg, note, tries=3):
    """Runs `copy update` of `sg` (on whichever node holds the copy) until it ends Healthy: what an
    operator does after a reseed was cut short."""
    for attempt in range(tries):
        site.wait_active(60)
        r = site.cli("copy", "update", "--cms", "cms1", "--storage-group", sg, "--json", timeout=300)
        if r.returncode == 0:
            seeded = json.loads(r.stdout).get("seeded") or {}
            note(f"reseed: {sg}: {seeded.get('records')} records, {seeded.get('bytes')} bytes in "
                 f"{seeded.get('elapsed_ms')} ms (attempt {attempt + 1})")
            return
        note(f"reseed: {sg} attempt {attempt + 1}: {r.stdout.decode().strip()[:200]} {r.stderr.decode().strip()[:200]}")
        time.sleep(2)
    raise Failure(f"copy update of {sg} did not complete in {tries} attempts")


def reseed(site, rng, active, passive, note):
    """`copy update` of one storage group's copy under load; a third of the time the passive, a
    third the active, is killed -9 part-way (and started again). A reseed cut short must say so
    and complete when run again; the active keeps taking mail throughout."""
    sg = rng.choice(["SG1", "SG2"])
    how = rng.choice(["plain", "kill-passive", "kill-active"])
    if how == "plain":
        update_until_healthy(site, sg, note, tries=1)
        return
    p = subprocess.Popen([site.bin, "copy", "update", "--cms", "cms1", "--storage-group", sg,
                          "--json", "--config", site.config],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0, 1.0))
    victim = passive if how == "kill-passive" else active
    site.kill9(victim)
    try:
        p.wait(120)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    time.sleep(rng.uniform(0, 3) if victim == passive else rng.uniform(0, 8))
    site.start(victim)
    now_active = site.wait_active(60)
    holder = "node2" if now_active == "node1" else "node1"
    deadline = time.time() + 30
    state = copy_state(site, holder, sg)
    while state[0] not in ("Healthy", "FailedAndSuspended") and time.time() < deadline:
        time.sleep(0.5)
        state = copy_state(site, holder, sg)
    note(f"reseed: {sg} with {victim} ({how[5:]}) killed part-way: {holder}'s copy {state[0]} ({state[1]})")
    if state[0] != "Healthy":
        update_until_healthy(site, sg, note)


def truncate_kill(site, rng, active, passive, note):
    """kill -9 of a node right after it deleted log generations (the active: a failover right
    after truncation), then started again."""
    target = rng.choice([active, passive])
    path = site.log(target)
    offset = os.path.getsize(path)
    deadline = time.time() + 30
    seen = False
    while time.time() < deadline and not seen:
        with open(path, "rb") as f:
            f.seek(offset)
            new = f.read()
        seen = TRUNCATED_LINE in new
        time.sleep(0.02)
    site.kill9(target)
    note(f"truncate-kill: {target} ({'active' if target == active else 'passive'}) killed "
         + ("right after a truncation" if seen else "(no truncation within 30 s)"))
    time.sleep(rng.uniform(0, 8) if target == active else rng.uniform(0, 3))
    site.start(target)


def inject(site, kind, rng, note):
    """One fault of `kind`; returns when it has been carried out (the site may still be failing over)."""
    if kind == "kill-hub":
        hub = rng.choice(["hub1", "hub2"])
        site.kill9(hub)
        time.sleep(rng.uniform(0, 2))
        site.start(hub)
        return
    active = site.wait_active()
    passive = "node2" if active == "node1" else "node1"
    if kind in HEALED:
        partition(site, kind, rng, active, passive, note)
    elif kind == "reseed":
        reseed(site, rng, active, passive, note)
    elif kind == "truncate-kill":
        truncate_kill(site, rng, active, passive, note)
    elif kind == "kill-active":
        site.kill9(active)
        # Back before the failover timeout (it resumes its role) or after it (the passive mounts).
        time.sleep(rng.uniform(0, 8))
        site.start(active)
    elif kind == "kill-passive":
        site.kill9(passive)
        time.sleep(rng.uniform(0, 3))
        site.start(passive)
    elif kind == "pause-active":
        site.pause(active)
        time.sleep(rng.uniform(5, 6))
        site.resume(active)
    elif kind == "disk-full":
        if not site.mounts:
            note("disk-full: skipped, the data directories could not be mounted on their own filesystems")
            return
        target = rng.choice([active, active, passive, "hub1", "hub2"])
        if rng.random() < 0.25 and target == active:
            disk_errors(site, active, note)
            return
        # Short of min_free_space (452 while it lasts), or to the last byte (the store's and
        # log's writes fail), for a few seconds; then the role must serve again by itself.
        last_byte = rng.random() < 0.5
        seconds = rng.uniform(1, 3) if last_byte else rng.uniform(3, 6)
        site.fill(target, seconds, 0 if last_byte else MIN_FREE // 2)
        freed = time.time()
        how = "to the last byte" if last_byte else "short of min_free_space"
        if target.startswith("hub"):
            deadline = freed + 10
            while site.mail_refused(target) and time.time() < deadline:
                time.sleep(0.1)
            why = site.mail_refused(target)
            if why:
                raise Failure(f"{target} still refuses 10 s after its disk had room again: {why}")
            note(f"disk-full: {target} {how} {seconds:.1f}s, accepting again {time.time() - freed:.1f}s after")
        else:
            site.wait_active(30)
            note(f"disk-full: {target} ({'active' if target == active else 'passive'}) {how} {seconds:.1f}s, now active: {site.active()}")
    elif kind == "clock-step":
        if not site.faketime:
            note("clock-step: skipped, libfaketime is not available")
            return
        # Any role, the active most often: its wall clock an hour off for a few seconds (NTP, an
        # operator's `date -s`, a restored VM), then right again.
        target = rng.choice([active, active, passive, "hub1", "hub2"])
        step = rng.choice(["+1h", "-1h"])
        site.step_clock(target, step)
        held = rng.uniform(2, 5)
        time.sleep(held)
        site.step_clock(target, "+0")
        role = "active" if target == active else "passive" if target == passive else "hub"
        note(f"clock-step: {target} ({role}) {step} for {held:.1f}s")
        if target == active and rng.random() < 0.5:
            # Then the active crashes: the passive must take over within the lease time, not
            # after the hour the stepped clock wrote (sequence 1 of the issue about real hosts).
            time.sleep(CLOCK_CACHE_S + 0.5)
            site.kill9(active)
            started = time.time()
            site.wait_active(30)
            took = time.time() - started
            note(f"clock-step: failover after the step took {took:.1f}s")
            if took > 12:
                raise Failure(f"failover after a clock step on {active} took {took:.1f}s")
            site.start(active)
    elif kind == "sigterm-active":
        site.terminate(active)
        site.start(active)
    elif kind == "move":
        r = site.cli("move", "--cms", "cms1", "--json")
        if r.returncode != 0:
            note(f"move refused: {r.stdout.decode().strip()} {r.stderr.decode().strip()}")
    elif kind == "move-interrupted":
        p = subprocess.Popen([site.bin, "move", "--cms", "cms1", "--config", site.config],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0, 0.3))
            p.kill()
            p.wait()
        else:
            time.sleep(rng.uniform(0, 0.2))
            site.pause(passive)
            time.sleep(rng.uniform(0.5, 1.5))
            site.resume(passive)
            p.wait(120)
    elif kind == "lossy-failover":
        for sg in ("SG1", "SG2"):
            try:
                site.api(passive, f"/api/copy/{sg}/suspend", method="POST")
            except Exception as e:
                note(f"suspend on {passive}: {e}")
        # Long enough for logs the passive lacks, mostly short enough to stay within the dial;
        # beyond it the passive rightly stays dismounted until the old active returns.
        time.sleep(rng.uniform(0.1, 0.3))
        site.kill9(active)
        try:
            site.wait_active(15)
        except Failure:
            pass
        site.start(active)
        # Undo the suspension (part of this fault, not a repair): on whichever node is passive now.
        site.wait_active()
        for node in ("node1", "node2"):
            for sg in ("SG1", "SG2"):
                try:
                    site.api(node, f"/api/copy/{sg}/resume", method="POST")
                except Exception:
                    pass  # the active node has no copy to resume
    else:
        raise ValueError(kind)


def settle(site, limit):
    """Waits until the site is quiet by itself; returns None or why it never was."""
    deadline = time.time() + limit
    why = "not checked"
    while time.time() < deadline:
        roles = site.roles()
        states = [s for s in roles.values() if s]
        actives = [s for s in states if s.get("mounted")]
        if len(states) != 2 or len(actives) != 1:
            why = f"roles: {[(n, s and s['role']) for n, s in roles.items()]}"
        else:
            passive = [s for s in states if not s.get("mounted")][0]
            copies = {g["name"]: g.get("summary_copy_status") for g in passive["storage_groups"]}
            try:
                queues = {h: site.api(h, "/api/queue", timeout=10)["messages"] for h in ("hub1", "hub2")}
                outstanding = []
                for n in ("node1", "node2"):
                    outstanding += site.api(n, "/api/outstanding", timeout=10)
            except OSError as e:
                # A hub busy with a backlog may answer late: asked again until the settle limit.
                why = f"admin API slow or unreachable: {e!r}"
                time.sleep(1)
                continue
            if any(v != "Healthy" for v in copies.values()):
                why = f"copy of {passive['node']}: {copies}"
            elif any(queues.values()):
                why = f"queues: {queues}"
            elif outstanding:
                why = f"outstanding dumpster requests: {len(outstanding)}"
            else:
                return None
        time.sleep(0.5)
    return why


def mailboxes(site, node):
    out = {}
    for m in site.mailboxes:
        listing = site.api(node, f"/api/mailbox?address={urllib.request.quote(m)}", timeout=30)
        out[m] = [x["message_id"] for x in listing["messages"]]
    return out


def overlaps(site):
    """Acknowledgement intervals per (node, epoch) from the node logs, and the violations."""
    spans = {}
    for node in ("node1", "node2"):
        try:
            lines = open(site.log(node), errors="replace")
        except FileNotFoundError:
            continue
        for line in lines:
            m = ACK_LINE.match(line)
            if not m:
                continue
            who, epoch = m.group(2), int(m.group(3))
            logged = datetime.datetime.fromisoformat(decided(m, line).replace("Z", "+00:00")).timestamp()
            ts = site.real_time(node, logged)
            lo, hi = spans.get((who, epoch), (ts, ts))
            spans[(who, epoch)] = (min(lo, ts), max(hi, ts))
    bad = []
    iso = lambda s: datetime.datetime.fromtimestamp(s, datetime.timezone.utc).isoformat()
    for (n1, e1), (_, last1) in spans.items():
        for (n2, e2), (first2, _) in spans.items():
            if n1 != n2 and e1 < e2 and last1 > first2:
                bad.append(f"{n1} acknowledged in epoch {e1} at {iso(last1)}, after {n2} did in "
                           f"epoch {e2} at {iso(first2)} (real times)")
    return spans, bad


def listed(site, result, when):
    """The mailboxes as the active node lists them. A listing refused or cut short (the node lost
    the active role meanwhile: 503) is a problem of the run, and asked again of whichever node is
    active then, so the counts below still come out."""
    for attempt in range(3):
        active = site.wait_active(60)
        try:
            return active, mailboxes(site, active)
        except OSError as e:
            result["problems"].append(f"listing the mailboxes {when} on {active} failed ({e!r}); "
                                      f"roles then: {[(n, s and s['role']) for n, s in site.roles().items()]}")
            print(f"  problem: {result['problems'][-1]}", file=sys.stderr, flush=True)
            time.sleep(5)
    raise Failure(f"the mailboxes could not be listed {when} in 3 attempts")


def check(site, load):
    result = {"missing": [], "duplicated": [], "missing_after_move": [], "problems": []}
    active, boxes = listed(site, result, "after the settle")
    for box, ids in boxes.items():
        seen = set()
        for mid in ids:
            if mid in seen:
                result["duplicated"].append(f"{mid} in {box}")
            seen.add(mid)
    # As sets: a long run lists hundreds of thousands of messages per mailbox, and a membership
    # test in a list made this check take an hour (stop 33, 240 faults).
    held = {box: set(ids) for box, ids in boxes.items()}
    for mid, rcpts in load.acked.items():
        for r in rcpts:
            if mid not in held[r]:
                result["missing"].append(f"{mid} for {r}")
    r = site.cli("move", "--cms", "cms1", "--json")
    if r.returncode != 0:
        result["problems"].append(f"final move failed: {r.stdout.decode()} {r.stderr.decode()}")
    else:
        _, after = listed(site, result, "after the final move")
        for box, ids in boxes.items():
            lost = set(ids) - set(after[box])
            result["missing_after_move"] += [f"{m} in {box}" for m in sorted(lost)]
    spans, bad = overlaps(site)
    if load.acked and not spans:
        result["problems"].append("ack_log: missing (no `acknowledged` lines in the node logs)")
    result["problems"] += bad
    for name in ("node1", "node2", "hub1", "hub2"):
        try:
            if "panicked" in open(site.log(name), errors="replace").read():
                result["problems"].append(f"{name} panicked (see {site.log(name)})")
        except FileNotFoundError:
            pass
    return result


def recovery(site, load):
    """Per kind measured after a heal: how soon after the heals the site served again, the p99 of
    the hubs' 250s given from the cut until then, the failovers (epochs begun) it caused, and for
    isolate-active the longest times to the passive's takeover, to the isolated node's last
    acknowledgement (from the cut) and to it being passive again (from the heal)."""
    out = {}
    for kind in HEALED:
        done = [r for r in site.recoveries if r["kind"] == kind]
        if not done:
            continue
        lat = sorted(l for start, l in load.latencies
                     if any(r["started"] <= start <= r["healed"] + r["to_served"] for r in done))
        most = lambda key: max((r[key] for r in done if r[key] is not None), default=None)
        out[kind] = {"n": len(done), "to_active_max": most("to_active"),
                     "to_served_max": most("to_served"), "acks": len(lat),
                     "ack_p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))]) if lat else None,
                     "failovers": sum(r["failovers"] or 0 for r in done),
                     "with_failover": sum(1 for r in done if r["failovers"]),
                     "remounts": sum(r["remounts"] for r in done),
                     "takeover_max": most("takeover"), "stop_ack_max": most("stop_ack"),
                     "back_passive_max": most("back_passive")}
    return out


def unmet(kind, args):
    """Why `kind` cannot run with these options (None if it can)."""
    need = NEEDS.get(kind, ())
    missing = [flag for want, flag, have in (("netns", "--netns", args.netns),
                                             ("etcd", "--witness etcd", args.witness == "etcd"))
               if want in need and not have]
    return f"needs {' '.join(missing)}" if missing else None


def run(args, kinds, seed, net=None):
    rng = random.Random(seed)
    notes = []

    def note(text):
        # Printed as it comes: a run cut short still shows what its faults did.
        notes.append(text)
        print(f"  note: {text}", file=sys.stderr, flush=True)

    for k in kinds:
        if unmet(k, args):
            note(f"{k} skipped: {unmet(k, args)}")
    kinds = [k for k in kinds if not unmet(k, args)]
    site = Site(args.bin, rng, args.keep, net, args.witness)
    if net:
        net.heal()  # nothing left over from a previous site of this run
    row = {"fault": ",".join(kinds) if len(kinds) > 1 else (kinds or ["-"])[0], "faults": 0,
           "acknowledged": 0, "missing": 0, "duplicated": 0, "ok": False, "dir": site.dir}
    load = None
    try:
        if "disk-full" in kinds:
            why = site.mount_data()
            if why:
                note(f"disk-full skipped: {why}")
        if "clock-step" in kinds or "cut-nodes" in kinds:
            why = site.use_faketime()
            if why:
                note(f"clock-step skipped: {why}")
        if site.etcd:
            if not site.etcd.bin:
                raise Failure("--witness etcd: no etcd server (/usr/bin/etcd; tests/install-package.sh "
                              "etcd-server could not install it)")
            site.etcd.start()
        for n in ("node1", "node2", "hub1", "hub2"):
            site.start(n)
        site.wait_active()
        load = site.load = Load(site, rng, args.clients, seed, args.pause)
        load.start()
        time.sleep(2)
        schedule = [k for k in kinds for _ in range(args.faults_per_kind)]
        rng.shuffle(schedule)
        for i, kind in enumerate(schedule):
            print(f"[seed {seed}] fault {i + 1}/{len(schedule)}: {kind}", flush=True)
            inject(site, kind, rng, note)
            row["faults"] += 1
            site.ensure_up()
            site.wait_active(60)
            time.sleep(rng.uniform(1, 3))
        load.finish()
        site.ensure_up()
        why = settle(site, args.settle)
        result = {"missing": [], "duplicated": [], "missing_after_move": [], "problems": []}
        if why:
            result["problems"].append(f"the site never settled within {args.settle}s: {why}")
        else:
            result = check(site, load)
    except Failure as e:
        result = {"missing": [], "duplicated": [], "missing_after_move": [], "problems": [str(e)]}
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): stop the roles, keep what they wrote.
        if load:
            load.finish()
        site.keep = True
        site.stop_all()
        print(f"  interrupted; logs kept in {site.dir}", file=sys.stderr)
        raise
    finally:
        if load:
            load.finish()
        row["acknowledged"] = len(load.acked) if load else 0
        row["sent"] = load.sent if load else 0
        row["recovery"] = recovery(site, load) if load else {}
    result["problems"] = site.problems + result["problems"]
    row["missing"] = len(result["missing"]) + len(result["missing_after_move"])
    row["duplicated"] = len(result["duplicated"])
    row["problems"] = result["problems"]
    row["notes"] = notes
    row["ok"] = row["missing"] == 0 and row["duplicated"] == 0 and not result["problems"]
    if not row["ok"]:
        site.keep = True
        for k in ("missing", "missing_after_move", "duplicated", "problems"):
            for item in result[k][:20]:
                print(f"  {k}: {item}", file=sys.stderr)
        print(f"  logs kept in {site.dir}", file=sys.stderr)
    site.stop_all()
    return row


def in_namespaces():
    """Builds the site's network (tests/netns), runs this campaign again inside the clients'
    namespace, so that its load, API calls and CLI reach the roles' namespaces and nothing else,
    and removes the network however that ends. Returns the exit status."""
    if os.geteuid() != 0:
        return "--netns needs root (ip netns, nft)"
    netns.on_signals_exit()
    net = netns.Net()
    net.setup()
    child = None
    try:
        env = dict(os.environ, **{NETNS_ENV: net.state()})
        child = net.popen("clients", [sys.executable, os.path.abspath(__file__), *sys.argv[1:]],
                          env=env)
        return child.wait()
    finally:
        # Interrupted: a Ctrl-C reached the inner campaign too; give it time to stop its roles.
        for sig, wait in ((None, 5), (signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            if child is None or child.poll() is not None:
                break
            if sig:
                child.send_signal(sig)
            try:
                child.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        net.teardown()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                  "target", "release", "hubrelay"),
                    help="the binary (build it with --features fault-injection for disk-full)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--faults", help="comma-separated fault kinds (default: all of "
                    "the first table, or with --netns the partitions)")
    ap.add_argument("--netns", action="store_true",
                    help="every role in a network namespace of its own (root); enables partitions")
    ap.add_argument("--witness", choices=["share", "etcd"], default="share",
                    help="the CMS's witness: a file share directory, or a real etcd server the "
                    "campaign starts (with --netns in a namespace of its own)")
    ap.add_argument("--faults-per-kind", type=int, default=3)
    ap.add_argument("--per-kind", action="store_true", help="a fresh site per fault kind, one row each")
    ap.add_argument("--short", action="store_true", help="CI size: every kind once, one site")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--pause", type=float, default=0.05, help="seconds between a client's sessions")
    ap.add_argument("--settle", type=int, default=180, help="seconds the site gets to settle")
    ap.add_argument("--keep", action="store_true", help="keep the site directory")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    default = [k for k in (PARTITIONS if args.netns else KINDS) + WITNESS_KINDS if not unmet(k, args)]
    kinds = [k for k in (args.faults or ",".join(default)).split(",") if k]
    unknown = [k for k in kinds if k not in KINDS + HEALED]
    if unknown:
        ap.error(f"unknown fault kinds {unknown}; known: {', '.join(KINDS + HEALED)}")
    if not args.netns and set(kinds) & set(PARTITIONS):
        ap.error(f"{', '.join(PARTITIONS)} need --netns")
    if args.netns and "disk-full" in kinds:
        # ip netns exec gives each role a mount namespace of its own: it would not see the tmpfs.
        ap.error("disk-full does not combine with --netns")
    if args.netns and NETNS_ENV not in os.environ:
        sys.exit(in_namespaces())
    net = netns.Net.from_state(os.environ[NETNS_ENV]) if args.netns else None
    # The outer process may end this one with SIGTERM; without namespaces, SIGTERM and SIGHUP too
    # stop the roles and etcd (through run's handler and atexit) instead of leaving them behind.
    netns.on_signals_exit()
    if args.short:
        args.faults_per_kind = 1
    runs = [[k] for k in kinds] if args.per_kind else [kinds]
    rows = [run(args, ks, args.seed + i, net) for i, ks in enumerate(runs)]
    if args.json:
        print(json.dumps(rows, indent=1))
    print("| fault | faults | acknowledged | missing | duplicated | verdict |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fault']} | {r['faults']} | {r['acknowledged']} | {r['missing']} | "
              f"{r['duplicated']} | {'ok' if r['ok'] else 'FAIL: ' + '; '.join(r['problems'])[:200]} |")
    tot = {k: sum(r[k] for r in rows) for k in ("faults", "acknowledged", "missing", "duplicated")}
    print(f"| total | {tot['faults']} | {tot['acknowledged']} | {tot['missing']} | {tot['duplicated']} | "
          f"{'ok' if all(r['ok'] for r in rows) else 'FAIL'} |")
    rec = [(k, v) for r in rows for k, v in r["recovery"].items()]
    if rec:
        secs = lambda x: "-" if x is None else f"{x:.1f} s"
        print("\n| fault | healed | failovers (faults with one) | remounts | passive took over "
              "(max) | isolated active's last ack after cut (max) | active node after heal (max) | "
              "delivered through both hubs after heal (max) | old active Healthy passive after heal "
              "(max) | hub 250 p99 from cut to delivered |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for k, v in rec:
            p99 = "-" if v["ack_p99_ms"] is None else f"{v['ack_p99_ms']} ms ({v['acks']} acks)"
            stop = "-" if v["stop_ack_max"] is None else f"{v['stop_ack_max']:.2f} s"
            print(f"| {k} | {v['n']} | {v['failovers']} ({v['with_failover']}) | {v['remounts']} | "
                  f"{secs(v['takeover_max'])} | {stop} | {secs(v['to_active_max'])} | "
                  f"{secs(v['to_served_max'])} | {secs(v['back_passive_max'])} | {p99} |")
    print(f"{sum(r['ok'] for r in rows)} passed, {sum(not r['ok'] for r in rows)} failed")
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
