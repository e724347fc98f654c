#!/usr/bin/env bash
# Continuous-capture benchmark (issue 3): RPO two ways, WAL append latency against a raw fsync,
# seal time against tree size, and an idle watcher on the shared dataset.
#
# usage: bench/watch.sh            (as root on Debian 12; results in $WORKDIR/watch-results.md)
#
# 1. WAL latency: crates/core/examples/wal_latency.rs, RUNS times (medians): 4 KiB raw
#    pwrite+fdatasync vs WAL append+sync, 1 and 4 threads, on $WORKDIR's disk.
# 2. Seal time: crates/cluster/examples/seal_time.rs with a local repository (every seal pays
#    its fsyncs): one changed file in trees of 1k, 10k and 100k files.
# 3. RPO (a), the daemon's own clock: `watch` on a fresh directory while bench/lib/writer.py
#    writes small files at 10, 100 and 1000 changes/s (and 100/s with a 100 MiB file every 5 s),
#    DURATION s each; status.json's event→durable p50/p99.
# 4. RPO (b), black box: KILLS times per rate: start `watch`, write for 1–3 s, `kill -9` at a
#    random moment, `tidemark recover`, list the latest snapshot; the loss window is the age at the
#    kill of the oldest write that completed before the kill and is missing. Also checks that no
#    change acknowledged by the log (`watch --ack-log`) is missing.
# 5. Idle: `watch` on a copy of the shared dataset (~104k files): time of the first reconcile,
#    then CPU seconds and RSS over IDLE s without changes.
# 6. Syncthing (Debian package, two local instances) on the same writer: time until each file
#    appears on the second instance, with default settings and with a 1 s watcher delay.
#
# Environment: RUNS [3], DURATION [20], KILLS [50], IDLE [60], WORKDIR [/tmp/tidemark-bench],
#   RATES ["10 100 1000"] (section 4), TIDEMARK_BIN [target/release/tidemark], SKIP [""] (space-separated subset of 1..6 to skip),
#   BENCH_DATA [$WORKDIR/pristine] (built with ../shared/bench/dataset.sh if missing).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-20}
KILLS=${KILLS:-50}
IDLE=${IDLE:-60}
WORKDIR=${WORKDIR:-/tmp/tidemark-bench}
BENCH_DATA=${BENCH_DATA:-$WORKDIR/pristine}
SKIP=" ${SKIP:-} "
SHARED_BENCH=${SHARED_BENCH:-$REPO_ROOT/../shared/bench}
[ -f "$SHARED_BENCH/dataset.sh" ] || SHARED_BENCH=/work/shared/bench
W=$WORKDIR/watch
OUT=$WORKDIR/watch-results.md
export TIDEMARK_PASSWORD=bench
mkdir -p "$W"

if [ -z "${TIDEMARK_BIN:-}" ]; then
  (cd "$REPO_ROOT" && cargo build --release -q -p tidemark)
  TIDEMARK_BIN=$REPO_ROOT/target/release/tidemark
