#!/usr/bin/env python3
"""A delaying TCP proxy for a role's namespace: the harness's stand-in for netem (this kernel has
none). Stdlib only; run by netns.Net.delay inside the namespace whose outgoing connections it slows.

nftables in that namespace redirects new connections to the other role to this proxy (DNAT to
127.0.0.1:PORT). The proxy reads where each connection was going (SO_ORIGINAL_DST), connects there
itself with a firewall mark the redirect rule skips, and forwards the bytes both ways, each chunk no
sooner than `--delay-ms` after it arrived, in order. So every new connection between the two roles
sees `2 × delay` more round-trip time; the harness stalls the connections that were already open
(they reconnect through here).

    python3 delay.py --port 7999 --delay-ms 200 --mark 0x4852
"""

import argparse
import asyncio
import socket
import struct
import sys
import time

SO_ORIGINAL_DST = 80
READ = 64 * 1024


def original_destination(sock):
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


async def pump(reader, writer, delay):
    """Forwards `reader` to `writer`, each chunk held until `delay` after it arrived."""
    queue = asyncio.Queue()

    async def receive():
        while True:
            data = await reader.read(READ)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                return

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(receive(), send())
    except (ConnectionError, OSError):
        pass


async def serve(client_reader, client_writer, delay, mark):
    sock = client_writer.get_extra_info("socket")
    try:
        host, port = original_destination(sock)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        upstream.setblocking(False)
        # The SYN is delayed too: a slow link slows the handshake.
        await asyncio.sleep(delay)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(upstream, (host, port)), 10)
        server_reader, server_writer = await asyncio.open_connection(sock=upstream)
    except (OSError, asyncio.TimeoutError):
        client_writer.close()
        return
    await asyncio.gather(pump(client_reader, server_writer, delay),
                         pump(server_reader, client_writer, delay))
    for w in (client_writer, server_writer):
        w.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--mark", type=lambda v: int(v, 0), required=True)
    args = ap.parse_args()
    delay = args.delay_ms / 1000
    server = await asyncio.start_server(
        lambda r, w: serve(r, w, delay, args.mark), "127.0.0.1", args.port, reuse_address=True)
    print("up", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
