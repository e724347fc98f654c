#!/usr/bin/env bash
# forget + prune of 90% of the snapshots: tidemark against `restic forget --prune`.
#
# usage: bench/prune.sh             (as root on Debian; see bench/README.md)
#
# History (built once per tool, same data): the shared dataset backed up, then HISTORY-1 times
# `mutate.sh src SEED` (seeds 1, 2, …) and another backup, so each repository holds HISTORY
# snapshots of a slowly changing 2 GiB tree. Each run then copies both repositories afresh and
# times, with GNU time (wall seconds, peak RSS), keeping the newest tenth of the snapshots:
#   restic:   restic forget --keep-last K --prune
#   tidemark: tidemark forget --keep-last K; tidemark prune; tidemark prune --keep-condemned 0s
# tidemark's prune runs without a lock while writers may be active, so it deletes in two phases
# (condemn, then delete once condemned long enough); the second prune is the deletion phase,
# forced now with --keep-condemned 0s. Its time is included. Reclaimed = repository bytes
# (du -sb) before minus after. Both repositories pass their tool's `check` after the last run.
#
# Environment (defaults in brackets):
#   RUNS [3]        timed runs per tool (tools interleaved); medians and min-max
#   HISTORY [30]    snapshots in the history; KEEP [HISTORY/10] are kept
#   WORKDIR [/tmp/tidemark-prune-bench]  scratch; BENCH_DATA [/tmp/tidemark-bench/pristine]
#   SHARED_BENCH [<repo>/../shared/bench]  dataset.sh and mutate.sh
#   TIDEMARK_BIN [target/release/tidemark, built]   SKIP_INSTALL [0]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
RUNS=${RUNS:-3}
HISTORY=${HISTORY:-30}
KEEP=${KEEP:-$(( HISTORY / 10 > 0 ? HISTORY / 10 : 1 ))}
WORK=${WORKDIR:-/tmp/tidemark-prune-bench}
BENCH_DATA=${BENCH_DATA:-/tmp/tidemark-bench/pristine}
SHARED_BENCH=${SHARED_BENCH:-$root/../shared/bench}
[ -d "$SHARED_BENCH" ] || SHARED_BENCH=/work/shared/bench

export TIDEMARK_PASSWORD=bench RESTIC_PASSWORD=bench
export XDG_CACHE_HOME=$WORK/cache RESTIC_CACHE_DIR=$WORK/cache/restic

need=()
command -v restic >/dev/null || need+=(restic)
[ -x /usr/bin/time ] || need+=(time)
if [ "${#need[@]}" -gt 0 ]; then
  [ "${SKIP_INSTALL:-0}" = 1 ] && { echo "missing: ${need[*]}" >&2; exit 1; }
  apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
