#!/usr/bin/env python3
"""Soak: months of a site compressed into minutes, to show what grows with history and what does not.

The four roles (hub1, hub2, node1, node2) run as separate processes of the given binary with small
log generations (`log_file_size`, 256 KiB by default) and dumpster bounds. Client threads (Python's
smtplib) send a bounded number of messages through both hubs. Part-way the site is moved (25 %,
75 %), node2's copy is reseeded (`copy update`, 50 %) and the passive node is killed -9 and started
again (60 %). Every few seconds the disk use of every role's data directory (a node's store and
logs apart) and the RSS of every process are sampled into a CSV; at the end every acknowledged
message is checked to be in its mailbox exactly once, and a plot of the CSV is drawn (SVG, with
matplotlib when it is installed; `bench/soak/run.sh` installs it in a virtualenv).

    python3 bench/soak/soak.py --bin target/release/hubrelay --messages 200000 --out bench/soak/out
"""

import argparse
import csv
import json
import os
import random
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TOKEN = "soak-token"
MAILBOXES = ["alice@example.test", "bob@example.test", "carol@example.test"]
ROLES = ("hub1", "hub2", "node1", "node2")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    def __init__(self, binary, log_file_size, dumpster):
        self.bin = os.path.abspath(binary)
        self.dir = tempfile.mkdtemp(prefix="hubrelay-soak-")
        self.data = os.path.join(self.dir, "data")
        self.addr = {n: (free_port(), free_port()) for n in ROLES}
        self.config = os.path.join(self.dir, "site.toml")
        hubs = "".join(
            f'\n[[hub]]\nname = "{h}"\nsmtp = "127.0.0.1:{self.addr[h][0]}"\nadmin = "127.0.0.1:{self.addr[h][1]}"\n'
            for h in ("hub1", "hub2"))
        nodes = "".join(
            f'\n[[cms.node]]\nname = "{n}"\nsmtp = "127.0.0.1:{self.addr[n][0]}"\nadmin = "127.0.0.1:{self.addr[n][1]}"\n'
            for n in ("node1", "node2"))
        with open(self.config, "w") as f:
            f.write(
                f'[site]\nname = "soak"\naccepted_domains = ["example.test"]\nadmin_token = "{TOKEN}"\n'
                f'max_dumpster_size_per_storage_group = "{dumpster}"\nmax_message_size = "1MB"\n'
                'retry_min = "200ms"\nretry_max = "1s"\nmin_free_space = "64MiB"\n'
                f'{hubs}\n[[cms]]\nname = "cms1"\nwitness = "witness/cms1"\n'
                f'log_file_size = "{log_file_size}"\n'
                f'{nodes}\n[[cms.storage_group]]\nname = "SG1"\n'
                'mailboxes = ["alice@example.test", "bob@example.test"]\n\n'
                '[[cms.storage_group]]\nname = "SG2"\nmailboxes = ["carol@example.test"]\n')
        self.procs = {}

    def start(self, name):
        role = "hub" if name.startswith("hub") else "node"
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")
        proc = subprocess.Popen([self.bin, role, "--name", name, "--config", self.config,
                                 "--data", self.data], stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True)
        log.close()
        ready = threading.Event()

        def read():
            for line in proc.stdout:
                if line.strip() == b"ready":
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            proc.kill()
            sys.exit(f"{name} did not become ready; see {self.dir}/{name}.log")
        self.procs[name] = proc

    def kill9(self, name):
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def stop(self, keep):
        for p in self.procs.values():
            p.kill()
            p.wait()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def api(self, name, path, timeout=30):
        req = urllib.request.Request(f"http://127.0.0.1:{self.addr[name][1]}{path}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)

    def cli(self, *args, timeout=600):
        return subprocess.run([self.bin, *args, "--config", self.config], capture_output=True,
                              timeout=timeout)

    def status(self):
        r = self.cli("status", "--cms", "cms1", "--json", timeout=30)
        return json.loads(r.stdout) if r.returncode in (0, 1) and r.stdout else {}

    def wait_healthy(self, limit=120):
        deadline = time.time() + limit
        while time.time() < deadline:
            s = self.status()
            sgs = s.get("storage_groups", [])
            if s.get("active_node") and sgs and all(g.get("summary_copy_status") == "Healthy" for g in sgs):
                return s["active_node"]
            time.sleep(0.5)
        exits = {n: p.poll() for n, p in self.procs.items()}
        sys.exit(f"the site was not healthy within {limit}s (exit codes: {exits}): {self.status()}")


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def rss(proc):
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


COLUMNS = (["t_s", "acked", "payload_bytes"]
           + [f"{n}_{part}_bytes" for n in ("node1", "node2") for part in ("store", "logs")]
           + [f"{h}_bytes" for h in ("hub1", "hub2")]
           + [f"{n}_rss_bytes" for n in ROLES])


class Load:
    def __init__(self, site, total, size, clients):
        self.site, self.total, self.size, self.clients = site, total, size, clients
        self.next = 0
        self.acked = {m: set() for m in MAILBOXES}
        self.count = 0
        self.payload = 0
        self.lock = threading.Lock()
        self.threads = []

    def take(self):
        with self.lock:
            if self.next >= self.total:
                return None
            self.next += 1
            return self.next - 1

    def run(self, idx):
        hub = ("hub1", "hub2")[idx % 2]
        body = ("x" * 76 + "\r\n") * (self.size // 78)
        s = None
        n = self.take()
        while n is not None:
            to = MAILBOXES[n % 3]
            mid = f"<soak-{n}@client.test>"
            msg = (f"From: sender@client.test\r\nTo: {to}\r\nSubject: soak {n}\r\n"
                   f"Message-ID: {mid}\r\n\r\n{body}")
            try:
                if s is None:
                    s = smtplib.SMTP("127.0.0.1", self.site.addr[hub][0], timeout=60)
                s.sendmail("sender@client.test", [to], msg.encode())
                with self.lock:
                    self.acked[to].add(mid)
                    self.count += 1
                    self.payload += len(msg)
                n = self.take()
            except (OSError, smtplib.SMTPException):
                # Refused or cut (a move, a restart): the same message again on a new session.
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
                s = None
                time.sleep(0.2)
        if s is not None:
            try:
                s.quit()
            except (OSError, smtplib.SMTPException):
                pass

    def start(self):
        for i in range(self.clients):
            t = threading.Thread(target=self.run, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def done(self):
        return all(not t.is_alive() for t in self.threads)


def sample(site, load, started):
    row = {"t_s": round(time.time() - started, 1), "acked": load.count, "payload_bytes": load.payload}
    for n in ("node1", "node2"):
        row[f"{n}_store_bytes"] = du(os.path.join(site.data, n, "store"))
        row[f"{n}_logs_bytes"] = du(os.path.join(site.data, n, "logs"))
    for h in ("hub1", "hub2"):
        row[f"{h}_bytes"] = du(os.path.join(site.data, h))
    for n in ROLES:
        p = site.procs.get(n)
        row[f"{n}_rss_bytes"] = rss(p) if p else 0
    return row


def plot(rows, events, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (bench/soak/run.sh installs it)", file=sys.stderr)
        return False
    x = [r["acked"] / 1000 for r in rows]
    mb = lambda k: [r[k] / 2**20 for r in rows]
    fig, (disk, mem) = plt.subplots(2, 1, figsize=(10, 9), sharex=True)
    disk.plot(x, mb("payload_bytes"), "k:", label="payload acknowledged")
    for k, style in (("node1_store_bytes", "-"), ("node2_store_bytes", "--"),
                     ("node1_logs_bytes", "-"), ("node2_logs_bytes", "--"),
                     ("hub1_bytes", "-"), ("hub2_bytes", "--")):
        disk.plot(x, mb(k), style, label=k.replace("_bytes", ""))
    disk.set_ylabel("disk (MiB)")
    disk.set_yscale("symlog", linthresh=64)
    disk.legend(fontsize=8, ncol=2)
    disk.grid(True, alpha=0.3)
    for n in ROLES:
        mem.plot(x, mb(f"{n}_rss_bytes"), label=f"{n} RSS")
    mem.set_ylabel("RSS (MiB)")
    mem.set_xlabel("messages acknowledged (thousands)")
    mem.legend(fontsize=8)
    mem.grid(True, alpha=0.3)
    for acked, what in events:
        for ax in (disk, mem):
            ax.axvline(acked / 1000, color="grey", alpha=0.4)
        disk.annotate(what, (acked / 1000, disk.get_ylim()[1]), rotation=90, fontsize=7,
                      va="top", ha="right")
    fig.suptitle("hubrelay soak: disk and memory of every role over the run")
    fig.tight_layout()
    fig.savefig(path)
    fig.savefig(os.path.splitext(path)[0] + ".png", dpi=80)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/hubrelay")
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=4096, help="body bytes per message")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--log-file-size", default="256KiB")
    ap.add_argument("--dumpster", default="20MB", help="max_dumpster_size_per_storage_group")
    ap.add_argument("--limit", type=int, default=3600, help="seconds the load may take at most")
    ap.add_argument("--events", default="0.25:move,0.5:reseed,0.6:restart,0.75:move",
                    help="what happens part-way: fraction of the messages acknowledged, then move, "
                         "reseed (copy update of SG1) or restart (kill -9 and start of the passive); "
                         "1.0 runs once the load is done")
    ap.add_argument("--out", default="bench/soak/out")
    ap.add_argument("--keep", action="store_true", help="keep the site directory")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    site = Site(args.bin, args.log_file_size, args.dumpster)
    rows, events, ok = [], [], False
    try:
        for n in ("node1", "node2", "hub1", "hub2"):
            site.start(n)
        site.wait_healthy()
        load = Load(site, args.messages, args.size, args.clients)
        started = time.time()
        load.start()
        plan = sorted((float(f), what) for f, what in
                      (e.split(":", 1) for e in args.events.split(",") if e))
        next_sample = 0.0

        def happen(what):
            at = load.count
            t0 = time.time()
            if what == "move":
                r = site.cli("move", "--cms", "cms1", "--json")
                detail = f"move: rc {r.returncode}"
            elif what == "reseed":
                r = site.cli("copy", "update", "--cms", "cms1", "--storage-group", "SG1", "--json")
                seeded = (json.loads(r.stdout) if r.returncode == 0 else {}).get("seeded") or {}
                detail = (f"reseed of SG1: rc {r.returncode}, {seeded.get('records')} records, "
                          f"{seeded.get('bytes')} bytes, snapshot {seeded.get('elapsed_ms')} ms")
            elif what == "restart":
                passive = site.status().get("passive_node") or "node2"
                site.kill9(passive)
                site.start(passive)
                detail = f"kill -9 and start of {passive}"
            else:
                sys.exit(f"unknown event {what!r}")
            took = time.time() - t0
            print(f"[{load.count}] {detail} ({took:.1f} s in all)", flush=True)
            events.append((at, what))

        while not load.done():
            if time.time() - started > args.limit:
                sys.exit(f"the load did not finish within {args.limit}s")
            if plan and plan[0][0] < 1.0 and load.count >= plan[0][0] * args.messages:
                happen(plan.pop(0)[1])
            if time.time() - started >= next_sample:
                rows.append(sample(site, load, started))
                next_sample += args.sample
                print(f"[{load.count}/{args.messages}] " + ", ".join(
                    f"{k[:-6]} {rows[-1][k] / 2**20:.0f}M" for k in COLUMNS[3:9]), flush=True)
            time.sleep(0.2)
        site.wait_healthy(300)
        for _, what in plan:
            happen(what)
            site.wait_healthy(300)
        rows.append(sample(site, load, started))
        active = site.status()["active_node"]
        missing = dup = 0
        for m in MAILBOXES:
            listing = site.api(active, f"/api/mailbox?address={urllib.request.quote(m)}", timeout=300)
            ids = [x["message_id"] for x in listing["messages"]]
            dup += len(ids) - len(set(ids))
            missing += len(load.acked[m] - set(ids))
        ok = missing == 0 and dup == 0
        print(f"acknowledged {load.count}, missing {missing}, duplicated {dup}: {'ok' if ok else 'FAILED'}")
    finally:
        site.stop(args.keep or not ok)
        if not ok:
            print(f"site kept in {site.dir}", file=sys.stderr)
    with open(os.path.join(args.out, "soak.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "events.json"), "w") as f:
        json.dump(events, f)
    if plot(rows, events, os.path.join(args.out, "soak.svg")):
        print(f"plot: {os.path.join(args.out, 'soak.svg')} (and .png)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
