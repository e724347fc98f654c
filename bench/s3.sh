#!/usr/bin/env bash
# S3 round trip: first backup and full restore of the shared dataset into a repository on a
# local S3 server (s3s-fs, objects as files on the same disk) beside the same into a local
# directory, for tidemark and restic, in one run.
#
# usage: bench/s3.sh                (as root on Debian; see bench/README.md)
#
# Per run, for each tool and each backend (local directory, then S3; tools interleaved): fresh
# repository, `sync`, source read into the page cache, first backup timed with GNU time (wall s,
# peak RSS), then a full restore into an empty directory, timed the same way and compared with the
# source. s3s-fs runs on 127.0.0.1 with its data under $WORKDIR; the server's own CPU time is
# part of the round trip (the machine has 2 cores), as it would be with a NAS-local MinIO.
#
# Environment (defaults in brackets):
#   RUNS [3]      runs per tool and backend; medians and min-max
#   TOOLS ["tidemark restic"]
#   WORKDIR [/tmp/tidemark-s3-bench]   BENCH_DATA [/tmp/tidemark-bench/pristine]
#   SHARED_BENCH [<repo>/../shared/bench]   TIDEMARK_BIN [target/release/tidemark, built]
#   S3S_FS [s3s-fs on PATH or ~/.cargo/bin; installed with cargo when missing]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
RUNS=${RUNS:-3}
read -r -a TOOL_LIST <<<"${TOOLS:-tidemark restic}"
WORK=${WORKDIR:-/tmp/tidemark-s3-bench}
BENCH_DATA=${BENCH_DATA:-/tmp/tidemark-bench/pristine}
SHARED_BENCH=${SHARED_BENCH:-$root/../shared/bench}
[ -d "$SHARED_BENCH" ] || SHARED_BENCH=/work/shared/bench

need=()
command -v restic >/dev/null || need+=(restic)
[ -x /usr/bin/time ] || need+=(time)
if [ "${#need[@]}" -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; fi
S3S_FS=${S3S_FS:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
if [ ! -x "$S3S_FS" ]; then
  cargo install s3s-fs --version 0.14.1 --features binary --locked
  S3S_FS=$HOME/.cargo/bin/s3s-fs
fi
if [ -z "${TIDEMARK_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p tidemark)
  TIDEMARK_BIN=$root/target/release/tidemark
fi
if [ ! -e "$BENCH_DATA.ready" ]; then
  "$SHARED_BENCH/dataset.sh" "$BENCH_DATA" && touch "$BENCH_DATA.ready"
fi

rm -rf "$WORK" && mkdir -p "$WORK/s3data" "$WORK/cache"
export TIDEMARK_PASSWORD=bench RESTIC_PASSWORD=bench
export XDG_CACHE_HOME=$WORK/cache RESTIC_CACHE_DIR=$WORK/cache/restic
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$S3S_FS" --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret \
  "$WORK/s3data" >"$WORK/s3s.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

src=$BENCH_DATA
bytes=$(du -sb --apparent-size "$src" | cut -f1)
csv=$WORK/s3.csv
echo "tool,backend,run,phase,seconds,peak_rss_kb" > "$csv"

timed() { # tool backend run phase cmd...
  local t=$1 b=$2 r=$3 p=$4
  shift 4
  /usr/bin/time -f '%e %M' -o "$WORK/time.one" "$@" >>"$WORK/log" 2>&1 \
    || { echo "failed: $*" >&2; tail -20 "$WORK/log" >&2; exit 1; }
  read -r secs rss < "$WORK/time.one"
  echo "$t,$b,$r,$p,$secs,$rss" >> "$csv"
  printf '%-8s %-5s run %d %-7s %7.2f s  %5d MiB\n' "$t" "$b" "$r" "$p" "$secs" $((rss / 1024))
}

one() { # tool backend run
  local tool=$1 backend=$2 run=$3 loc restore=$WORK/restore
  case "$backend" in
    local) loc=$WORK/repo-$tool; rm -rf "$loc" ;;
    s3)
      # A fresh bucket per run: s3s-fs keeps buckets as directories.
      rm -rf "$WORK/s3data/b-$tool-$run" && mkdir -p "$WORK/s3data/b-$tool-$run"
      # The same spelling works for both tools.
      loc=s3:http://127.0.0.1:$port/b-$tool-$run/repo ;;
  esac
  rm -rf "$restore" "$WORK/cache" && mkdir -p "$restore" "$WORK/cache"
  if [ "$tool" = tidemark ]; then
    "$TIDEMARK_BIN" --repo "$loc" init --quiet
  else
    restic --repo "$loc" init -q >/dev/null
  fi
  sync
  find "$src" -type f -exec cat {} + >/dev/null
  if [ "$tool" = tidemark ]; then
    timed "$tool" "$backend" "$run" backup "$TIDEMARK_BIN" --repo "$loc" backup --quiet "$src"
    sync
    timed "$tool" "$backend" "$run" restore "$TIDEMARK_BIN" --repo "$loc" restore latest --target "$restore"
  else
    timed "$tool" "$backend" "$run" backup restic --repo "$loc" backup -q "$src"
    sync
    timed "$tool" "$backend" "$run" restore restic --repo "$loc" restore latest --target "$restore"
  fi
  # Both tools restore absolute paths under the target.
  if ! diff -rq --no-dereference "$src" "$restore$src" >/dev/null; then
    echo "$tool $backend run $run: restore differs from the source" >&2
    exit 1
  fi
  rm -rf "$WORK/s3data/b-$tool-$run" "$WORK/repo-$tool"
}

for run in $(seq 1 "$RUNS"); do
  for tool in "${TOOL_LIST[@]}"; do
    for backend in local s3; do one "$tool" "$backend" "$run"; done
  done
done

python3 - "$csv" "$bytes" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
size = int(sys.argv[2]) / 2**20
def med(tool, backend, phase, key="seconds"):
    v = [float(r[key]) for r in rows if (r["tool"], r["backend"], r["phase"]) == (tool, backend, phase)]
    return statistics.median(v), min(v), max(v)
tools = sorted({r["tool"] for r in rows}, key=lambda t: t != "tidemark")
print(f"\n{size:.0f} MiB dataset, {len([r for r in rows if r['tool']==tools[0] and r['backend']=='local' and r['phase']=='backup'])} runs; median (min-max) seconds, MiB/s of the median, peak RSS MiB")
print("| tool | phase | local | S3 (s3s-fs) | S3/local time |")
print("|---|---|---|---|---|")
for t in tools:
    for ph in ("backup", "restore"):
        l, s = med(t, "local", ph), med(t, "s3", ph)
        lr, sr = med(t, "local", ph, "peak_rss_kb")[0] / 1024, med(t, "s3", ph, "peak_rss_kb")[0] / 1024
        print(f"| {t} | {ph} | {l[0]:.2f} ({l[1]:.2f}-{l[2]:.2f}) = {size/l[0]:.0f} MiB/s, {lr:.0f} MiB | "
              f"{s[0]:.2f} ({s[1]:.2f}-{s[2]:.2f}) = {size/s[0]:.0f} MiB/s, {sr:.0f} MiB | {s[0]/l[0]:.2f}x |")
if "restic" in tools and "tidemark" in tools:
    for ph in ("backup", "restore"):
        print(f"restic/tidemark on S3, {ph}: {med('restic','s3',ph)[0]/med('tidemark','s3',ph)[0]:.2f}x")
PY
