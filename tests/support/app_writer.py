#!/usr/bin/env python3
"""An application for the fault tests: a separate process writing a node's database through Python's sqlite3
driver, one small transaction at a time, and saying what became of each on stdout (flushed per line):

    ready                    once SIGTERM is handled (the first line)
    try <id>                 before BEGIN
    ok <id>                  after COMMIT returned
    err <id> <Class>: <msg>  an SQLite error (the transaction is rolled back; the writer goes on)

Each transaction inserts one `ledger` row (id unique per writer incarnation) and every fifth one also upserts a
row of `hot` (eight rows that every writer of every node overwrites: last writer wins must converge).

Usage: app_writer.py DB NODE WRITER RATE_PER_S BUSY_TIMEOUT_MS
SIGTERM ends it after the transaction in progress (exit 0); anything but an SQLite error ends it with a
traceback (exit 1), which the test's oracle reports.
"""
import os
import signal
import sqlite3
import sys
import time

db, node, writer, rate, busy_ms = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
stop = False


def on_term(_signum, _frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
conn = sqlite3.connect(db, timeout=busy_ms / 1000.0, isolation_level=None)
period = 1.0 / rate if rate > 0 else 0.0
# A restarted writer must not reuse ids: the pid tells its incarnations apart.
prefix = f"n{node}-{writer}-{os.getpid()}"
n = 0
next_at = time.monotonic()
while not stop:
    n += 1
    tid = f"{prefix}-{n}"
    print("try", tid, flush=True)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO ledger (id, node, n, payload) VALUES (?, ?, ?, ?)",
            (tid, node, n, "x" * (n % 64)),
        )
        if n % 5 == 0:
            conn.execute(
                "INSERT INTO hot (id, v, by) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET v = excluded.v, by = excluded.by",
                (n % 8, n, tid),
            )
        conn.execute("COMMIT")
        print("ok", tid, flush=True)
    except sqlite3.Error as e:
        print("err", tid, f"{type(e).__name__}: {e}".replace("\n", " "), flush=True)
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
    next_at += period
    pause = next_at - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    else:
        next_at = time.monotonic()
