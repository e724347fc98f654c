#!/usr/bin/env python3
"""Crash loop for `tidemark watch` (issue 9): KILLS kill -9s under a writer, a check after each.

The writer (a thread) makes ~RATE changes/s over a few hundred files in ~10 directories: 40%
in-place rewrites, 25% creates, 20% renames (a whole directory now and then), 15% deletes. Every
create and every rename target gets a name never used before, and every write gets a global
version number `gid`: the file holds a header naming it, then filler derived from it, so any
content can be traced to the one write that produced it (or found torn).

A round: start `watch` (fresh ack log), wait for `reconciled`, let the writer run for 150-700 ms,
kill -9 the daemon, pause the writer, `recover`, `restore latest`, then check the restored tree
against the writer's history of every path (a path's states: each version written at it or carried
to it by a rename, then maybe removed; names are never reused):
  (a) an acknowledged path (ack line == the path) is present with a state it had, or absent only
      if the writer removed it; an ack means the path was read after it came to be, so it cannot
      be the state before its creation;
  (b) every restored file is exactly some version the path had (the momentary states of a write,
      empty or a prefix cut at a 4 KiB page, are real states a reader can see: allowed, counted);
  (c) no path goes back, compared to earlier checks, to an older state, nor comes back after its
      removal was recovered (a lost sealed change).
Every CHECK_EVERY kills: `check --read-data`. At the end: `watch` once more, converge, SIGTERM
(exit 0), and the restored latest snapshot must equal the source (content, mode, mtime).
On a violation the round's state is kept under WORK/violation and the loop stops (exit 1).
"""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

BIN = os.environ["TIDEMARK_BIN"]
KILLS = int(os.environ.get("KILLS", "1000"))
SEED = int(os.environ.get("SEED", "1"))
RATE = float(os.environ.get("RATE", "100"))
CHECK_EVERY = int(os.environ.get("CHECK_EVERY", "100"))
WORK = os.path.abspath(os.environ.get("WORKDIR", "/tmp/tidemark-crash"))
MAX_FILES = int(os.environ.get("MAX_FILES", "400"))
SRC, REPO, STATE = f"{WORK}/src", f"{WORK}/repo", f"{WORK}/state"
ACKS, RESTORE, JOURNAL = f"{WORK}/acks", f"{WORK}/restore", f"{WORK}/journal.jsonl"
PAGE = 4096
os.environ["TIDEMARK_PASSWORD"] = "crash-loop"


def content(gid):
    """The bytes of write `gid`: a header naming it, then filler derived from it."""
    r = random.Random(gid * 7919 + 17)
    size = int(100 * (65536 / 100) ** r.random())
    head = f"tm v{gid}\n".encode()
    return head + r.randbytes(max(0, size - len(head)))


def gid_of(data):
    """The version a file's content names in its header, or None."""
    nl = data.find(b"\n", 0, 40)
    if not data.startswith(b"tm v") or nl < 0:
        return None
    try:
        return int(data[4:nl])
    except ValueError:
        return None


