#!/usr/bin/env python3
"""A TCP proxy for walship's fault drills: forwards 127.0.0.1:LISTEN to 127.0.0.1:TARGET and obeys a control
file holding one word: pass, cut (close every connection at once, then pass), stall (keep connections open
but forward nothing, no FIN), or delay:MS (hold each chunk MS milliseconds)."""
import asyncio
import sys

listen_port, target_port, control = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
mode = "pass"
connections = set()


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            while mode == "stall":
                await asyncio.sleep(0.05)
            if mode.startswith("delay:"):
                await asyncio.sleep(int(mode[6:]) / 1000)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def handle(client_reader, client_writer):
    try:
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_writer.close()
        return
    pair = (client_writer, target_writer)
    connections.add(pair)
    try:
        await asyncio.gather(pipe(client_reader, target_writer), pipe(target_reader, client_writer))
    finally:
        connections.discard(pair)


async def watch():
    global mode
    while True:
        try:
            with open(control) as f:
                wanted = f.read().strip() or "pass"
        except OSError:
            wanted = "pass"
        if wanted == "cut":
            for pair in list(connections):
                for writer in pair:
                    writer.transport.abort()
            connections.clear()
            with open(control, "w") as f:
                f.write("pass")
            wanted = "pass"
        mode = wanted
        await asyncio.sleep(0.05)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await asyncio.gather(server.serve_forever(), watch())


asyncio.run(main())
