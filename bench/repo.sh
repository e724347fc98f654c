#!/usr/bin/env bash
# Repository benchmark: tidemark against restic and borg on the shared dataset.
#
# usage: bench/repo.sh            (as root on Debian 12; see bench/README.md)
#
# Per run and tool (tools interleaved, rotated each run): fresh `cp -a` of the pristine dataset
# to $WORKDIR/src, fresh repository, then timed phases (GNU time: wall seconds, peak RSS):
# first backup, no-change backup, backup after `mutate.sh src 1`, full restore of the latest
# snapshot; repository size with `du -sb`; the restore is checked against the mutated source.
# Every timed phase is preceded by `sync` and by reading its input into the page cache (the
# source for backups, the repository for restores): all figures are warm-cache.
#
# Environment (defaults in brackets):
#   RUNS [3]                     runs per tool; medians and min-max are reported
#   TOOLS ["tidemark restic borg"]  subset/order of tools
#   SMALL [0]                    1 = tiny dataset (~360 files from /usr/include + 8 MiB random
#                                file) instead of dataset.sh: a smoke test of the whole script
#   WORKDIR [/tmp/tidemark-bench]  scratch: src/, repo/, restore/, cache/, logs/
#   BENCH_DATA [$WORKDIR/pristine, or $WORKDIR/pristine-small with SMALL=1]
#                                pristine dataset; built once, reused while $BENCH_DATA.ready exists
#   SHARED_BENCH [<repo>/../shared/bench, else /work/shared/bench]  dataset.sh and mutate.sh
#   TIDEMARK_BIN [<repo>/target/release/tidemark, built with cargo]  skips the build when set
#   OUT [$WORKDIR/results.csv, or results-small.csv with SMALL=1]  raw CSV; table -> results.md
#                                (results-small.md) next to it
#   SKIP_INSTALL [0]             1 = do not apt-get install missing tools
# Exit status: 0 if every phase succeeded and every restore matched, 1 otherwise.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

RUNS=${RUNS:-3}
read -r -a TOOL_LIST <<<"${TOOLS:-tidemark restic borg}"
SMALL=${SMALL:-0}
WORKDIR=${WORKDIR:-/tmp/tidemark-bench}
if [ "$SMALL" = 1 ]; then
  BENCH_DATA=${BENCH_DATA:-$WORKDIR/pristine-small}
  OUT=${OUT:-$WORKDIR/results-small.csv}
else
  BENCH_DATA=${BENCH_DATA:-$WORKDIR/pristine}
  OUT=${OUT:-$WORKDIR/results.csv}
fi
MD=$(dirname "$OUT")/$(basename "$OUT" .csv).md
if [ -z "${SHARED_BENCH:-}" ]; then
  SHARED_BENCH=$(dirname "$0")/../../shared/bench
  [ -x "$SHARED_BENCH/mutate.sh" ] || [ -f "$SHARED_BENCH/mutate.sh" ] || SHARED_BENCH=/work/shared/bench
fi
SHARED_BENCH=$(cd "$SHARED_BENCH" && pwd)

# Every tool sees the same paths, so path lengths and tree shapes are equal.
SRC=$WORKDIR/src          # the tree that is backed up (and mutated)
REPO=$WORKDIR/repo        # the repository
RESTORE=$WORKDIR/restore  # restore target, empty before each restore
CACHE=$WORKDIR/cache      # tools' local caches (not counted in the repository size)
LOGDIR=$WORKDIR/logs      # stdout/stderr of every command
HEADER=$WORKDIR/header.md

export TIDEMARK_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_DISPLAY_PASSPHRASE=no
# Caches live in $CACHE and are wiped with the repository, so every run starts alike.
export XDG_CACHE_HOME=$CACHE RESTIC_CACHE_DIR=$CACHE/restic BORG_BASE_DIR=$CACHE/borg-base
BORG_COMPRESSION=zstd,3
BORG_ENCRYPTION=repokey-blake2

FAILED=0
log() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Setup

