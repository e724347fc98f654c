#!/usr/bin/env bash
# Crash loop (issue 9): KILLS (default 1000) kill -9s of `watch` under a writer at ~100 changes/s
# (rewrites, creates, renames, deletes), recover + restore + check after each kill,
# `check --read-data` every 100 kills, and an exact comparison after a last graceful run.
# Reports acknowledged-but-missing (must be 0), torn files and regressions; exits 1 on any.
# The checks are in bench/crash_loop.py (its docstring says what each one claims).
#
# usage: bench/crash-loop.sh        (env: KILLS, SEED, RATE, CHECK_EVERY, WORKDIR, TIDEMARK_BIN)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if [ -z "${TIDEMARK_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p tidemark)
  TIDEMARK_BIN=$root/target/release/tidemark
fi
export TIDEMARK_BIN KILLS=${KILLS:-1000} SEED=${SEED:-1} WORKDIR=${WORKDIR:-/tmp/tidemark-crash}
exec python3 "$here/crash_loop.py"