fi
T=$TIDEMARK_BIN
skip() { [[ "$SKIP" == *" $1 "* ]]; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

{
  echo "# watch benchmark, $(date -u +%FT%TZ), $(git -C "$REPO_ROOT" rev-parse --short HEAD)"
  echo
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; disk of $WORKDIR: $(df -T "$WORKDIR" | awk 'NR==2{print $2}'); $(uname -r)."
  echo
} >"$OUT"

if ! skip 1; then
  echo "== 1. WAL append latency vs raw fsync" >&2
  (cd "$REPO_ROOT" && cargo build --release -q -p tidemark-core --example wal_latency)
  for r in $(seq "$RUNS"); do
    "$REPO_ROOT/target/release/examples/wal_latency" "$W/walbench" 2000 4 >"$W/wal-$r.csv"
  done
  {
    echo "## WAL append latency (µs), medians of $RUNS runs of 2000 appends of 4 KiB"
    echo
    echo "| what | p50 | p99 | max | fsyncs | appends/s |"
    echo "|---|---|---|---|---|---|"
    for what in "raw 4KiB pwrite+fdatasync" "wal append+sync 1 thread" "wal append+sync 4 threads"; do
      row="| $what"
      for col in 2 3 4 5 6; do
        v=$(grep -h "^$what," "$W"/wal-*.csv | cut -d, -f"$col" | grep -v '^$' | median || true)
        row="$row | $v"
      done
      echo "$row |"
    done
    echo
  } >>"$OUT"
fi

if ! skip 2; then
  echo "== 2. seal time vs tree size" >&2
  (cd "$REPO_ROOT" && cargo build --release -q -p tidemark-cluster --example seal_time)
  (cd "$W" && SEAL_STORE=local "$REPO_ROOT/target/release/examples/seal_time" 1000 10000 100000 flat100000 flat200000) >"$W/seal.csv"
  {
    echo "## Seal time (ms), local repository (pack, index, snapshot and catalog fsync'd per seal)"
    echo
    echo "| layout | files | first seal | one changed file: p50 | p90 |"
    echo "|---|---|---|---|---|"
    tail -n +2 "$W/seal.csv" | awk -F, '{printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5}'
    echo
  } >>"$OUT"
fi

# Never leave a daemon behind (it would keep writing into the next run's repository).
WATCH_PID=
cleanup() { [ -n "$WATCH_PID" ] && kill -9 "$WATCH_PID" 2>/dev/null || true; }
trap cleanup EXIT

# start_watch SRC STATE [extra watch flags…]: starts the daemon, waits (up to RECONCILE_WAIT s) for its
# first reconcile.
start_watch() {
  local src=$1 state=$2
  shift 2
  "$T" --repo "$W/repo" watch --json "$@" --state-dir "$state" "$src" >"$state.out" 2>"$state.err" &
  WATCH_PID=$!
  for _ in $(seq $((${RECONCILE_WAIT:-30} * 20))); do
    grep -q '"reconciled"' "$state.out" 2>/dev/null && return 0
    kill -0 "$WATCH_PID" 2>/dev/null || { cat "$state.err" >&2; return 1; }
    sleep 0.05
  done
  echo "watch did not reconcile" >&2
  kill -9 "$WATCH_PID" 2>/dev/null || true
  return 1
}

fresh_repo() {
  rm -rf "$W/repo" "$W/src" "$W/state" "$W"/state.*
  "$T" --repo "$W/repo" init --kdf-memory-kib 8192 --kdf-time 1 >/dev/null 2>&1
  mkdir -p "$W/src"
}

if ! skip 3; then
  echo "== 3. RPO (a): event → durable in the log, the daemon's clock" >&2
  {
    echo "## RPO (a): event → fsync'd in the log, daemon timestamps, ${DURATION} s per workload"
    echo
    echo "| workload | changes | p50 ms | p99 ms | max ms | daemon CPU s | peak RSS MB |"
    echo "|---|---|---|---|---|---|---|"
  } >>"$OUT"
  for wl in 10 100 1000 mix; do
    fresh_repo
    start_watch "$W/src" "$W/state"
    rate=$wl mix=0
    [ "$wl" = mix ] && rate=100 mix=1
    python3 "$SCRIPT_DIR/lib/writer.py" "$W/src" "$rate" "$DURATION" "$W/writes-$wl.log" 0 "$mix" >/dev/null
    sleep 2
    cpu=$(awk '{print ($14+$15)/100}' "/proc/$WATCH_PID/stat")
    rss=$(awk '/VmHWM/{print $2/1024}' "/proc/$WATCH_PID/status")
    cp "$W/state/status.json" "$W/status-$wl.json"
    kill -TERM "$WATCH_PID"; wait "$WATCH_PID" || true
    python3 - "$W/status-$wl.json" "$wl" "$cpu" "$rss" >>"$OUT" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
r = s["rpo_ms"]
name = {"10": "10 small files/s", "100": "100 small files/s", "1000": "1000 small files/s", "mix": "100/s + a 100 MiB file every 5 s"}[sys.argv[2]]
print(f"| {name} | {r['samples']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} | {float(sys.argv[3]):.1f} | {float(sys.argv[4]):.0f} |")
PY
  done
  echo >>"$OUT"
fi

if ! skip 4; then
  echo "== 4. RPO (b): black box, kill -9 at a random moment" >&2
  {
    echo "## RPO (b): loss window after kill -9 (black box), $KILLS kills per rate"
    echo
    echo "| rate | kills | writes lost (total) | window p50 ms | window p99 ms | acknowledged but missing |"
    echo "|---|---|---|---|---|---|"
  } >>"$OUT"
  for rate in ${RATES:-10 100 1000}; do
    fresh_repo
    : >"$W/windows-$rate.txt"
    rm -f "$W/ack-$rate.log" "$W/writes-b-$rate.log"
    idx=0
    for _ in $(seq "$KILLS"); do
      start_watch "$W/src" "$W/state" --ack-log "$W/ack-$rate.log"
      secs=$(python3 -c "import random; print(round(random.uniform(1,3),3))")
      python3 "$SCRIPT_DIR/lib/writer.py" "$W/src" "$rate" 4 "$W/writes-b-$rate.log" "$idx" >"$W/writer.out" &
      wpid=$!
      sleep "$secs"
      kill_ns=$(date +%s%N)
      kill -9 "$WATCH_PID"; wait "$WATCH_PID" 2>/dev/null || true
      wait "$wpid" || true
      idx=$(tail -1 "$W/writer.out")
      "$T" --repo "$W/repo" recover --state-dir "$W/state" >/dev/null
      "$T" --repo "$W/repo" ls latest --json >"$W/ls.json"
      python3 - "$W/ls.json" "$W/writes-b-$rate.log" "$kill_ns" "$W/ack-$rate.log" "$W/src" >>"$W/windows-$rate.txt" <<'PY'
import json, os, sys
ls, writes, kill_ns, ack, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
present = set()
for line in open(ls):
    line = line.strip()
    if not line:
        continue
    try:
        v = json.loads(line)
    except ValueError:
        continue
    items = v if isinstance(v, list) else [v]
    for it in items:
        p = it.get("path") if isinstance(it, dict) else None
        if p:
            present.add(os.path.basename(p))
missing_ages = []
for line in open(writes):
    name, t = line.split("\t")
    t = int(t)
    if t < kill_ns and name not in present:
        missing_ages.append((kill_ns - t) / 1e6)
acked = {l.strip() for l in open(ack)} if os.path.exists(ack) else set()
acked_missing = sum(1 for a in acked if a.startswith("f-") and a not in present)
print(f"{max(missing_ages) if missing_ages else 0.0:.1f} {len(missing_ages)} {acked_missing}")
PY
      # The next round starts from the recovered state; writes of this round are settled.
      : >"$W/writes-b-$rate.log"
    done
    python3 - "$W/windows-$rate.txt" "$rate" >>"$OUT" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
w = sorted(float(r[0]) for r in rows)
lost = sum(int(r[1]) for r in rows)
acked_missing = sum(int(r[2]) for r in rows)
q = lambda p: w[round((len(w) - 1) * p)] if w else float("nan")
print(f"| {sys.argv[2]}/s | {len(rows)} | {lost} | {q(0.5):.1f} | {q(0.99):.1f} | {acked_missing} |")
PY
  done
  echo >>"$OUT"
fi

if ! skip 5; then
  echo "== 5. idle watcher on the shared dataset" >&2
  if [ ! -e "$BENCH_DATA.ready" ]; then
    rm -rf "$BENCH_DATA"
    bash "$SHARED_BENCH/dataset.sh" "$BENCH_DATA" >&2
    touch "$BENCH_DATA.ready"
  fi
  fresh_repo
  rm -rf "$W/src"
  cp -a "$BENCH_DATA" "$W/src"
  files=$(find "$W/src" -type f | wc -l)
  t0=$(date +%s.%N)
  RECONCILE_WAIT=1800 start_watch "$W/src" "$W/state"
  t1=$(date +%s.%N)
  sleep 5
  cpu0=$(awk '{print ($14+$15)/100}' "/proc/$WATCH_PID/stat")
  sleep "$IDLE"
  cpu1=$(awk '{print ($14+$15)/100}' "/proc/$WATCH_PID/stat")
  rss=$(awk '/VmRSS/{print $2/1024}' "/proc/$WATCH_PID/status")
  hwm=$(awk '/VmHWM/{print $2/1024}' "/proc/$WATCH_PID/status")
  kill -TERM "$WATCH_PID"; wait "$WATCH_PID" || true
  # A restart compares the catalog with the disk: no file is read again.
  t2=$(date +%s.%N)
  RECONCILE_WAIT=1800 start_watch "$W/src" "$W/state"
  t3=$(date +%s.%N)
  kill -TERM "$WATCH_PID"; wait "$WATCH_PID" || true
  {
    echo "## Idle watcher on the shared dataset ($files files)"
    echo
    echo "| first reconcile (reads everything) s | restart reconcile s | idle CPU over ${IDLE} s | idle RSS MB | peak RSS MB |"
    echo "|---|---|---|---|---|"
    awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v u0="$cpu0" -v u1="$cpu1" -v r="$rss" -v h="$hwm" -v i="$IDLE" \
      'BEGIN {printf "| %.1f | %.1f | %.2f s (%.2f%%) | %.0f | %.0f |\n", b-a, d-c, u1-u0, (u1-u0)/i*100, r, h}'
    echo
  } >>"$OUT"
fi

if ! skip 6; then
  echo "== 6. Syncthing propagation delay, same writer" >&2
  command -v syncthing >/dev/null || { apt-get update -qq && apt-get install -y -qq syncthing >/dev/null; }
  {
    echo "## Syncthing $(syncthing --version | awk '{print $2}'): propagation delay A → B on the same writer, ${DURATION} s per rate"
    echo
    echo "Two local instances, one folder (A send-receive, B receive-only); B's folder is listed every"
    echo "5 ms. Default settings: file watcher with its 10 s delay. Tuned: \`fsWatcherDelayS=1\`."
    echo
    echo "| settings | rate | written | arrived | p50 ms | p99 ms | max ms |"
    echo "|---|---|---|---|---|---|---|"
    for delay in 10 1; do
      label=default; [ "$delay" = 10 ] || label="tuned (1 s)"
      python3 "$SCRIPT_DIR/lib/syncthing_delay.py" "$W/syncthing" "$DURATION" 10 100 1000 --watcher-delay "$delay" |
        awk -F, -v l="$label" '{printf "| %s | %s/s | %s | %s | %s | %s | %s |\n", l, $1, $2, $3, $4, $5, $6}'
    done
    echo
    echo "tidemark on the same writer: event → durable in the log is section 3 (RPO a), and a change"
    echo "is in a restorable snapshot at the next seal (every 500 ms)."
    echo
  } >>"$OUT"
fi

cat "$OUT"
