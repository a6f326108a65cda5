#!/usr/bin/env python3
"""A WAN emulator for the benchmark (tc netem is not available in containers): forwards 127.0.0.1:LISTEN to
127.0.0.1:TARGET through a delay line with a bandwidth cap in each direction, and counts the bytes.

    wan-proxy.py LISTEN TARGET --delay-ms 30 --mbit 100 --stats FILE

Each direction is modelled as a link: a chunk occupies the link for len/rate seconds after the previous one,
then arrives --delay-ms later (one-way delay, so a round trip adds twice that). At most --queue-kib per
direction is in flight; beyond that the proxy stops reading, so TCP back-pressure reaches the sender as it
would on a real link. FILE gets {"up": bytes client→target, "down": bytes target→client, "connections": n},
rewritten every 0.2 s and at exit."""
import argparse
import asyncio
import collections
import json
import os
import signal
import time

parser = argparse.ArgumentParser()
parser.add_argument("listen", type=int)
parser.add_argument("target", type=int)
parser.add_argument("--delay-ms", type=float, default=30.0)
parser.add_argument("--mbit", type=float, default=100.0, help="bandwidth per direction, megabits per second (0: no cap)")
parser.add_argument("--queue-kib", type=int, default=4096)
parser.add_argument("--stats")
args = parser.parse_args()

counted = {"up": 0, "down": 0, "connections": 0}
bytes_per_second = args.mbit * 1e6 / 8 if args.mbit > 0 else 0.0
delay = args.delay_ms / 1000
queue_limit = args.queue_kib * 1024


async def direction(reader, writer, key):
    """One direction of one connection: a reader feeding the delay line and a writer draining it in order."""
    line = collections.deque()  # (deliver_at, data)
    queued = 0
    link_free_at = 0.0
    changed = asyncio.Event()
    eof = False

    async def fill():
        nonlocal queued, link_free_at, eof
        try:
            while True:
                while queued >= queue_limit:
                    changed.clear()
                    await changed.wait()
                data = await reader.read(65536)
                if not data:
                    break
                now = time.monotonic()
                link_free_at = max(link_free_at, now) + (len(data) / bytes_per_second if bytes_per_second else 0)
                line.append((link_free_at + delay, data))
                queued += len(data)
                changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            eof = True
            changed.set()

    async def drain():
        nonlocal queued
        try:
            while True:
                if not line:
                    if eof:
                        break
                    changed.clear()
                    await changed.wait()
                    continue
                deliver_at, data = line[0]
                wait = deliver_at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                line.popleft()
                queued -= len(data)
                changed.set()
                writer.write(data)
                await writer.drain()
                counted[key] += len(data)
            if writer.can_write_eof():
                writer.write_eof()  # pass a half-close on; the connection closes when both directions end
        except (ConnectionError, OSError):
            writer.transport.abort()

    await asyncio.gather(fill(), drain())


async def handle(client_reader, client_writer):
    try:
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", args.target)
    except OSError:
        client_writer.close()
        return
    counted["connections"] += 1
    await asyncio.gather(direction(client_reader, target_writer, "up"),
                         direction(target_reader, client_writer, "down"),
                         return_exceptions=True)
    client_writer.close()
    target_writer.close()


def write_stats():
    if not args.stats:
        return
    temporary = args.stats + ".tmp"
    with open(temporary, "w") as f:
        json.dump(counted, f)
    os.replace(temporary, args.stats)


async def report():
    while True:
        write_stats()
        await asyncio.sleep(0.2)


async def main():
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await asyncio.start_server(handle, "127.0.0.1", args.listen)
    reporter = asyncio.ensure_future(report())
    await stop
    reporter.cancel()
    server.close()
    write_stats()


asyncio.run(main())
