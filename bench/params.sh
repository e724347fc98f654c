#!/usr/bin/env bash
# Chooses the default chunk and pack sizes by measurement (docs/format.md §10): for each setting,
# a first backup of the shared dataset, then mutate.sh (seed 1) and a second backup. Reports the
# first backup's time and peak RSS, the repository size, what the 1% mutation added (dedup), the
# index size and the blob count. Medians over RUNS (default 3).
#
# usage: bench/params.sh            (env: RUNS, BENCH_DATA, SHARED_BENCH, SETTINGS, TIDEMARK_BIN)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
RUNS=${RUNS:-3}
WORK=${WORKDIR:-/tmp/tidemark-params}
BENCH_DATA=${BENCH_DATA:-/tmp/tidemark-bench/pristine}
SHARED_BENCH=${SHARED_BENCH:-$root/../shared/bench}
[ -d "$SHARED_BENCH" ] || SHARED_BENCH=/work/shared/bench
# name:min:avg:max:pack
SETTINGS=${SETTINGS:-"c1M-p16M:262144:1048576:4194304:16777216 c1M-p8M:262144:1048576:4194304:8388608 c512K-p8M:131072:524288:2097152:8388608 c256K-p8M:65536:262144:1048576:8388608"}
export TIDEMARK_PASSWORD=params
if [ -z "${TIDEMARK_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p tidemark)
  TIDEMARK_BIN=$root/target/release/tidemark
fi
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
if [ ! -e "$BENCH_DATA.ready" ]; then
  "$SHARED_BENCH/dataset.sh" "$BENCH_DATA" && touch "$BENCH_DATA.ready"
fi
mkdir -p "$WORK"
csv=$WORK/params.csv
echo "setting,run,first_s,first_rss_kb,repo_bytes,mutated_added_bytes,index_bytes,blobs,packs" > "$csv"
for run in $(seq 1 "$RUNS"); do
  for s in $SETTINGS; do
    IFS=: read -r name min avg max pack <<<"$s"
    rm -rf "$WORK/src" "$WORK/repo"
    cp -a "$BENCH_DATA" "$WORK/src"
    "$TIDEMARK_BIN" -r "$WORK/repo" init -q --chunk-min "$min" --chunk-avg "$avg" --chunk-max "$max" --pack-size "$pack"
    sync; tar cf - "$WORK/src" 2>/dev/null | cat >/dev/null
    t=$( { /usr/bin/time -f '%e %M' "$TIDEMARK_BIN" -r "$WORK/repo" backup -q "$WORK/src" >/dev/null; } 2>&1 | tail -1)
    repo=$(du -sb "$WORK/repo" | cut -f1)
    "$SHARED_BENCH/mutate.sh" "$WORK/src" 1 >/dev/null
    added=$("$TIDEMARK_BIN" -r "$WORK/repo" backup --json "$WORK/src" | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["data_added_packed"])')
    stats=$("$TIDEMARK_BIN" -r "$WORK/repo" stats --json)
    read -r index blobs packs < <(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(s["index_bytes"], s["data_blobs"]+s["tree_blobs"], s["packs"])' "$stats")
    echo "$name,$run,${t% *},${t#* },$repo,$added,$index,$blobs,$packs" | tee -a "$csv"
  done
done
python3 - "$csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
names = list(dict.fromkeys(r["setting"] for r in rows))
med = lambda n, k: statistics.median(float(r[k]) for r in rows if r["setting"] == n)
print("\n| setting | first backup s | peak RSS MB | repo MB | added by 1% mutation MB | index KB | blobs | packs |")
print("|---|---|---|---|---|---|---|---|")
for n in names:
    print(f"| {n} | {med(n,'first_s'):.1f} | {med(n,'first_rss_kb')/1024:.0f} | {med(n,'repo_bytes')/1e6:.0f} | "
          f"{med(n,'mutated_added_bytes')/1e6:.1f} | {med(n,'index_bytes')/1024:.0f} | {med(n,'blobs'):.0f} | {med(n,'packs'):.0f} |")
PY
