#!/usr/bin/env python3
"""A site network made of Linux network namespaces, for partition tests (stdlib only, needs root).

One "switch" namespace holds a bridge; every role (hub1, hub2, node1, node2, clients, and witness
for an etcd witness server) has a namespace
of its own, joined to the bridge by a veth pair, with an address in a private /24 and loopback up.
Nothing is created in, or routed to, the namespace the test runs in: the veth pairs are made inside
the switch namespace, and no namespace has a default route, so no packet can leave the site.

Faults are silent, as a real partition is: nftables `drop` rules in the roles' own namespaces (a
peer sees timeouts, never a refusal), and a link taken down at the switch (a pulled cable). A lossy
link drops a share of packets at random (nftables `numgen`); a slow one runs new connections through
a delaying proxy (delay.py), since this kernel has no netem.

    net = Net(); net.setup()
    try:
        p = net.popen("node1", ["hubrelay", "node", ...])   # the pid is hubrelay's own
        net.cut("node1", "node2"); ...; net.heal()
    finally:
        net.teardown()

`python3 tests/netns/netns.py --selftest` shows that a cut drops and a heal restores.
"""

import atexit
import json
import os
import signal
import subprocess
import sys
import time

# New roles go at the end: a role's address is its index in this list.
ROLES = ("hub1", "hub2", "node1", "node2", "clients", "witness")
TABLE = "hrfault"
# The redirect of delayed links to delay.py, and the mark its own connections carry past it.
NAT = "hrdelay"
MARK = 0x4852
DELAY_PORT = 39999
DELAY_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "delay.py")


def sh(*argv, input=None, check=True):
    """Runs a command to completion (bounded: none of the commands here can block for long)."""
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")
    return r