def tm(*args, check=True, **kw):
    p = subprocess.run([BIN, "--repo", REPO, *args], capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise SystemExit(f"tidemark {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
    return p


class Writer:
    """The writer thread and the history of every path (relative to SRC) it ever touched."""

    def __init__(self, rng):
        self.rng = rng
        self.hist = {}  # path -> list of gids it held, in order; "R" last when removed
        self.origin = {}  # rename target -> its source
        self.dirs = []  # live top-level directories
        self.files = {}  # live file -> dir
        self.next_gid = 1
        self.next_name = 1
        self.ops = 0
        self.journal = open(JOURNAL, "a")
        self.running = threading.Event()
        self.idle = threading.Event()
        self.stop = False
        self.thread = None

    def name(self, prefix):
        self.next_name += 1
        return f"{prefix}{self.next_name - 1}"

    def log(self, *rec):
        self.journal.write(json.dumps([round(time.time(), 4), *rec]) + "\n")

    def put(self, path, gid):
        self.hist.setdefault(path, []).append(gid)

    def write(self, path):
        gid = self.next_gid
        self.next_gid += 1
        with open(f"{SRC}/{path}", "wb") as f:  # O_TRUNC, then one write: rewrite in place
            f.write(content(gid))
        self.put(path, gid)
        self.log("w", path, gid)

    def populate(self, ndirs=10, per_dir=30):
        os.makedirs(SRC)
        for _ in range(ndirs):
            d = self.name("d")
            os.mkdir(f"{SRC}/{d}")
            self.dirs.append(d)
            self.hist[d] = ["D"]
            for _ in range(per_dir):
                f = f"{d}/{self.name('f')}"
                self.write(f)
                self.files[f] = d

    def step(self):
        r = self.rng.random()
        files = sorted(self.files)
        if r < 0.40 and files:
            self.write(self.rng.choice(files))
        elif r < 0.65 and len(files) < MAX_FILES or not files:
            d = self.rng.choice(self.dirs)
            f = f"{d}/{self.name('f')}"
            self.write(f)
            self.files[f] = d
        elif 0.65 <= r < 0.85:
            if self.rng.random() < 0.05:
                self.rename_dir(self.rng.choice(self.dirs))
                return
            src = self.rng.choice(files)
            d = self.rng.choice(self.dirs)
            dst = f"{d}/{self.name('f')}"
            os.rename(f"{SRC}/{src}", f"{SRC}/{dst}")
            self.put(dst, self.hist[src][-1])
            self.origin[dst] = src
            self.put(src, "R")
            del self.files[src]
            self.files[dst] = d
            self.log("mv", src, dst)
        else:  # a delete (also instead of a create while the working set is full)
            f = self.rng.choice(files)
            os.unlink(f"{SRC}/{f}")
            self.put(f, "R")
            del self.files[f]
            self.log("rm", f)

    def rename_dir(self, d):
        new = self.name("d")
        os.rename(f"{SRC}/{d}", f"{SRC}/{new}")
        self.dirs[self.dirs.index(d)] = new
        self.put(new, "D")
        self.put(d, "R")
        for f in [f for f, fd in self.files.items() if fd == d]:
            g = f"{new}/{f.split('/', 1)[1]}"
            self.put(g, self.hist[f][-1])
            self.origin[g] = f
            self.put(f, "R")
            del self.files[f]
            self.files[g] = new
        self.log("mvdir", d, new)

    def run(self):
        period = 1.0 / RATE
        nxt = time.monotonic()
        while not self.stop:
            if not self.running.is_set():
                self.idle.set()
                self.running.wait(0.05)
                nxt = time.monotonic()
                continue
            self.idle.clear()
            self.step()
            self.ops += 1
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))
        self.idle.set()

    def start(self):
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def resume(self):
        self.idle.clear()
        self.running.set()

    def pause(self):
        self.running.clear()
        self.idle.wait()
        self.journal.flush()