if [ -z "${TIDEMARK_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p tidemark)
  TIDEMARK_BIN=$root/target/release/tidemark
fi
if [ ! -e "$BENCH_DATA.ready" ]; then
  "$SHARED_BENCH/dataset.sh" "$BENCH_DATA" && touch "$BENCH_DATA.ready"
fi

tm() { "$TIDEMARK_BIN" --repo "$1" "${@:2}"; }
rs() { restic --repo "$1" "${@:2}"; }

# ---------------------------------------------------------------------------------------------
# History, built once (kept while $WORK/history.ready names the same HISTORY).
hist=$WORK/history
if [ "$(cat "$WORK/history.ready" 2>/dev/null)" != "$HISTORY" ]; then
  rm -rf "$WORK" && mkdir -p "$hist" "$WORK/cache"
  echo "building a history of $HISTORY snapshots (both tools back up the same tree each step)"
  cp -a "$BENCH_DATA" "$WORK/src"
  tm "$hist/tidemark" init --quiet
  rs "$hist/restic" init -q
  for i in $(seq 1 "$HISTORY"); do
    if [ "$i" -gt 1 ]; then "$SHARED_BENCH/mutate.sh" "$WORK/src" $((i - 1)) >/dev/null; fi
    tm "$hist/tidemark" backup --quiet "$WORK/src"
    rs "$hist/restic" backup -q "$WORK/src" >/dev/null
    printf '.'
  done
  echo
  rm -rf "$WORK/src"
  echo "$HISTORY" > "$WORK/history.ready"
fi

csv=$WORK/prune.csv
echo "tool,run,seconds,peak_rss_kb,bytes_before,bytes_after,snapshots_after" > "$csv"

# Runs one timed command; appends "seconds rss_kb" of it to $WORK/times.
timed() {
  /usr/bin/time -f '%e %M' -o "$WORK/time.one" "$@" >>"$WORK/log" 2>&1 \
    || { echo "failed: $*" >&2; tail -20 "$WORK/log" >&2; exit 1; }
  cat "$WORK/time.one" >> "$WORK/times"
}

run_tool() { # tool run
  local tool=$1 run=$2 repo=$WORK/run-$1 before after snaps secs rss
  rm -rf "$repo" "$WORK/cache" && mkdir -p "$WORK/cache"
  cp -a "$hist/$tool" "$repo"
  sync
  find "$repo" -type f -exec cat {} + >/dev/null   # warm cache, as for the other benchmarks
  before=$(du -sb "$repo" | cut -f1)
  : > "$WORK/times"
  if [ "$tool" = restic ]; then
    timed restic --repo "$repo" forget -q --keep-last "$KEEP" --prune
    snaps=$(rs "$repo" snapshots --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  else
    timed "$TIDEMARK_BIN" --repo "$repo" forget --quiet --keep-last "$KEEP"
    timed "$TIDEMARK_BIN" --repo "$repo" prune --quiet
    timed "$TIDEMARK_BIN" --repo "$repo" prune --quiet --keep-condemned 0s
    snaps=$(tm "$repo" snapshots --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  fi
  sync
  after=$(du -sb "$repo" | cut -f1)
  # Total time of the steps; peak RSS of the largest step.
  secs=$(awk '{s += $1} END {printf "%.2f", s}' "$WORK/times")
  rss=$(awk '$2 > m {m = $2} END {print m}' "$WORK/times")
  [ "$snaps" = "$KEEP" ] || { echo "$tool kept $snaps snapshots, expected $KEEP" >&2; exit 1; }
  echo "$tool,$run,$secs,$rss,$before,$after,$snaps" >> "$csv"
  printf '%-8s run %d: %6.2f s  peak RSS %6d MiB  %s -> %s bytes\n' "$tool" "$run" "$secs" \
    $((rss / 1024)) "$before" "$after"
}

for run in $(seq 1 "$RUNS"); do
  if [ $((run % 2)) = 1 ]; then order="tidemark restic"; else order="restic tidemark"; fi
  for tool in $order; do run_tool "$tool" "$run"; done
done

# The last pruned copies must still be sound (structure, and a tenth of the data read).
tm "$WORK/run-tidemark" check --quiet --read-data-subset 10% \
  || { echo "tidemark check failed after prune" >&2; exit 1; }
rs "$WORK/run-restic" check -q --read-data-subset 10% >>"$WORK/log" 2>&1 \
  || { echo "restic check failed after prune" >&2; exit 1; }

python3 - "$csv" "$HISTORY" "$KEEP" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
hist, keep = sys.argv[2], sys.argv[3]
def stat(tool, key, f=float):
    v = [f(r[key]) for r in rows if r["tool"] == tool]
    return statistics.median(v), min(v), max(v)
print(f"\nforget {int(hist) - int(keep)} of {hist} snapshots + prune, {len([r for r in rows if r['tool']=='tidemark'])} runs; median (min-max)")
print("| metric | tidemark | restic | restic/tidemark |")
print("|---|---|---|---|")
t, r = stat("tidemark", "seconds"), stat("restic", "seconds")
print(f"| time s | {t[0]:.2f} ({t[1]:.2f}-{t[2]:.2f}) | {r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f}) | {r[0]/t[0]:.2f}x |")
t, r = stat("tidemark", "peak_rss_kb"), stat("restic", "peak_rss_kb")
print(f"| peak RSS MiB | {t[0]/1024:.0f} ({t[1]/1024:.0f}-{t[2]/1024:.0f}) | {r[0]/1024:.0f} ({r[1]/1024:.0f}-{r[2]/1024:.0f}) | {r[0]/t[0]:.2f}x |")
for tool in ("tidemark", "restic"):
    b = stat(tool, "bytes_before")[0]; a = stat(tool, "bytes_after")[0]
    print(f"| {tool} repository MiB before -> after | {b/2**20:.0f} -> {a/2**20:.0f} (reclaimed {(b-a)/2**20:.0f}) | | |")
PY