class Net:
    def __init__(self, roles=ROLES, tag=None, subnet=None):
        pid = os.getpid()
        # Names carry the pid so concurrent runs never share a namespace. The subnet is private to
        # this run's bridge anyway; deriving it from the pid only makes logs of two runs distinct.
        self.tag = tag or f"hr{pid}"
        self.subnet = subnet or f"10.231.{pid % 250 + 1}"
        self.roles = list(roles)
        self.switch = f"{self.tag}-sw"
        self.ip = {r: f"{self.subnet}.{10 + i}" for i, r in enumerate(self.roles)}
        self.down = set()
        self.proxies = []  # delay.py processes, stopped by heal()
        self.made = []  # namespaces created, for teardown

    # State for a process that re-executes inside a namespace and drives the same network.
    def state(self):
        return json.dumps({"tag": self.tag, "subnet": self.subnet, "roles": self.roles})

    @classmethod
    def from_state(cls, text):
        s = json.loads(text)
        return cls(s["roles"], s["tag"], s["subnet"])

    def ns(self, role):
        return f"{self.tag}-{role}"

    def setup(self):
        atexit.register(self.teardown)
        try:
            self._add_ns(self.switch)
            sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", "br0", "up")
            for role in self.roles:
                ns = self.ns(role)
                self._add_ns(ns)
                # Both ends are created in the switch namespace and one moved: nothing appears in
                # the caller's namespace, not even for a moment.
                sh("ip", "-n", self.switch, "link", "add", role, "type", "veth",
                   "peer", "name", "eth0", "netns", ns)
                sh("ip", "-n", self.switch, "link", "set", role, "master", "br0", "up")
                sh("ip", "-n", ns, "addr", "add", f"{self.ip[role]}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                # An empty table whose chains the faults fill and heal() flushes.
                sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=(
                    f"table inet {TABLE} {{\n"
                    "  chain input { type filter hook input priority 0; policy accept; }\n"
                    "  chain output { type filter hook output priority 0; policy accept; }\n"
                    "}\n"))
        except BaseException:
            self.teardown()
            raise

    def _add_ns(self, ns):
        sh("ip", "netns", "add", ns)
        self.made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # No IPv6 (no router solicitations or DAD chatter on the bridge; the site is IPv4).
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")

    def wrap(self, role, argv):
        """`argv` run inside `role`'s namespace: `ip netns exec` execs it, so the pid is its own."""
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def popen(self, role, argv, **kw):
        return subprocess.Popen(self.wrap(role, argv), **kw)

    def run(self, role, argv, **kw):
        return subprocess.run(self.wrap(role, argv), **kw)

    def _nft(self, role, *rules):
        sh("ip", "netns", "exec", self.ns(role), "nft", "-f", "-",
           input="".join(f"add rule inet {TABLE} {r} drop\n" for r in rules))

    def cut(self, a, b):
        """Every packet between `a` and `b` dropped, both ways, in both namespaces."""
        self.drop_one_way(a, b)
        self.drop_one_way(b, a)

    def isolate(self, role, others):
        """Every packet between `role` and each of `others` dropped, both ways. `role`'s own rules go
        in as one nftables transaction (so the isolation begins at one instant), the others' mirror
        rules after; returns the time (time.time()) just after `role`'s rules were in place."""
        rules = []
        for o in others:
            rules += [f"output ip daddr {self.ip[o]}", f"input ip saddr {self.ip[o]}"]
        self._nft(role, *rules)
        at = time.time()
        for o in others:
            self._nft(o, f"output ip daddr {self.ip[role]}", f"input ip saddr {self.ip[role]}")
        return at

    def drop_one_way(self, src, dst):
        """Packets from `src` to `dst` dropped (replies the other way still pass)."""
        self._nft(src, f"output ip daddr {self.ip[dst]}")
        self._nft(dst, f"input ip saddr {self.ip[src]}")

    def lossy(self, a, b, percent):
        """About `percent` % of the packets between `a` and `b` dropped at random, each way
        (nftables `numgen random`: real loss, which TCP answers with retransmissions)."""
        share = "" if percent >= 100 else f" numgen random mod 100 < {percent}"
        self._nft(a, f"output ip daddr {self.ip[b]}{share}")
        self._nft(b, f"output ip daddr {self.ip[a]}{share}")

    def delay(self, a, b, ms):
        """Every new TCP connection between `a` and `b` (either way) delayed by `ms` each way,
        through delay.py in the connecting role's namespace. Connections open before stall (their
        packets are dropped), as on a link that became slow, so the roles reconnect through it."""
        for src, dst in ((a, b), (b, a)):
            proxy = self.popen(src, [sys.executable, DELAY_PY, "--port", str(DELAY_PORT),
                                     "--delay-ms", str(ms), "--mark", hex(MARK)],
                               stdout=subprocess.PIPE, text=True)
            self.proxies.append(proxy)
            if proxy.stdout.readline().strip() != "up":
                raise RuntimeError(f"delay.py did not start in {src}'s namespace")
            sh("ip", "netns", "exec", self.ns(src), "nft", "-f", "-", input=(
                f"add table ip {NAT}\n"
                f"add chain ip {NAT} output {{ type nat hook output priority -100; policy accept; }}\n"
                f"add rule ip {NAT} output meta mark != {MARK} ip daddr {self.ip[dst]} tcp dport 1-65535 "
                f"dnat to 127.0.0.1:{DELAY_PORT}\n"
                # Connections opened before, not through the proxy: stalled (only the direction that
                # opened them, so the other role's connections through its own proxy are answered).
                f"add rule inet {TABLE} output ip daddr {self.ip[dst]} meta mark != {MARK} "
                "ct direction original drop\n"))

    def link_down(self, role):
        """`role`'s cable pulled: its switch port goes down (its own interface loses carrier)."""
        sh("ip", "-n", self.switch, "link", "set", role, "down")
        self.down.add(role)

    def link_up(self, role):
        """The cable back; returns once the role's interface is up again (operstate UP), so that a
        test timing what follows does not count the kernel's carrier handling, nor lose a first
        packet to it (a lost SYN costs a 1 s retransmission)."""
        sh("ip", "-n", self.switch, "link", "set", role, "up")
        self.down.discard(role)
        for _ in range(80):  # bounded: it takes milliseconds
            if "state UP" in sh("ip", "-n", self.ns(role), "link", "show", "eth0").stdout:
                break
            time.sleep(0.025)

    def heal(self):
        for role in self.roles:
            sh("ip", "netns", "exec", self.ns(role), "nft", "-f", "-",
               input=f"flush chain inet {TABLE} input\nflush chain inet {TABLE} output\n")
            sh("ip", "netns", "exec", self.ns(role), "nft", "delete", "table", "ip", NAT, check=False)
        for proxy in self.proxies:
            proxy.kill()
            proxy.wait()
        self.proxies = []
        for role in list(self.down):
            self.link_up(role)

    def teardown(self):
        """Kills whatever still runs in this run's namespaces (only processes it started can be
        there), then deletes them; the veths and the bridge go with them. Idempotent."""
        for ns in reversed(self.made):
            for _ in range(20):  # bounded: a killed process leaves within milliseconds
                pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
                pids = [int(p) for p in pids if p.isdigit() and int(p) != os.getpid()]
                if not pids:
                    break
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
            sh("ip", "netns", "del", ns, check=False)
        self.made = []


