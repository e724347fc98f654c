#!/usr/bin/env python3
"""Paced writer for bench/watch.sh: writes small files at RATE changes/s into DIR for SECONDS.

Each change writes a complete file through a temporary name and a rename (so every version that
can be captured is whole) and logs `name<TAB>completion time (ns since the epoch)` to LOG after the
rename returned. MIX=1 also writes a 100 MiB file every 5 s (`big-<n>`, not logged).
usage: writer.py DIR RATE SECONDS LOG [START_INDEX] [MIX]
"""
import os
import sys
import time

d, rate, secs, log = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
start = int(sys.argv[5]) if len(sys.argv) > 5 else 0
mix = len(sys.argv) > 6 and sys.argv[6] == "1"
big = os.urandom(1 << 20)
with open(log, "a", buffering=1) as out:
    t0 = time.monotonic()
    i, nbig = start, 0
    next_big = t0 + 1.0
    while True:
        now = time.monotonic()
        if now - t0 >= secs:
            break
        if mix and now >= next_big:
            tmp = os.path.join(d, f".big-{nbig}.tmp")
            with open(tmp, "wb") as f:
                for _ in range(100):
                    f.write(big)
            os.rename(tmp, os.path.join(d, f"big-{nbig % 3}"))
            nbig += 1
            next_big += 5.0
        due = t0 + (i - start) / rate
        if due > now:
            time.sleep(due - now)
        name = f"f-{i}"
        tmp = os.path.join(d, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write((name + "\n").encode() * (1 + i % 200))
        os.rename(tmp, os.path.join(d, name))
        out.write(f"{name}\t{time.time_ns()}\n")
        i += 1
print(i)
