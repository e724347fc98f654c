#!/usr/bin/env bash
# The project's test command: formatting, lints, every test, and a short run of every fuzz
# target. Installs what it needs on a fresh Debian machine with a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

# setpriv (util-linux) lets the root-run tests drop privileges; it is part of Debian's base.
if ! command -v setpriv >/dev/null; then
  apt-get update -qq && apt-get install -y -qq util-linux
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# The S3 tests run against a real server, s3s-fs (objects as files in a temp directory). cargo
# install caches it in ~/.cargo/bin; the first install takes 2-14 minutes.
if ! command -v s3s-fs >/dev/null && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  echo "== installing s3s-fs 0.14.1 (once)"
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
export TIDEMARK_REQUIRE_S3=1
# The full-disk test loop-mounts an ext4 file system (mkfs.ext4 from e2fsprogs; needs root), and
# the mount tests need /dev/fuse (fusermount3 from fuse3 when not root): required, not skipped.
if ! command -v mkfs.ext4 >/dev/null; then
  apt-get update -qq && apt-get install -y -qq e2fsprogs
fi
if [ ! -e /dev/fuse ] || { [ "$(id -u)" != 0 ] && ! command -v fusermount3 >/dev/null; }; then
  apt-get update -qq && apt-get install -y -qq fuse3 || true
fi
export TIDEMARK_REQUIRE_FUSE=1

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== stress: prune while watch seals, both killed, 200 rounds"
TIDEMARK_STRESS_ROUNDS=${STRESS_ROUNDS:-200} cargo test -q -p tidemark --test integration \
  integration::prune::prune_runs_while_watch_writes_and_both_are_killed -- --exact --nocapture
echo "== fuzz (${FUZZ_SECONDS:-10}s per target)"
FUZZ_SECONDS=${FUZZ_SECONDS:-10} scripts/fuzz.sh