def on_signals_exit():
    """SIGINT, SIGTERM and SIGHUP end the program through its `finally`s and atexit (SIGINT even
    where a shell started it in the background with SIGINT ignored)."""
    def stop(sig, _frame):
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def selftest():
    """A listener in node1, connects from node2: open, cut (a timeout, not a refusal), one way
    (no handshake completes), healed, link down, link up; then everything is gone."""
    on_signals_exit()
    net = Net()
    net.setup()
    ok = True
    try:
        listener = net.popen("node1", [sys.executable, "-c", (
            "import socket,time\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('{net.ip['node1']}', 7000)); s.listen(64); print('up', flush=True)\n"
            "s.settimeout(1)\n"
            "end=time.time()+60\n"
            "while time.time()<end:\n"
            "    try: s.accept()[0].close()\n"
            "    except OSError: pass\n")], stdout=subprocess.PIPE, text=True)
        listener.stdout.readline()

        def connect():
            r = net.run("node2", [sys.executable, "-c", (
                "import socket\n"
                "try:\n"
                f"    socket.create_connection(('{net.ip['node1']}', 7000), timeout=2).close(); print('connected')\n"
                "except socket.timeout: print('timeout')\n"
                "except OSError as e: print(type(e).__name__)\n")],
                capture_output=True, text=True, timeout=20)
            return r.stdout.strip()

        def slow():
            """Connect and read to the listener's close: 'slow' if that took a delayed round trip."""
            r = net.run("node2", [sys.executable, "-c", (
                "import socket,time\n"
                "t=time.monotonic()\n"
                "try:\n"
                f"    c=socket.create_connection(('{net.ip['node1']}', 7000), timeout=5); c.settimeout(5); c.recv(1)\n"
                "    print('slow' if time.monotonic()-t >= 0.6 else 'fast')\n"
                "except OSError as e: print(type(e).__name__)\n")],
                capture_output=True, text=True, timeout=20)
            return r.stdout.strip()

        steps = [
            ("open", lambda: None, "connected"),
            ("cut", lambda: net.cut("node1", "node2"), "timeout"),
            ("healed", net.heal, "connected"),
            ("one way node2->node1", lambda: net.drop_one_way("node2", "node1"), "timeout"),
            ("one way node1->node2", lambda: (net.heal(), net.drop_one_way("node1", "node2")), "timeout"),
            ("healed", net.heal, "connected"),
            ("node1 isolated", lambda: net.isolate("node1", ["node2", "witness"]), "timeout"),
            ("healed", net.heal, "connected"),
            ("node1 link down", lambda: net.link_down("node1"), "timeout"),
            ("node1 link up", lambda: net.link_up("node1"), "connected"),
            ("all packets lost", lambda: net.lossy("node1", "node2", 100), "timeout"),
            ("healed", net.heal, "connected"),
            ("not delayed", lambda: None, "fast"),
            ("delayed 300 ms", lambda: net.delay("node1", "node2", 300), "slow"),
            ("healed", net.heal, "fast"),
        ]
        for name, act, want in steps:
            act()
            got = slow() if want in ("fast", "slow") else connect()
            ok &= got == want
            print(f"{name:24} {got:10} {'ok' if got == want else 'FAIL: want ' + want}")
        listener.kill()
        listener.wait()
    finally:
        names = [net.ns(r) for r in net.roles] + [net.switch]
        net.teardown()
    left = [n for n in sh("ip", "netns", "list").stdout.split() if n in names]
    print(f"{'teardown':24} {'left ' + str(left) if left else 'clean':10} {'FAIL' if left else 'ok'}")
    return ok and not left


if __name__ == "__main__":
    if sys.argv[1:] != ["--selftest"]:
        sys.exit(__doc__)
    sys.exit(0 if selftest() else 1)