class Daemon:
    def __init__(self, ack):
        ack_flags = ["--ack-log", ack] if ack else []
        self.p = subprocess.Popen(
            [BIN, "--repo", REPO, "watch", "--json", "--seal-interval", "100ms", *ack_flags, "--state-dir", STATE, SRC],
            stdout=subprocess.PIPE, stderr=open(f"{WORK}/watch.stderr", "a"))
        self.lines = []
        self.cv = threading.Condition()
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        for line in self.p.stdout:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            with self.cv:
                self.lines.append(v)
                self.cv.notify_all()

    def wait_for(self, kind, timeout=60):
        end = time.monotonic() + timeout
        with self.cv:
            while not any(v.get("message_type") == kind for v in self.lines):
                if self.p.poll() is not None:
                    raise SystemExit(f"watch exited {self.p.returncode} before {kind!r}; see {WORK}/watch.stderr")
                if time.monotonic() > end:
                    raise SystemExit(f"no {kind!r} from watch within {timeout}s")
                self.cv.wait(0.1)

    def hwm_kib(self):
        try:
            with open(f"/proc/{self.p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def kill9(self):
        os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait()

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(120)


def restore():
    shutil.rmtree(RESTORE, ignore_errors=True)
    tm("restore", "latest", "--target", RESTORE)
    return RESTORE + SRC


def scan(root):
    """path -> ("D",) for a directory, or ("F", bytes, stat) for a file, relative to root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(f"{rel}/{d}")] = ("D",)
        for f in filenames:
            p = f"{dirpath}/{f}"
            with open(p, "rb") as fh:
                out[os.path.normpath(f"{rel}/{f}")] = ("F", fh.read(), os.lstat(p))
    return out


class Checker:
    def __init__(self, w):
        self.w = w
        self.floor = {}  # path -> lowest state index a later check may show (from earlier checks)
        self.acked = 0
        self.ack_paths = set()
        self.missing = self.torn = self.regressions = self.transient = self.unknown_acks = self.stale = 0

    def span(self, path, got):
        """The state indices of `path`'s history that `got` can be, as (lo, hi); None if none.

        Index -1 is "not yet there", len(hist)-1 with hist[-1] == "R" is "removed"."""
        h = self.w.hist.get(path, [])
        removed = bool(h) and h[-1] == "R"
        if got is None:
            floor = self.floor.get(path, -1)
            if removed:
                return (len(h) - 1 if floor >= 0 else -1, len(h) - 1)
            return (-1, -1)
        if got[0] == "D":
            idx = [i for i, s in enumerate(h) if s == "D"]
            return (idx[0], idx[-1]) if idx else None
        data = got[1]
        g = gid_of(data)
        if g is not None and g in h:
            i = h.index(g)
            full = content(g)
            if data == full:
                return (i, i)
            if len(data) % PAGE == 0 and full.startswith(data):
                self.transient += 1
                return (i, i)
            return None
        a = path
        while g is not None and (a := self.w.origin.get(a)) is not None:
            if g in self.w.hist[a] and data == content(g):
                self.stale += 1  # an older state of the renamed file: not a state this path had
                return (0, 0)
        if data == b"":
            idx = [i for i, s in enumerate(h) if isinstance(s, int)]
            if idx:
                self.transient += 1
                return (idx[0], idx[-1])
        return None

    def check(self, restored, acks, why):
        """Checks one restored tree; returns a list of violation descriptions."""
        bad = []
        tree = scan(restored) if restored else {}
        spans = {}
        for p in set(tree) | set(self.w.hist):
            got = tree.get(p)
            s = self.span(p, got)
            if s is None:
                if got and got[0] == "F":
                    self.torn += 1
                    g = gid_of(got[1])
                    bad.append(f"torn/unknown content at {p}: header v{g}, {len(got[1])} bytes; history {self.w.hist.get(p)}")
                else:
                    self.regressions += 1
                    bad.append(f"{p} is {got and got[0]} but its history is {self.w.hist.get(p)}")
                continue
            spans[p] = s
        for p, (lo, hi) in spans.items():
            f = self.floor.get(p, -1)
            if hi < f:
                self.regressions += 1
                bad.append(f"{p} went back to state {hi} (earlier checks showed {f}); history {self.w.hist[p]}")
            self.floor[p] = max(f, lo)
        for p in acks:
            self.acked += 1
            self.ack_paths.add(p)
            if p not in self.w.hist:
                self.unknown_acks += 1
                continue
            s = spans.get(p)
            if s is not None and s[1] < 0:
                self.missing += 1
                bad.append(f"acknowledged {p} is missing; history {self.w.hist[p]}")
            # Read after it came to be: later checks may not show it as not yet there.
            self.floor[p] = max(self.floor.get(p, -1), 0)
        return [f"{why}: {b}" for b in bad]


def read_acks(path):
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    return [l.decode() for l in lines[:-1] if l]  # a last line without "\n" may be cut short


def keep(why, bad, extra=()):
    dst = f"{WORK}/violation"
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for p in [REPO, STATE, ACKS, JOURNAL, RESTORE, SRC, f"{WORK}/watch.stderr", *extra]:
        if os.path.exists(p):
            if os.path.isdir(p):
                shutil.copytree(p, f"{dst}/{os.path.basename(p)}", symlinks=True)
            else:
                shutil.copy2(p, dst)
    with open(f"{dst}/violations.txt", "w") as f:
        f.write("\n".join(bad) + "\n")
    print(f"VIOLATION in {why}; state kept in {dst}:", file=sys.stderr)
    for b in bad[:40]:
        print("  " + b, file=sys.stderr)


def converge(timeout=60):
    end = time.monotonic() + timeout
    while True:
        time.sleep(0.5)
        got = scan(restore())
        if diff(scan(SRC), got, meta=False) is None:
            return
        if time.monotonic() > end:
            raise SystemExit(f"watch did not converge within {timeout}s: {diff(scan(SRC), got, False)}")


def diff(want, got, meta=True):
    for p in sorted(set(want) | set(got)):
        a, b = want.get(p), got.get(p)
        if (a is None) != (b is None) or a[0] != b[0]:
            return f"{p}: source {a and a[0]}, restored {b and b[0]}"
        if a[0] == "F":
            if a[1] != b[1]:
                return f"{p}: content differs ({len(a[1])} vs {len(b[1])} bytes)"
            if meta and (a[2].st_mode != b[2].st_mode or a[2].st_mtime_ns != b[2].st_mtime_ns):
                return f"{p}: mode/mtime differ ({oct(a[2].st_mode)} {a[2].st_mtime_ns} vs {oct(b[2].st_mode)} {b[2].st_mtime_ns})"
    return None


def main():
    t0 = time.monotonic()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(ACKS)
    rng = random.Random(SEED)
    tm("init", "-q", "--kdf-memory-kib", "1024", "--kdf-time", "1")
    w = Writer(random.Random(rng.random()))
    w.populate()
    c = Checker(w)
    # A first snapshot of the populated tree.
    d = Daemon(None)
    d.wait_for("reconciled")
    converge()
    if (rc := d.stop()) != 0:
        raise SystemExit(f"watch exited {rc} on SIGTERM")
    w.start()
    hwm = 0
    checks = []
    recover_s = []
    for k in range(1, KILLS + 1):
        ack = f"{ACKS}/{k:04d}.log"
        d = Daemon(ack)
        d.wait_for("reconciled")
        w.resume()
        time.sleep(rng.uniform(0.150, 0.700))
        hwm = max(hwm, d.hwm_kib())
        d.kill9()
        w.pause()
        t = time.monotonic()
        tm("recover", "--state-dir", STATE)
        recover_s.append(time.monotonic() - t)
        bad = c.check(restore(), read_acks(ack), f"kill {k}")
        if k % CHECK_EVERY == 0:
            p = tm("check", "--read-data", check=False)
            checks.append(p.returncode)
            if p.returncode != 0:
                bad.append(f"kill {k}: check --read-data exited {p.returncode}: {p.stderr.strip()[-2000:]}")
        if bad:
            keep(f"kill {k}", bad)
            summary(k, w, c, checks, hwm, recover_s, t0, "STOPPED")
            return 1
        if k % 50 == 0 or k == KILLS:
            print(f"kill {k}: {w.ops} writer ops, {c.acked} acks ({len(c.ack_paths)} paths), "
                  f"missing {c.missing}, torn {c.torn}, regressions {c.regressions}, transient {c.transient}, "
                  f"{time.monotonic() - t0:.0f}s", flush=True)
    # Final: watch once more, converge, SIGTERM, exact comparison.
    d = Daemon(f"{ACKS}/final.log")
    d.wait_for("reconciled")
    converge()
    rc = d.stop()
    want = scan(SRC)
    got = scan(restore())
    bad = c.check(RESTORE + SRC, read_acks(f"{ACKS}/final.log"), "final")
    if rc != 0:
        bad.append(f"final: watch exited {rc} on SIGTERM")
    if (dd := diff(want, got)) is not None:
        bad.append(f"final: the latest snapshot is not the source: {dd}")
    p = tm("check", "--read-data", check=False)
    checks.append(p.returncode)
    if p.returncode != 0:
        bad.append(f"final: check --read-data exited {p.returncode}")
    if bad:
        keep("final", bad)
    summary(KILLS, w, c, checks, hwm, recover_s, t0, "FAILED" if bad else "OK", final_files=len(want))
    return 1 if bad else 0


def summary(k, w, c, checks, hwm, recover_s, t0, verdict, final_files=None):
    ok = sum(1 for r in checks if r == 0)
    rs = sorted(recover_s) or [0]
    print(f"{verdict}: seed {SEED}, {k} kills, {w.ops} writer ops ({w.next_gid - 1} writes), "
          f"{c.acked} acknowledged changes ({len(c.ack_paths)} paths), acknowledged-but-missing {c.missing}, "
          f"torn {c.torn}, regressions {c.regressions}, transient (empty/page-prefix) {c.transient}, "
          f"stale-after-rename {c.stale}, "
          f"unknown ack paths {c.unknown_acks}, check --read-data {ok}/{len(checks)} ok, "
          f"recover median {rs[len(rs) // 2] * 1e3:.0f} ms max {rs[-1] * 1e3:.0f} ms, "
          f"watch peak RSS {hwm / 1024:.1f} MiB, "
          + (f"final tree {final_files} files, " if final_files is not None else "")
          + f"wall {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