install_tools() {
  local want=() pkg
  command -v restic >/dev/null || want+=(restic)
  command -v borg >/dev/null || want+=(borgbackup)
  [ -x /usr/bin/time ] || want+=(time)
  command -v b3sum >/dev/null || want+=(b3sum)
  if [ "${#want[@]}" -gt 0 ] && [ "${SKIP_INSTALL:-0}" != 1 ]; then
    [ "$(id -u)" = 0 ] || die "need root to apt-get install ${want[*]}"
    apt-get update -qq
    local avail=()
    for pkg in "${want[@]}"; do
      if apt-cache show "$pkg" >/dev/null 2>&1; then avail+=("$pkg"); else log "apt: no package $pkg, skipped"; fi
    done
    [ "${#avail[@]}" -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${avail[@]}" >/dev/null
  fi
  [ -x /usr/bin/time ] || die "GNU time (/usr/bin/time) is required"
  has_tool restic && { command -v restic >/dev/null || die "restic not installed"; }
  has_tool borg && { command -v borg >/dev/null || die "borg not installed"; }
  log "restic: $(restic version 2>/dev/null || echo missing)"
  log "borg:   $(borg --version 2>/dev/null || echo missing)"
}

has_tool() { local t; for t in "${TOOL_LIST[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }

build_tidemark() {
  has_tool tidemark || return 0
  if [ -z "${TIDEMARK_BIN:-}" ]; then
    [ -d "$HOME/.cargo/bin" ] && PATH=$HOME/.cargo/bin:$PATH
    log "building tidemark: cargo build --release -p tidemark (in $REPO_ROOT)"
    (cd "$REPO_ROOT" && cargo build --release -p tidemark)
    TIDEMARK_BIN=$REPO_ROOT/target/release/tidemark
  fi
  [ -x "$TIDEMARK_BIN" ] || die "no tidemark binary at $TIDEMARK_BIN"
  TIDEMARK_BIN=$(cd "$(dirname "$TIDEMARK_BIN")" && pwd)/$(basename "$TIDEMARK_BIN")
  "$TIDEMARK_BIN" --help 2>&1 | grep -q restore \
    || die "$TIDEMARK_BIN --help lists no backup/restore commands (not implemented yet?)"
}

# A tiny dataset for smoke tests: C headers, a symlink, an empty file, odd modes, and one
# incompressible file (the "largest file" that mutate.sh edits in place).
make_small_dataset() {
  local dest=$1
  rm -rf "$dest"
  mkdir -p "$dest/include" "$dest/media" "$dest/misc"
  cp -a --no-preserve=ownership /usr/include/openssl /usr/include/asm-generic /usr/include/python3.11 "$dest/include/"
  head -c $((8 * 1024 * 1024)) /dev/zero \
    | openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f -iv 00000000000000000000000000000000 \
    > "$dest/media/video-like.bin"
  : >"$dest/misc/empty"
  printf 'secret\n' >"$dest/misc/private" && chmod 600 "$dest/misc/private"
  printf '#!/bin/sh\necho hi\n' >"$dest/misc/run.sh" && chmod 755 "$dest/misc/run.sh"
  ln -s ../include/openssl/ssl.h "$dest/misc/link-to-ssl.h"
  ln -s does-not-exist "$dest/misc/dangling"
  find "$dest" -newer "$dest/include" -exec touch -h -d '2026-01-01 00:00:00 UTC' {} +
  touch -h -d '2026-01-01 00:00:00 UTC' "$dest"
  echo "dataset=$dest (SMALL) files=$(find "$dest" -type f | wc -l) bytes=$(du -sb --apparent-size "$dest" | cut -f1)"
}

# The pristine dataset is built once; the marker sits next to it (not inside: it must not be
# backed up) and is written only after a successful build.
prepare_dataset() {
  local marker=$BENCH_DATA.ready
  if [ -d "$BENCH_DATA" ] && [ -f "$marker" ]; then
    log "dataset: reusing $BENCH_DATA ($(cat "$marker"))"
    return
  fi
  rm -f "$marker"
  mkdir -p "$(dirname "$BENCH_DATA")"
  local line
  if [ "$SMALL" = 1 ]; then
    line=$(make_small_dataset "$BENCH_DATA")
  else
    log "dataset: building $BENCH_DATA with $SHARED_BENCH/dataset.sh (a few minutes of IO)"
    line=$(bash "$SHARED_BENCH/dataset.sh" "$BENCH_DATA" | tail -n1)
  fi
  printf '%s\n' "$line" >"$marker"
  log "dataset: $line"
}

tool_version() {
  case $1 in
    tidemark) "$TIDEMARK_BIN" --version 2>/dev/null | head -n1 || echo "tidemark (version unknown)" ;;
    restic) restic version | head -n1 ;;
    borg) borg --version ;;
  esac
}

tool_settings() {
  case $1 in
    tidemark) echo "defaults: encryption on, zstd compression on" ;;
    restic) echo "defaults: repository format v2, compression auto, AES-256 + Poly1305" ;;
    borg) echo "\`init -e $BORG_ENCRYPTION\`, \`create --compression $BORG_COMPRESSION\`, default chunker" ;;
  esac
}

