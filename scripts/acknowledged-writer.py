#!/usr/bin/env python3
"""The fault drills' writer: SESSIONS long-lived psql sessions insert unique ids into TABLE (id int PRIMARY KEY),
one transaction each, as fast as the primary acknowledges them, and append "ID LSN" to FILE only after the COMMIT
returned. Session k inserts the ids FIRST + k, FIRST + k + SESSIONS, ...; an id whose outcome is unknown (the
session died in it) is never used again, so ids stay unique across reconnects. The LSN is the primary's insert
position read in the transaction, just before its commit record.

usage: acknowledged-writer.py PORT TABLE FILE [--sessions N] [--first ID]
Without --first, it starts past every id FILE already holds and every id in flight when its writer stopped.
"""
import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("table")
parser.add_argument("file")
parser.add_argument("--sessions", type=int, default=8)
parser.add_argument("--first", type=int)
arguments = parser.parse_args()

# One write(2) per line on an O_APPEND descriptor: lines of concurrent sessions never interleave.
acknowledged = os.open(arguments.file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def first_unused_id():
    try:
        with open(arguments.file) as recorded:
            ids = [int(line.split()[0]) for line in recorded if len(line.split()) == 2]
    except FileNotFoundError:
        ids = []
    # Each session of a writer that stopped had at most one id in flight, at most SESSIONS past the largest recorded.
    return max(ids) + arguments.sessions + 1 if ids else 1


def die_with_parent():
    # A session blocked in a synchronous COMMIT never reads its closed stdin: it must not outlive the writer.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def psql():
    return subprocess.Popen(
        ["psql", "-h", "127.0.0.1", "-p", str(arguments.port), "-U", "postgres", "-d", "postgres",
         "-qAtX", "-v", "ON_ERROR_STOP=1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        preexec_fn=die_with_parent)


def session(k, first):
    next_id = first + k
    reconnects = 0
    while True:
        process = psql()
        try:
            while True:
                id = next_id
                next_id += arguments.sessions
                process.stdin.write(f"BEGIN;\nINSERT INTO {arguments.table} (id) VALUES ({id}) "
                                    f"RETURNING pg_current_wal_insert_lsn();\nCOMMIT;\n\\echo acknowledged {id}\n")
                process.stdin.flush()
                lsn = process.stdout.readline().strip()
                # psql echoes the marker only once COMMIT returned without an error (ON_ERROR_STOP ends it otherwise).
                if process.stdout.readline().strip() != f"acknowledged {id}" or "/" not in lsn:
                    break
                os.write(acknowledged, f"{id} {lsn}\n".encode())
        except (BrokenPipeError, OSError):
            pass
        process.kill()
        process.wait()
        reconnects += 1
        if reconnects % 50 == 1:
            print(f"session {k}: psql ended ({reconnects} times so far); reconnecting", flush=True)
        time.sleep(0.1)


first = arguments.first if arguments.first is not None else first_unused_id()
print(f"{arguments.sessions} sessions from id {first}", flush=True)
threads = [threading.Thread(target=session, args=(k, first), daemon=True) for k in range(arguments.sessions)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