write_header() {
  local t rev
  rev=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
  [ -z "$(git -C "$REPO_ROOT" status --porcelain 2>/dev/null)" ] || rev="$rev (dirty tree)"
  {
    echo "# tidemark repository benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/2^20}' /proc/meminfo) RAM, $(uname -sr)"
    echo "- dataset: $(cat "$BENCH_DATA.ready"); mutation: \`mutate.sh SRC 1\` (~1%)"
    echo "- conditions: warm page cache (input read just before every timed phase, after \`sync\`), local repositories on the same disk, $RUNS runs, tools interleaved (order rotated each run), median (min–max)"
    echo "- tidemark tree: $REPO_ROOT @ $rev"
    for t in "${TOOL_LIST[@]}"; do
      echo "- $t: $(tool_version "$t"); $(tool_settings "$t")"
    done
    echo "- each tool's local cache is wiped with its repository before every run and not counted in the repository size; MB = 10^6 bytes; peak RSS = GNU time %M"
  } >"$HEADER"
}

# ---------------------------------------------------------------------------------------------
# Tools: <tool>_cmd ACTION sets CMD to the command line of init | backup | restore.

tidemark_cmd() {
  case $1 in
    init) CMD=("$TIDEMARK_BIN" --repo "$REPO" init) ;;
    backup) CMD=("$TIDEMARK_BIN" --repo "$REPO" backup --quiet "$SRC") ;;
    restore) CMD=("$TIDEMARK_BIN" --repo "$REPO" restore latest --target "$RESTORE" --quiet) ;;
  esac
}

restic_cmd() {
  case $1 in
    init) CMD=(restic -r "$REPO" init) ;;
    backup) CMD=(restic -r "$REPO" backup -q "$SRC") ;;
    restore) CMD=(restic -r "$REPO" restore latest --target "$RESTORE" -q) ;;
  esac
}

BORG_ARCHIVE=0 # number of the newest archive (a1, a2, ...)
borg_cmd() {
  case $1 in
    init) BORG_ARCHIVE=0; CMD=(borg init -e "$BORG_ENCRYPTION" "$REPO") ;;
    backup) BORG_ARCHIVE=$((BORG_ARCHIVE + 1)); CMD=(borg create --compression "$BORG_COMPRESSION" "$REPO::a$BORG_ARCHIVE" "$SRC") ;;
    restore) CMD=(env -C "$RESTORE" borg extract "$REPO::a$BORG_ARCHIVE") ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Measurement

# Read a tree (data and metadata) into the page cache. tar would skip reading file data when it
# writes to /dev/null itself, hence the pipe.
warm() {
  local d
  for d in "$@"; do
    [ -e "$d" ] && tar cf - "$d" 2>/dev/null | cat >/dev/null
  done
  return 0
}

csv() { local IFS=,; printf '%s\n' "$*" >>"$OUT"; }

# phase RUN POS TOOL NAME CMD...: time CMD (wall s, peak RSS KiB) and append a CSV row;
# the repository size is recorded after each backup phase. Sets LAST to a short summary.
phase() {
  local run=$1 pos=$2 tool=$3 name=$4; shift 4
  local base="$LOGDIR/run$run-$tool-$name" rc=0 secs rss status bytes=""
  /usr/bin/time -f '%e %M' -o "$base.time" "$@" >"$base.log" 2>&1 || rc=$?
  read -r secs rss < <(tail -n1 "$base.time")
  if [ "$rc" = 0 ]; then
    status=ok
  else
    status="exit=$rc"; FAILED=1
    log "FAILED: run $run $tool $name (exit $rc): $*"
    tail -n 20 "$base.log" | sed 's/^/    /'
  fi
  case $name in backup_*) bytes=$(du -sb "$REPO" | cut -f1) ;; esac
  csv "$run" "$pos" "$tool" "$name" "$secs" "$rss" "$bytes" "$status"
  LAST="$secs s, $((rss / 1024)) MiB${bytes:+, repo $((bytes / 1000000)) MB}"
  [ "$rc" = 0 ] || LAST="$LAST, $status"
  return 0
}

# Listing of a tree for the metadata check: path, type, mode, size, mtime (whole seconds) of
# files; path, type, mode of directories; path and target of symlinks.
manifest() {
  (cd "$1" && find . -mindepth 1 \
    \( -type f -printf '%P\tf\t%#m\t%s\t%T@\n' \) -o \
    \( -type l -printf '%P\tl\t%l\n' \) -o \
    -printf '%P\t%y\t%#m\n') | awk -F'\t' 'BEGIN {OFS = "\t"} $2 == "f" {sub(/\..*/, "", $5)} {print}' | LC_ALL=C sort
}

# Where the restored copy of $SRC is: tools that mirror absolute paths put it at
# $RESTORE$SRC (restic, borg, tidemark); others at $RESTORE/<basename> or $RESTORE itself.
restored_root() {
  local c
  for c in "$RESTORE$SRC" "$RESTORE/$(basename "$SRC")"; do
    [ -d "$c" ] && { echo "$c"; return 0; }
  done
  [ -n "$(ls -A "$RESTORE")" ] && { echo "$RESTORE"; return 0; }
  return 1
}

verify() {
  local run=$1 pos=$2 tool=$3
  local base="$LOGDIR/run$run-$tool-verify" root status=OK
  if ! root=$(restored_root); then
    status="MISMATCH(nothing restored)"
  else
    diff -r --no-dereference "$SRC" "$root" >"$base.diff" 2>&1 || status="MISMATCH(content)"
    if ! diff <(manifest "$SRC") <(manifest "$root") >"$base.meta" 2>&1; then
      [ "$status" = OK ] && status="MISMATCH(metadata)" || status="$status+MISMATCH(metadata)"
    fi
  fi
  csv "$run" "$pos" "$tool" verify "" "" "" "$status"
  if [ "$status" != OK ]; then
    FAILED=1
    log "$status: run $run $tool; first differences (full: $base.diff, $base.meta):"
    head -n 10 "$base.diff" "$base.meta" 2>/dev/null | sed 's/^/    /' || true
  fi
  VERIFY=$status
}

reset_dirs() { rm -rf "$SRC" "$REPO" "$RESTORE" "$CACHE"; mkdir -p "$CACHE"; }

# One tool, one run: fresh source and repository, the timed phases, the restore check.
bench_tool() {
  local run=$1 pos=$2 tool=$3 summary=""
  reset_dirs
  cp -a "$BENCH_DATA" "$SRC"
  "${tool}_cmd" init
  if ! "${CMD[@]}" >"$LOGDIR/run$run-$tool-init.log" 2>&1; then
    log "FAILED: run $run $tool init: ${CMD[*]}"; sed 's/^/    /' "$LOGDIR/run$run-$tool-init.log"
    csv "$run" "$pos" "$tool" init "" "" "" "exit=1"; FAILED=1; return 0
  fi
  if [ "$tool" = restic ] && [ "$run" = 1 ]; then
    log "restic repository config: $(restic -r "$REPO" cat config 2>/dev/null | tr -d ' \n')"
  fi

  local name
  for name in backup_first backup_nochange backup_mutated; do
    if [ "$name" = backup_mutated ]; then
      bash "$SHARED_BENCH/mutate.sh" "$SRC" 1 >"$LOGDIR/run$run-$tool-mutate.log"
    fi
    sync; warm "$SRC" "$CACHE"
    "${tool}_cmd" backup
    phase "$run" "$pos" "$tool" "$name" "${CMD[@]}"
    summary="${summary:+$summary | }${name#backup_} $LAST"
  done

  mkdir -p "$RESTORE"
  sync; warm "$REPO" "$CACHE"
  "${tool}_cmd" restore
  phase "$run" "$pos" "$tool" restore "${CMD[@]}"
  verify "$run" "$pos" "$tool"
  log "run $run/$RUNS [$pos] $tool: $summary | restore $LAST | verify $VERIFY"
  rm -rf "$RESTORE"
}

# ---------------------------------------------------------------------------------------------
# Report: medians and min-max per tool, ratios peer/tidemark, targets against restic.

report() {
  python3 - "$OUT" "$MD" "$HEADER" "${TOOL_LIST[@]}" <<'PY'
import csv, statistics, sys
out, md, header, tools = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
rows = list(csv.DictReader(open(out)))

def per_run(tool):
    """metric -> list of per-run values (runs where the phases succeeded)."""
    runs = {}
    for r in rows:
        if r["tool"] == tool:
            runs.setdefault(r["run"], {})[r["phase"]] = r
    m = {}
    def add(k, v): m.setdefault(k, []).append(v)
    for run, ph in sorted(runs.items(), key=lambda kv: int(kv[0])):
        ok = lambda p: p in ph and ph[p]["status"] == "ok"
        for p, k in [("backup_first", "first"), ("backup_nochange", "nochange"),
                     ("backup_mutated", "mutated"), ("restore", "restore")]:
            if ok(p): add(k, float(ph[p]["wall_s"]))
        if ok("backup_first"): add("repo_first", int(ph["backup_first"]["repo_bytes"]) / 1e6)
        if ok("backup_mutated"): add("repo", int(ph["backup_mutated"]["repo_bytes"]) / 1e6)
        bk = [p for p in ("backup_first", "backup_nochange", "backup_mutated") if ok(p)]
        if bk: add("rss_backup", max(int(ph[p]["maxrss_kib"]) for p in bk) * 1024 / 1e6)
        if ok("restore"): add("rss_restore", int(ph["restore"]["maxrss_kib"]) * 1024 / 1e6)
        if "verify" in ph: add("verify", ph["verify"]["status"])
    return m

data = {t: per_run(t) for t in tools}
# metric key, label, format, target ratio restic/tidemark (None: informative only)
metrics = [("first", "first backup (s)", "%.2f", 2.0),
           ("nochange", "no-change backup (s)", "%.2f", 5.0),
           ("mutated", "backup after mutation (s)", "%.2f", 3.0),
           ("restore", "restore (s)", "%.2f", 2.0),
           ("repo", "repository (MB)", "%.1f", 1.0),
           ("repo_first", "repository after first backup (MB)", "%.1f", None),
           ("rss_backup", "peak RSS, backups (MB)", "%.1f", 1.0),
           ("rss_restore", "peak RSS, restore (MB)", "%.1f", 1.0)]
target_text = {2.0: "≥ 2×", 5.0: "≥ 5×", 3.0: "≥ 3×", 1.0: "≤ restic"}
peers = [t for t in tools if t != "tidemark"] if "tidemark" in tools else []
judge = "tidemark" in tools and "restic" in tools

head = ["metric"] + [t for t in tools] + ["%s/tidemark" % p for p in peers]
if judge: head += ["target", "result"]
table = []
for key, label, fmt, target in metrics:
    line = [label]
    med = {}
    for t in tools:
        v = data[t].get(key, [])
        if v:
            med[t] = statistics.median(v)
            line.append((fmt % med[t]) + " (" + (fmt % min(v)) + "–" + (fmt % max(v)) + ")")
        else:
            line.append("n/a")
    for p in peers:
        line.append("%.2f×" % (med[p] / med["tidemark"]) if p in med and med.get("tidemark") else "n/a")
    if judge:
        if target is None:
            line += ["", ""]
        elif "restic" in med and med.get("tidemark"):
            ratio = med["restic"] / med["tidemark"]
            line += [target_text[target], "PASS" if ratio >= target else "FAIL"]
        else:
            line += [target_text[target], "n/a"]
    table.append(line)
line = ["restores verified"]
for t in tools:
    v = data[t].get("verify", [])
    line.append("%d/%d OK" % (sum(s == "OK" for s in v), len(v)))
line += [""] * (len(head) - len(line))
table.append(line)

widths = [max(len(r[i]) for r in [head] + table) for i in range(len(head))]
fmt_row = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
text = [fmt_row(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt_row(r) for r in table]
notes = []
if peers:
    notes += ["", "Ratios are peer median / tidemark median: > 1 means tidemark is faster, smaller or leaner."]
if judge:
    notes += ["Targets (from the issue) compare tidemark with restic; both peak-RSS rows must pass."]
body = open(header).read().rstrip("\n") + "\n\n" + "\n".join(text + notes) + "\n"
with open(md, "w") as f: f.write(body)
print(body)
PY
}

# ---------------------------------------------------------------------------------------------

main() {
  [ "$RUNS" -ge 1 ] 2>/dev/null || die "RUNS must be a positive number"
  local t
  for t in "${TOOL_LIST[@]}"; do
    case $t in tidemark | restic | borg) ;; *) die "unknown tool in TOOLS: $t" ;; esac
  done
  install_tools
  build_tidemark
  prepare_dataset
  mkdir -p "$WORKDIR" "$(dirname "$OUT")"
  rm -rf "$LOGDIR"; mkdir -p "$LOGDIR"
  write_header
  cat "$HEADER"; echo
  : >"$OUT"
  csv run pos tool phase wall_s maxrss_kib repo_bytes status

  local run i n=${#TOOL_LIST[@]}
  for ((run = 1; run <= RUNS; run++)); do
    for ((i = 0; i < n; i++)); do
      t=${TOOL_LIST[$(((i + run - 1) % n))]}
      bench_tool "$run" "$((i + 1))" "$t"
    done
  done
  rm -rf "$SRC" "$REPO" "$RESTORE" "$CACHE"
  log "mutation: $(cat "$LOGDIR"/run1-*-mutate.log 2>/dev/null | head -n1)"
  echo
  report
  log "raw results: $OUT; table: $MD; logs: $LOGDIR"
  if [ "$FAILED" != 0 ]; then
    log "some phases failed or restores did not match (see above)"
    exit 1
  fi
}

main "$@"
